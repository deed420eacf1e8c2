"""How an archive goes over HTTP: its headers, conditional GETs, and a fast path for the hot case.

Serving one cached archive, FastAPI's own request path (middleware, routing, dependency
solving, the thread hop of a sync endpoint) was 60-75% of the server's CPU and the endpoint
itself 12% (BENCHMARKS.md, "Archive serving"). `ArchiveFastPath` sits ahead of the router and
answers only what it can decide from this process's memory: a read token the token cache
verified within its TTL, and an archive whose bytes are in memory. Every other request (no
token, unknown or revoked token, wrong scope, try credential, archive not in memory, bad sha)
goes on to the FastAPI route, which decides as it always has; so the fast path never refuses
and never admits anything the route would refuse.
"""

from __future__ import annotations

import re

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from dagstore.api.auth import bearer_secret, known_version_reader
from dagstore.core.metrics import ARCHIVE_BYTES, ARCHIVE_REQUESTS
from dagstore.core.names import FULL_SHA_RE, REPO_NAME_RE
from dagstore.core.protocol import ARCHIVE_DIGEST_HEADER
from dagstore.git.archive import ArchiveFile
from dagstore.store import StoreContext

IMMUTABLE = "public, max-age=31536000, immutable"
MEDIA_TYPE = "application/gzip"


def _bare(pattern: re.Pattern[str]) -> str:
    return pattern.pattern.removeprefix("^").removesuffix("$")


# Valid repo names and full shas only: a subset of what the route's `{repo}` and `{sha}`
# match, so both always agree on which repo and sha are meant; deploy/nginx.conf's archive
# location is the same pattern (tests/test_deploy_nginx.py checks).
ARCHIVE_PATH = re.compile(
    rf"/api/v1/repos/(?P<repo>{_bare(REPO_NAME_RE)})/archive/(?P<sha>{_bare(FULL_SHA_RE)})\.tar\.gz"
)


def archive_headers(repo: str, sha: str, archive: ArchiveFile, full: bool) -> dict[str, str]:
    """The headers of an archive response: for a 304 (`full=False`) without the file name."""
    headers = {
        "ETag": f'"{archive.sha256}"',
        "Cache-Control": IMMUTABLE,
        ARCHIVE_DIGEST_HEADER: archive.sha256,
    }
    if full:
        headers["Content-Disposition"] = f'attachment; filename="{repo}-{sha[:12]}.tar.gz"'
    return headers


def not_modified(if_none_match: str | None, archive: ArchiveFile) -> bool:
    """Whether the client's `If-None-Match` already names this archive."""
    etag = f'"{archive.sha256}"'
    return bool(if_none_match) and etag in [t.strip() for t in if_none_match.split(",")]


class ArchiveFastPath:
    """Pure ASGI, mounted ahead of FastAPI (`pinflow.app`): the cached archive GET in one
    `http.response.body`, or the request passed on untouched."""

    def __init__(self, app: ASGIApp, store: StoreContext) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            match = ARCHIVE_PATH.fullmatch(scope["path"])
            if match is not None and await self._answer(scope, send, match["repo"], match["sha"]):
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, send: Send, repo: str, sha: str) -> bool:
        """Send the archive and return True, or send nothing and return False."""
        request = HTTPConnection(scope)
        if not known_version_reader(self.store, await bearer_secret(request)):
            return False
        hit = self.store.archives.in_memory(repo, sha)
        if hit is None:
            return False
        archive, data = hit
        if not_modified(request.headers.get("if-none-match"), archive):
            await _send(send, 304, archive_headers(repo, sha, archive, full=False), b"")
            return True
        headers = archive_headers(repo, sha, archive, full=True)
        headers |= {"Content-Type": MEDIA_TYPE, "Content-Length": str(len(data))}
        await _send(send, 200, headers, data)
        ARCHIVE_REQUESTS.labels("memory").inc()
        ARCHIVE_BYTES.inc(len(data))
        return True


async def _send(send: Send, status: int, headers: dict[str, str], body: bytes) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
