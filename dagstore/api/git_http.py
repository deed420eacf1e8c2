"""Git smart HTTP for the store: dulwich's WSGI handlers behind pinflow's auth and guards.

This layer only adapts HTTP to dulwich: it answers only the canonical smart-HTTP paths (the
scope a request needs follows from the same match that decides which service runs, so no
other spelling, such as `REPO.git//git-receive-pack`, can be checked as one service and run as
another), checks the token (HTTP Basic, any user, the token as password), refuses unknown
repos with a message git shows, caps request bodies before and after any gzip encoding is
inflated, works around uvicorn's leftover `Transfer-Encoding` header (PITFALLS.md), and opens
a fresh repo per request that it closes when the response ends.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from dulwich.protocol import CAPABILITY_ALLOW_TIP_SHA1_IN_WANT, pkt_line
from dulwich.server import Backend, ReceivePackHandler, UploadPackHandler
from dulwich.web import GunzipFilter, HTTPGitApplication, LimitedInputFilter

from dagstore.core.errors import BadRequest, NotFound, PinflowError
from dagstore.core.names import REPO_NAME_RE
from dagstore.git import packsend
from dagstore.git.repo import DatabaseRepo
from dagstore.receive import install_hooks
from dagstore.store import StoreContext

log = logging.getLogger("pinflow.git")
packsend.install()
_PATH_RE = re.compile(
    r"^/(?P<name>[^/]+?)(?:\.git)?(?P<rest>/info/refs|/git-upload-pack|/git-receive-pack)$"
)
SERVICES = {"git-upload-pack": "read", "git-receive-pack": "push"}  # service → scope it needs
MAX_NEGOTIATION_BYTES = 16 * 1024 * 1024  # an upload-pack request: wants and haves only
StartResponse = Callable[..., Any]


class StoreBackend(Backend):
    """Opens repos for one request and remembers them so they can all be closed after it;
    closing also discards what a push brought that no ref points into (quarantine)."""

    def __init__(self, store: StoreContext) -> None:
        self.store = store
        self.opened: list[DatabaseRepo] = []

    def open_repository(self, path: str | bytes) -> DatabaseRepo:  # type: ignore[override]
        if isinstance(path, bytes):
            path = path.decode("utf-8", "replace")
        name = path.strip("/").removesuffix(".git")
        try:
            repo = self.store.storage.open_unmanaged(name)
            install_hooks(repo, self.store, name)
        except (NotFound, PinflowError) as exc:
            raise NotGitRepository(str(exc)) from exc
        self.opened.append(repo)
        return repo

    def close(self) -> None:
        try:
            for repo in self.opened:
                try:
                    repo.end_push()
                except Exception:  # the database went away: stale quarantine is swept later
                    log.exception("could not discard the quarantined packs of a push")
                repo.close()
        finally:
            self.opened.clear()


class StoreReceivePack(ReceivePackHandler):
    """receive-pack that settles the push's quarantine as soon as its refs are applied, before
    the client reads the report: what moved no ref is gone by the time the push returns."""

    def _apply_pack(self, refs):  # type: ignore[no-untyped-def]
        try:
            yield from super()._apply_pack(refs)
        finally:
            self.repo.end_push()  # type: ignore[attr-defined]


class StoreUploadPack(UploadPackHandler):
    """upload-pack that lets clients fetch the commits of hidden refs (the store's keep refs,
    never advertised) by sha: `allow-tip-sha1-in-want`, with `DatabaseRepo.get_refs`."""

    def capabilities(self) -> list[bytes]:
        return [*super().capabilities(), CAPABILITY_ALLOW_TIP_SHA1_IN_WANT]


class BodyLimit:
    """A `wsgi.input` that fails once a request body exceeds the limit; dulwich reports it."""

    def __init__(self, stream: Any, limit: int, what: str = "push", drain: bool = True) -> None:
        self.what = what
        self.stream = stream
        self.limit = limit
        self.count = 0
        self.exceeded = False
        self.drains = drain  # only the raw stream: draining an inflating one costs its inflation

    def _account(self, data: bytes) -> bytes:
        self.count += len(data)
        if self.count > self.limit:
            if not self.exceeded and self.drains:
                self.exceeded = True
                self.drain(cap=4 * self.limit)
            raise OSError(
                f"{self.what} refused: larger than the store's limit of {_mib(self.limit)}"
            )
        return data

    def read(self, size: int = -1) -> bytes:
        return self._account(self.stream.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._account(self.stream.readline(size))

    def drain(self, cap: int) -> None:
        """Read what the client still sends, so git shows our answer instead of a reset."""
        left = cap
        while left > 0:
            chunk = self.stream.read(min(1 << 16, left))
            if not chunk:
                return
            left -= len(chunk)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _plain(start_response: StartResponse, status: str, message: str, extra=()) -> list[bytes]:
    body = (message.rstrip("\n") + "\n").encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start_response(status, headers + list(extra))
    return [body]


def _basic_password(environ: dict[str, Any]) -> str | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, sep, password = decoded.partition(":")
    return password if sep else None


def route(environ: dict[str, Any]) -> tuple[str, str, str] | None:
    """(repo name, service, scope needed) of a smart-HTTP request; None for anything else."""
    match = _PATH_RE.match(environ.get("PATH_INFO", ""))
    if match is None:
        return None
    method, rest = environ.get("REQUEST_METHOD"), match.group("rest")
    if rest == "/info/refs":
        service = parse_qs(environ.get("QUERY_STRING", "")).get("service", [""])[0]
        wanted_method = "GET"
    else:
        service, wanted_method = rest[1:], "POST"
    if method != wanted_method or service not in SERVICES:
        return None
    return match.group("name"), service, SERVICES[service]


def _limit_inflated(
    app: Callable[..., Iterable[bytes]], limit: int, what: str
) -> Callable[..., Any]:
    """Cap the request body as dulwich reads it, after GunzipFilter inflated it: a small gzip
    body must not carry a large pack past the limit."""

    def limited(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        environ["wsgi.input"] = BodyLimit(environ["wsgi.input"], limit, what, drain=False)
        return app(environ, start_response)

    return limited


class _Closing:
    """The response iterable; closes the request's repos once the server is done with it.

    A malformed request (garbage pkt-lines, a bad length, an empty body) makes dulwich raise
    while the 200 is already on its way; without this the server logs a traceback and drops
    the connection. The client gets an `ERR` pkt-line instead, which git shows as a remote error.
    """

    def __init__(self, inner: Iterable[bytes], on_close: Callable[[], None]) -> None:
        self.inner = inner
        self.on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.inner
        except (GitProtocolError, ValueError) as exc:  # dulwich parsing what the client sent
            reason = "the request ended early" if isinstance(exc, HangupException) else exc
            message = f"pinflow: malformed git request: {reason}"[:500]
            log.warning("%s", message)
            yield pkt_line(f"ERR {message}".encode())

    def close(self) -> None:
        try:
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()
        finally:
            self.on_close()


def make_git_app(store: StoreContext) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    storage, db, max_push_bytes = store.storage, store.db, store.settings.max_push_bytes

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        routed = route(environ)
        if routed is None:
            return _plain(
                start_response, "404 Not Found", "pinflow: smart HTTP only, at /git/REPO.git"
            )
        name, service, needed = routed
        try:
            store.tokens.authenticate(db, _basic_password(environ), needed)
        except PinflowError as exc:
            if exc.status_code == 401:
                return _plain(
                    start_response,
                    "401 Unauthorized",
                    f"pinflow: {exc.detail}: give a token as the password",
                    [("WWW-Authenticate", 'Basic realm="pinflow"')],
                )
            return _plain(start_response, "403 Forbidden", f"pinflow: {exc.detail}")
        try:
            known = REPO_NAME_RE.match(name) is not None and storage.exists(name)
        except BadRequest:  # a name no repository can have, like x.git.git
            known = False
        if not known:
            return _plain(
                start_response,
                "404 Not Found",
                f"pinflow: repository {name!r} does not exist; "
                f"create it with `pinflow repo create {name}`",
            )
        # uvicorn de-chunked the body already; dulwich would de-chunk it again.
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        pushing = service == "git-receive-pack"
        limit = max_push_bytes if pushing else MAX_NEGOTIATION_BYTES
        what = "push" if pushing else "fetch request"
        if environ.get("REQUEST_METHOD") == "POST":  # the bytes on the wire
            environ["wsgi.input"] = BodyLimit(environ["wsgi.input"], limit, what)
        backend = StoreBackend(store)
        git = HTTPGitApplication(
            backend,
            handlers={b"git-receive-pack": StoreReceivePack, b"git-upload-pack": StoreUploadPack},
        )
        chain = LimitedInputFilter(GunzipFilter(_limit_inflated(git, limit, what)))
        return _Closing(chain(environ, start_response), backend.close)

    return app
