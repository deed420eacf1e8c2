"""Where the store's git repositories live, and reading commits out of them.

Every repository's objects and refs are in the database (`DatabaseRepo`); an API server's
disk holds only a cache of the packs it read, so any server can be replaced by a fresh one
with nothing but the database URL. Everything reaches repositories through `RepoStorage`. A
fresh repo object is opened per use and closed after it: sharing one across threads breaks on
pack-cache eviction (PITFALLS.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from dulwich.errors import NotTreeError
from dulwich.objects import Blob, Commit, SubmoduleEncountered, Tag, Tree
from dulwich.objectspec import AmbiguousShortId, parse_commit
from dulwich.repo import BaseRepo, MemoryRepo
from sqlalchemy import select
from sqlalchemy.orm import Session

from dagstore.core.db import Database
from dagstore.core.errors import BadRequest, NotFound
from dagstore.core.models import Repo as RepoRow
from dagstore.core.names import validate_full_sha, validate_repo_name
from dagstore.git.diskcache import DiskCache
from dagstore.git.models import GitRef
from dagstore.git.packcache import PackCache
from dagstore.git.packcheck import InflateLimits
from dagstore.git.packs import DatabaseObjectStore
from dagstore.git.refs import HIDDEN_PREFIX, DatabaseRefsContainer

SHORT_SHA_RE = re.compile(r"^[0-9a-fA-F]{4,40}$")
REF_RE = re.compile(r"^[A-Za-z0-9_./-]{1,255}$")
KEEP_PREFIX = b"refs/pinflow/keep/"


def validate_branch_name(ref: str) -> str:
    if (
        not REF_RE.match(ref)
        or ".." in ref
        or ref.startswith(("/", "-", "refs/"))
        or ref.endswith(("/", ".lock", "."))
        or "//" in ref
    ):
        raise BadRequest(f"invalid branch name {ref!r}")
    return ref


DEFAULT_LIMITS = InflateLimits(object_bytes=100 * 2**20, total_bytes=1024 * 2**20)


class AdvertisedRefs(dict):
    """The refs upload-pack advertises (the visible ones), whose `values()` also hold the
    hidden refs' commits: dulwich accepts a `want` only for a value of the refs it was given,
    and a keep ref's commit must stay fetchable by its sha (`allow-tip-sha1-in-want`, which
    `dagstore.api.git_http.StoreUploadPack` announces) without the keep refs being listed to
    every client.
    """

    def __init__(self, visible: Mapping[bytes, bytes], hidden: list[bytes]) -> None:
        super().__init__(visible)
        self.hidden = hidden

    def values(self):  # type: ignore[override]
        return [*super().values(), *self.hidden]


class DatabaseRepo(MemoryRepo):
    """A bare repository whose objects and refs live in the database (issue 13).

    dulwich's smart-HTTP handlers, walkers and archive code see an ordinary repository: only
    the object store (`dagstore.git.packs`) and the refs (`dagstore.git.refs`) are ours.
    """

    def __init__(self, db: Database, repo_id: int, cache: PackCache, limits: InflateLimits) -> None:
        from dulwich.config import ConfigFile
        from dulwich.object_format import DEFAULT_OBJECT_FORMAT

        store = DatabaseObjectStore(db, repo_id, cache, limits)
        refs = DatabaseRefsContainer(db, repo_id, publisher=store)
        BaseRepo.__init__(self, store, refs)
        self.object_store: DatabaseObjectStore = store
        self.refs: DatabaseRefsContainer = refs
        self._named_files: dict[str, bytes] = {}
        self._reflog: list = []
        self.bare = True
        self._config = ConfigFile()
        self._description: bytes | None = None
        self.filter_context = None
        self.object_format = DEFAULT_OBJECT_FORMAT

    def get_refs(self) -> dict[bytes, bytes]:
        """The refs git clients see (push and fetch): the store's own, keep refs, left out."""
        return {r: s for r, s in self.refs.as_dict().items() if not r.startswith(HIDDEN_PREFIX)}

    def find_missing_objects(self, determine_wants, *args, **kwargs):  # type: ignore[no-untyped-def]
        """upload-pack's negotiation: wants of a hidden ref's commit are accepted too."""
        hidden = [s for r, s in self.refs.as_dict().items() if r.startswith(HIDDEN_PREFIX)]

        def wants(refs, depth=None):  # type: ignore[no-untyped-def]
            return determine_wants(AdvertisedRefs(refs, hidden), depth)

        return super().find_missing_objects(wants, *args, **kwargs)

    def end_push(self) -> None:
        """After a push: what it brought but no ref points into goes (quarantine)."""
        self.object_store.discard()


class RepoStorage:
    """The store's repositories: a row each, their git data in the database, a pack cache."""

    def __init__(
        self, db: Database, disk: DiskCache, limits: InflateLimits = DEFAULT_LIMITS
    ) -> None:
        self.db = db
        self.cache = PackCache(db, disk)
        self.limits = limits
        self._ids: dict[str, int] = {}  # repos are never deleted: name → id, once read

    def repo_id(self, name: str) -> int | None:
        validate_repo_name(name)
        if name not in self._ids:
            with self.db.read() as session:
                found = session.scalar(select(RepoRow.id).where(RepoRow.name == name))
            if found is None:
                return None
            self._ids[name] = found
        return self._ids[name]

    def exists(self, name: str) -> bool:
        return self.repo_id(name) is not None

    def create(self, session: Session, repo_id: int, track: str) -> None:
        """A new repo's HEAD names the tracked branch, so clones check it out (in the
        caller's transaction, with the repo's row)."""
        session.add(GitRef(repo_id=repo_id, name="HEAD", value=f"ref: refs/heads/{track}"))

    @contextmanager
    def open(self, name: str) -> Iterator[DatabaseRepo]:
        repo = self.open_unmanaged(name)
        try:
            yield repo
        finally:
            repo.close()

    def open_unmanaged(self, name: str) -> DatabaseRepo:
        """Open a repo the caller must close."""
        repo_id = self.repo_id(name)
        if repo_id is None:
            raise NotFound(f"repository {name!r} does not exist")
        return DatabaseRepo(self.db, repo_id, self.cache, self.limits)


def resolve_commit(repo: BaseRepo, spec: str) -> str:
    """A branch, tag, full or unique short sha → the full sha of the commit it names."""
    if not spec or len(spec) > 255 or not REF_RE.match(spec) or ".." in spec:
        raise BadRequest(f"invalid ref {spec!r}")
    candidates = [spec.encode()]
    if not spec.startswith("refs/"):
        candidates = [f"refs/heads/{spec}".encode(), f"refs/tags/{spec}".encode()]
    for ref in candidates:
        try:
            sha = repo.refs[ref]
        except KeyError:
            continue
        return _peel_to_commit(repo, sha, spec)
    if SHORT_SHA_RE.match(spec):
        try:
            return parse_commit(repo, spec.lower()).id.decode()
        except AmbiguousShortId:
            raise BadRequest(f"short sha {spec!r} is ambiguous; give more characters") from None
        except (KeyError, ValueError):
            pass
    raise NotFound(f"no branch, tag or commit named {spec!r}")


def _peel_to_commit(repo: BaseRepo, sha: bytes, spec: str) -> str:
    obj = repo[sha]
    while isinstance(obj, Tag):
        obj = repo[obj.object[1]]
    if not isinstance(obj, Commit):
        raise NotFound(f"{spec!r} does not name a commit")
    return obj.id.decode()


def get_commit(repo: BaseRepo, sha: str) -> Commit:
    validate_full_sha(sha)
    try:
        obj = repo[sha.encode()]
    except KeyError:
        raise NotFound(f"commit {sha} is not in this repository") from None
    if not isinstance(obj, Commit):
        raise NotFound(f"{sha} is not a commit")
    return obj


def validate_file_path(path: str) -> bytes:
    """Refuse anything but a plain relative path inside the commit."""
    if not path or len(path) > 4096 or "\x00" in path or "\\" in path or path.startswith("/"):
        raise BadRequest(f"invalid file path {path!r}")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BadRequest(f"invalid file path {path!r}: no empty, '.' or '..' segments")
    return path.encode("utf-8")


MAX_LISTED_FILES = 10_000


def list_files(repo: BaseRepo, sha: str) -> list[dict[str, object]]:
    """Every file of a commit (path, size), in tree order; submodules are left out."""
    commit = get_commit(repo, sha)
    files: list[dict[str, object]] = []
    for entry in repo.object_store.iter_tree_contents(commit.tree):
        if entry.path is None or entry.mode is None or entry.mode & 0o170000 == 0o160000:
            continue
        if len(files) >= MAX_LISTED_FILES:
            break
        blob = repo[entry.sha]
        files.append({"path": entry.path.decode("utf-8", "replace"), "size": blob.raw_length()})
    return files


def read_file(repo: BaseRepo, sha: str, path: str) -> bytes:
    commit = get_commit(repo, sha)
    tree = repo[commit.tree]
    assert isinstance(tree, Tree)
    try:
        mode, obj_sha = tree.lookup_path(repo.object_store.__getitem__, validate_file_path(path))
    except (KeyError, NotADirectoryError, NotTreeError, SubmoduleEncountered, ValueError):
        raise NotFound(f"no file {path!r} at {sha[:12]}") from None
    if mode & 0o170000 == 0o160000:  # a gitlink: the submodule's commit is not in this repo
        raise NotFound(f"{path!r} is a submodule at {sha[:12]}; its files are not in the store")
    obj = repo[obj_sha]
    if not isinstance(obj, Blob):
        raise NotFound(f"{path!r} is a directory at {sha[:12]}")
    return obj.as_raw_string()


def ref_sha(repo: BaseRepo, ref: bytes) -> bytes | None:
    """The sha a ref points at now (not as the request first saw it), or None when the ref
    does not exist."""
    refresh = getattr(repo.refs, "refresh", None)
    if refresh is not None:
        refresh()
    try:
        return repo.refs[ref]
    except KeyError:
        return None
