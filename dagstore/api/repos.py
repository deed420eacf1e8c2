"""Routes for repositories and their versions; thin: each calls the store's plain functions."""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import text

from dagstore.api import shapes
from dagstore.api.archive_http import IMMUTABLE, MEDIA_TYPE, archive_headers, not_modified
from dagstore.api.auth import AdminToken, Credentials, ReadToken, StoreDep, VersionReader
from dagstore.core.errors import BadRequest
from dagstore.core.metrics import ARCHIVE_BYTES, ARCHIVE_REQUESTS
from dagstore.core.models import Token
from dagstore.core.names import validate_full_sha
from dagstore.diff import diff_dags, diff_files
from dagstore.git.repo import DatabaseRepo, list_files, read_file, resolve_commit
from dagstore.git.repos import create_repo, get_repo, list_repos, repo_json
from dagstore.git.versions import list_versions, version_json
from dagstore.parsing.dags import version_contents

router = APIRouter()
BYTES = {"schema": {"type": "string", "format": "binary"}}


class RepoCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    track: str = Field(default="main", min_length=1, max_length=255)
    strict: bool = False


@router.get(
    "/healthz",
    tags=["health"],
    response_model=shapes.Health,
    responses={503: {"model": shapes.Health, "description": "The database is unreachable"}},
)
def healthz(store: StoreDep, response: Response) -> dict[str, str]:
    """Liveness for load balancers: also proves this server can reach the database."""
    try:
        with store.db.read() as session:
            session.execute(text("SELECT 1"))
    except Exception:
        response.status_code = 503
        return {"status": "database unreachable"}
    return {"status": "ok"}


@router.get("/repos", tags=["repos"], response_model=shapes.RepoList)
def get_repos(request: Request, store: StoreDep, _: ReadToken) -> dict[str, list[dict[str, Any]]]:
    """Repositories with their tracked branch and git remote."""
    with store.db.read() as session:
        rows = list_repos(session)
        return {"items": [repo_json(r, _public_url(request)) for r in rows]}


@router.post(
    "/repos",
    status_code=201,
    tags=["repos"],
    response_model=shapes.Repo,
    responses={409: {"description": "A repository of that name exists"}},
)
def post_repo(body: RepoCreate, request: Request, store: StoreDep, _: AdminToken) -> dict[str, Any]:
    """Create a repository that accepts pushes (admin)."""
    with store.db.write() as session:
        row = create_repo(session, store.storage, body.name, body.track, body.strict)
        return repo_json(row, _public_url(request))


def _public_url(request: Request) -> str:
    """The URL the caller used to reach us (behind a load balancer: the balancer's)."""
    return str(request.base_url).rstrip("/")


@router.get("/repos/{repo}/refs", tags=["repos"], response_model=shapes.Refs)
def get_refs(repo: str, store: StoreDep, _: ReadToken) -> dict[str, dict[str, str]]:
    """The repository's branches and tags with their commits."""
    with store.db.read() as session:
        get_repo(session, repo)
    with store.storage.open(repo) as git:
        refs = git.get_refs()
    return {
        "refs": {
            name.decode(): sha.decode()
            for name, sha in sorted(refs.items())
            if name != b"HEAD" and not name.startswith(b"refs/pinflow/")
        }
    }


@router.get("/repos/{repo}/versions", tags=["versions"], response_model=shapes.VersionList)
def get_versions(
    repo: str, store: StoreDep, _: ReadToken, limit: int = 100
) -> dict[str, list[dict[str, Any]]]:
    """The repository's versions (pushed commits), newest first, with their DAGs and errors."""
    limit = max(1, min(limit, 1000))
    with store.db.read() as session:
        row = get_repo(session, repo)
        versions = list_versions(session, row, limit)
        dags, errors = version_contents(session, [v.id for v in versions])
        return {"items": [version_json(v, dags[v.id], errors[v.id]) for v in versions]}


@router.get("/repos/{repo}/resolve/{ref:path}", tags=["versions"], response_model=shapes.Resolved)
def get_resolve(repo: str, ref: str, store: StoreDep, _: ReadToken) -> dict[str, str]:
    """The full sha a branch, tag or short sha names now."""
    with store.db.read() as session:
        get_repo(session, repo)
    with store.storage.open(repo) as git:
        return {"sha": resolve_commit(git, ref)}


@router.get(
    "/repos/{repo}/archive/{sha}.tar.gz",
    tags=["versions"],
    response_class=Response,
    responses={200: {"content": {MEDIA_TYPE: BYTES}}, 304: {"description": "unchanged"}},
)
def get_archive(
    repo: str,
    sha: str,
    store: StoreDep,
    _: VersionReader,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The commit's files; immutable, so caches may keep it forever. A read token, or the
    credential of a try running this very version (`dagstore.access.grants`). The hot case is
    answered before this route by `archive_http.ArchiveFastPath`."""
    validate_full_sha(sha)
    # Repos are never deleted and an archive is only ever built from its repo's commit, so
    # an archive this process has already seen (or finds on disk) needs no database lookup.
    known = store.archives.digest(repo, sha)
    if known is not None and not_modified(if_none_match, known):
        return Response(status_code=304, headers=archive_headers(repo, sha, known, full=False))
    built: list[bool] = []
    with ExitStack() as stack:  # the git repo is opened only if the archive must be built

        def open_repo() -> DatabaseRepo:
            built.append(True)
            with store.db.read() as session:
                get_repo(session, repo)
            return stack.enter_context(store.storage.open(repo))

        archive, data = store.archives.load(repo, sha, open_repo)
    if not_modified(if_none_match, archive):
        return Response(status_code=304, headers=archive_headers(repo, sha, archive, full=False))
    ARCHIVE_REQUESTS.labels("built" if built else "cache").inc()
    ARCHIVE_BYTES.inc(len(data))
    return Response(
        data, media_type=MEDIA_TYPE, headers=archive_headers(repo, sha, archive, full=True)
    )


@router.get("/auth/archive", status_code=204, tags=["versions"], response_class=Response)
def get_archive_auth(
    repo: str, sha: str, store: StoreDep, who: VersionReader, credentials: Credentials
) -> Response:
    """204 when the bearer may GET `/repos/{repo}/archive/{sha}.tar.gz`, else the route's own
    401/403: the very check of that route, without building or reading anything. For a load
    balancer's `auth_request` (deploy/nginx.conf), which may keep a 204 for `X-Accel-Expires`
    seconds: as long as this process goes on trusting the token without a lookup, so a revoked
    token stops working there no later than here; 0 for a try credential, whose try can end at
    any moment and which the route checks on every request."""
    keep = 0
    if isinstance(who, Token) and credentials is not None:
        keep = max(0, math.ceil(store.tokens.trusted_for(credentials.credentials)) - 1)
    return Response(status_code=204, headers={"X-Accel-Expires": str(keep)})


@router.get(
    "/repos/{repo}/diff/{spec:path}",
    tags=["versions"],
    response_model=shapes.Diff,
    response_model_exclude_unset=True,  # `old_path` only for a rename (DESIGN.md)
)
def get_diff(repo: str, spec: str, store: StoreDep, _: ReadToken) -> dict[str, Any]:
    """`BASE..HEAD` (branches, tags, full or short shas): the files that differ, with unified
    diffs, and the DAGs whose structure changed."""
    base_spec, dots, head_spec = spec.partition("..")
    if not dots or not base_spec or not head_spec or head_spec.startswith("."):
        raise BadRequest(f"give BASE..HEAD, not {spec!r}")
    with store.db.read() as session:
        row = get_repo(session, repo)
        repo_id = row.id
    with store.storage.open(repo) as git:
        base, head = resolve_commit(git, base_spec), resolve_commit(git, head_spec)
        body = diff_files(git, base, head)
    with store.db.read() as session:
        body["dags"] = diff_dags(session, repo_id, base, head)
    return body


@router.get("/repos/{repo}/tree/{sha}", tags=["versions"], response_model=shapes.Tree)
def get_tree(repo: str, sha: str, store: StoreDep, _: ReadToken) -> dict[str, Any]:
    """The commit's files (path and size), at most 10,000."""
    validate_full_sha(sha)
    with store.db.read() as session:
        get_repo(session, repo)
    with store.storage.open(repo) as git:
        return {"sha": sha, "files": list_files(git, sha)}


@router.get(
    "/repos/{repo}/files/{sha}/{path:path}",
    tags=["versions"],
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": BYTES}}},
)
def get_file(repo: str, sha: str, path: str, store: StoreDep, _: ReadToken) -> Response:
    """One file of a commit, as it was pushed."""
    validate_full_sha(sha)
    with store.db.read() as session:
        get_repo(session, repo)
    with store.storage.open(repo) as git:
        data = read_file(git, sha, path)
    return Response(
        data, media_type="application/octet-stream", headers={"Cache-Control": IMMUTABLE}
    )
