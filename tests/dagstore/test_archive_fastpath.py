"""The archive fast path (dagstore.api.archive_http) answers only what the route would, and
GET /api/v1/auth/archive decides exactly as the archive route does."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from dulwich.repo import Repo

from dagstore.access.tokencache import TokenCache
from dagstore.access.tokens import create_token
from dagstore.api.archive_http import ArchiveFastPath
from dagstore.core.db import Database
from dagstore.core.errors import PinflowError
from dagstore.core.protocol import ARCHIVE_DIGEST_HEADER
from dagstore.git.archive import ArchiveCache
from dagstore.git.diskcache import DiskCache
from pinflow.migrate import upgrade
from tests.support.git import Git
from tests.support.server import ServerProcess, start_server
from tests.support.trycred import running_try_credential

PASSED_ON = 418  # what the app behind the fast path answers in these tests


@dataclass
class Fast:
    app: ArchiveFastPath
    store: SimpleNamespace
    secrets: dict[str, str]
    sha: str
    data: bytes
    passed_on: list[str]

    def get(self, path: str, method: str = "GET", **headers: str) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.request(method, path, headers=headers)

        return asyncio.run(call())

    def archive(self, sha: str | None = None) -> str:
        return f"/api/v1/repos/r/archive/{sha or self.sha}.tar.gz"


@pytest.fixture
def fast(tmp_path: Path) -> Iterator[Fast]:
    db = Database(f"sqlite:///{tmp_path}/pinflow.db")
    upgrade(db)
    with db.write() as session:
        secrets = {s: create_token(session, s, s) for s in ("read", "admin", "trigger")}
        secrets["unverified"] = create_token(session, "read", "never seen by this process")
    work = Git(tmp_path / "work").init()
    sha = work.commit("one", **{"dags/a.py": "x = 1\n"})
    archives = ArchiveCache(DiskCache(tmp_path / "cache", 10**8))
    with Repo(str(work.path)) as repo:
        _, data = archives.load("r", sha, lambda: repo)  # now in memory
    store = SimpleNamespace(tokens=TokenCache(0.5), archives=archives, db=db)
    for name in ("read", "admin", "trigger"):  # verified once, as an earlier request would
        with contextlib.suppress(PinflowError):  # trigger: known now, still without read scope
            store.tokens.authenticate(db, secrets[name], "read")
    passed_on: list[str] = []

    async def route(scope, receive, send) -> None:  # stands in for FastAPI's router
        passed_on.append(scope["path"])
        await send({"type": "http.response.start", "status": PASSED_ON, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    yield Fast(ArchiveFastPath(route, store), store, secrets, sha, data, passed_on)  # type: ignore[arg-type]
    db.dispose()


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("scope", ["read", "admin"])
def test_a_verified_read_token_gets_the_archive_from_memory(fast: Fast, scope: str):
    response = fast.get(fast.archive(), **_bearer(fast.secrets[scope]))
    assert response.status_code == 200 and response.content == fast.data
    digest = hashlib.sha256(fast.data).hexdigest()
    assert response.headers[ARCHIVE_DIGEST_HEADER] == digest
    assert response.headers["ETag"] == f'"{digest}"'
    assert response.headers["Content-Type"] == "application/gzip"
    assert int(response.headers["Content-Length"]) == len(fast.data)
    assert "immutable" in response.headers["Cache-Control"]
    conditional = {**_bearer(fast.secrets[scope]), "If-None-Match": f'"{digest}"'}
    same = fast.get(fast.archive(), **conditional)
    assert same.status_code == 304 and same.content == b""
    assert same.headers["ETag"] == f'"{digest}"'
    assert fast.passed_on == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic eDpwZl94eHg="},
        _bearer("pf_" + "x" * 43),  # unknown
        _bearer("pftry_1_1_" + "x" * 43),  # a try credential: checked per request, by the route
    ],
    ids=["none", "empty", "basic", "unknown", "try-credential"],
)
def test_anything_not_known_good_goes_to_the_route(fast: Fast, headers: dict[str, str]):
    assert fast.get(fast.archive(), **headers).status_code == PASSED_ON
    assert fast.passed_on == [fast.archive()]


@pytest.mark.parametrize("name", ["trigger", "unverified"])
def test_a_token_without_read_scope_or_not_yet_verified_goes_to_the_route(fast: Fast, name: str):
    assert fast.get(fast.archive(), **_bearer(fast.secrets[name])).status_code == PASSED_ON


def test_requests_it_does_not_serve_go_to_the_route(fast: Fast):
    read = _bearer(fast.secrets["read"])
    paths = [
        fast.archive("b" * 40),  # not in memory
        fast.archive(fast.sha.upper()),
        fast.archive() + "x",
        fast.archive().replace("/r/", "/../"),
    ]
    for path in paths:
        assert fast.get(path, **read).status_code == PASSED_ON
    assert fast.get(fast.archive(), "HEAD", **read).status_code == PASSED_ON
    assert fast.get(fast.archive(), "POST", **read).status_code == PASSED_ON
    assert len(fast.passed_on) == len(paths) + 2


def test_after_the_token_cache_ttl_the_route_decides_again(fast: Fast):
    read = _bearer(fast.secrets["read"])
    assert fast.get(fast.archive(), **read).status_code == 200
    time.sleep(0.6)  # the fixture's TokenCache(0.5): a revoked token would now be seen
    assert fast.get(fast.archive(), **read).status_code == PASSED_ON


def test_an_archive_no_longer_in_memory_goes_to_the_route(fast: Fast):
    fast.store.archives = ArchiveCache(fast.store.archives.disk)  # a fresh process's memory
    fast.app.store = fast.store  # type: ignore[assignment]
    assert fast.get(fast.archive(), **_bearer(fast.secrets["read"])).status_code == PASSED_ON


# Against a real server: the fast path's answer is the route's, and the auth endpoint's too.

TTL = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    tmp = tmp_path_factory.mktemp("fastpath")
    server = start_server(tmp / "home", PINFLOW_TOKEN_CACHE_SECONDS=str(TTL))
    try:
        server.create_repo("fp")
        work = Git(tmp / "work").init()
        sha = work.commit("one", **{"dags/a.py": "x = 1\n"})
        assert work.run("push", server.git_url("fp", server.tokens["push"]), "main").returncode == 0
        yield server, sha
    finally:
        server.stop()


def test_the_fast_answer_is_the_routes_answer(server: tuple[ServerProcess, str]):
    proc, sha = server
    with proc.api("read") as api:
        responses = [api.get(f"/repos/fp/archive/{sha}.tar.gz") for _ in range(3)]
    first, *later = responses  # the first built by the route, the others from memory
    for response in later:
        assert response.status_code == 200 and response.content == first.content
        assert {k: v for k, v in response.headers.items() if k != "date"} == {
            k: v for k, v in first.headers.items() if k != "date"
        }


def test_the_auth_endpoint_decides_as_the_archive_route(server: tuple[ServerProcess, str]):
    proc, sha = server
    other = "c" * 40
    credential = running_try_credential(proc.database_url, "fp", sha)
    for secret in (None, "pf_" + "x" * 43, proc.tokens["revoked"], proc.tokens["trigger"],
                   proc.tokens["read"], proc.tokens["worker"], credential):  # fmt: skip
        with proc.api_as(secret) as api:
            for version in (sha, other):
                archive = api.get(f"/repos/fp/archive/{version}.tar.gz").status_code
                auth = api.get("/auth/archive", params={"repo": "fp", "sha": version})
                expected = 204 if archive in (200, 404) else archive  # 404: no such commit
                assert auth.status_code == expected, (secret, version, auth.text)
                if expected == 204:
                    assert auth.content == b""
    with proc.api("read") as api:
        assert api.get("/auth/archive", params={"repo": "fp"}).status_code == 400


def test_the_auth_answer_may_be_kept_only_while_pinflow_trusts_the_token(
    server: tuple[ServerProcess, str],
):
    proc, sha = server
    params = {"repo": "fp", "sha": sha}
    with proc.api("admin") as api:
        keep = int(api.get("/auth/archive", params=params).headers["X-Accel-Expires"])
    assert 0 <= keep <= TTL - 1  # nginx rounds up to the next second: at most TTL in all
    credential = running_try_credential(proc.database_url, "fp", sha)
    with proc.api_as(credential) as api:
        answer = api.get("/auth/archive", params=params)
    assert answer.status_code == 204 and answer.headers["X-Accel-Expires"] == "0"
