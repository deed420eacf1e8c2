"""Servers remember verified tokens for PINFLOW_TOKEN_CACHE_SECONDS; revocation still lands."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from dagstore.access.tokens import create_token, hash_token, revoke_token
from dagstore.core.db import Database
from dagstore.core.models import Token
from tests.conftest import BACKENDS, serve
from tests.support.git import Git
from tests.support.server import ServerProcess

TTL = 1.0


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory) -> Iterator[ServerProcess]:
    yield from serve(request, tmp_path_factory, PINFLOW_TOKEN_CACHE_SECONDS=str(TTL))


def status(server: ServerProcess, secret: str, path: str = "/repos") -> int:
    headers = {"Authorization": f"Bearer {secret}"}
    return httpx.get(f"{server.url}/api/v1{path}", headers=headers, timeout=10).status_code


def test_a_revoked_token_is_refused_within_the_cache_time(server: ServerProcess):
    db = Database(server.database_url)
    with db.write() as session:
        secret = create_token(session, "read", "short-lived")
    assert status(server, secret) == 200  # verified and remembered
    with db.write() as session:
        token_id = session.scalar(select(Token.id).where(Token.token_hash == hash_token(secret)))
        revoke_token(session, token_id)
    revoked_at = time.monotonic()
    while status(server, secret) == 200:
        assert time.monotonic() - revoked_at < TTL + 2, "revocation never took effect"
        time.sleep(0.1)
    assert status(server, secret) == 401
    db.dispose()


def test_a_remembered_token_still_has_only_its_scope(server: ServerProcess):
    secret = server.tokens["read"]
    assert status(server, secret) == 200
    response = httpx.post(
        f"{server.url}/api/v1/repos",
        json={"name": "nope"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 403
    assert status(server, "pf_unknown") == 401  # unknown tokens are never remembered


def test_cached_archive_still_needs_a_token_and_other_repos_still_404(
    server: ServerProcess, tmp_path, uid
):
    name = f"arch{uid}"
    server.create_repo(name)
    work = Git(tmp_path / "w").init()
    sha = work.commit("one", **{"a.py": "x = 1\n"})
    work.run("push", server.git_url(name, server.tokens["push"]), "main")
    path = f"/repos/{name}/archive/{sha}.tar.gz"
    assert status(server, server.tokens["read"], path) == 200  # built and now known
    assert status(server, server.tokens["read"], path) == 200  # from memory
    assert status(server, "pf_bogus", path) == 401
    assert status(server, server.tokens["read"], f"/repos/other{uid}/archive/{sha}.tar.gz") == 404
