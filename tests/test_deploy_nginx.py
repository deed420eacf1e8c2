"""deploy/nginx.conf run by Debian's real nginx in front of a real `pinflow server`: it caches
archives, yet serves none to a request whose token pinflow would refuse, even from its cache;
everything else passes through (API, git push)."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dagstore.access.tokens import hash_token, issue_token, revoke_token
from dagstore.api.archive_http import ARCHIVE_PATH
from dagstore.core.db import Database
from dagstore.core.models import Token
from dagstore.core.protocol import ARCHIVE_DIGEST_HEADER
from tests.support.git import Git
from tests.support.nginx import DEPLOY_CONF, Nginx, deploy_conf, nginx_binary
from tests.support.server import ServerProcess, start_server
from tests.support.trycred import running_try_credential

if nginx_binary() is None:
    if os.environ.get("CI"):
        pytest.fail("nginx is required under CI (.ci/run installs nginx-light)")
    pytest.skip("nginx not installed: apt-get install -y nginx-light", allow_module_level=True)

REPO = "deployed"
TOKEN_CACHE_SECONDS = 2  # pinflow's own; nginx may keep an answer at most this long


@dataclass
class Deployed:
    server: ServerProcess
    nginx: Nginx
    work: Git
    shas: list[str]  # two commits, oldest first
    cache: Path  # nginx's cache folders

    def kept_auth_answers(self) -> list[bytes]:
        """The auth answers nginx keeps, as files (their key holds the Authorization)."""
        return [p.read_bytes() for p in (self.cache / "pinflow-auth").rglob("*") if p.is_file()]

    def archive_url(self, sha: str) -> str:
        return f"{self.nginx.url}/api/v1/repos/{REPO}/archive/{sha}.tar.gz"

    def get(self, sha: str, secret: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.get(self.archive_url(sha), headers=headers, timeout=10)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    tmp = tmp_path_factory.mktemp("deploy")
    server = start_server(tmp / "home", PINFLOW_TOKEN_CACHE_SECONDS=str(TOKEN_CACHE_SECONDS))
    nginx = None
    try:
        nginx = Nginx(tmp / "nginx")
        nginx.http = deploy_conf([f"127.0.0.1:{server.port}"], nginx.port, tmp / "cache")
        nginx.start(probe="/healthz")
        server.create_repo(REPO)
        work = Git(tmp / "work").init()
        shas = [work.commit(f"v{i}", **{"dags/a.py": f"x = {i}\n"}) for i in (1, 2)]
        push = work.run("push", _git_url(nginx, server.tokens["push"]), "main", check=False)
        assert push.returncode == 0, push.stderr
        yield Deployed(server, nginx, work, shas, tmp / "cache")
    finally:
        if nginx is not None:
            nginx.stop()
        server.stop()


def _git_url(nginx: Nginx, token: str) -> str:
    return f"http://x:{token}@127.0.0.1:{nginx.port}/git/{REPO}.git"


def _cached(deployed: Deployed, sha: str) -> bytes:
    """The archive, fetched with a read token until nginx answers from its cache."""
    for _ in range(3):
        response = deployed.get(sha, deployed.server.tokens["read"])
        assert response.status_code == 200, response.text
        if response.headers["X-Cache-Status"] == "HIT":
            return response.content
    raise AssertionError(f"nginx never cached the archive of {sha}")


def _refused(response: httpx.Response, archive: bytes, status: int) -> None:
    assert response.status_code == status, response.text
    assert archive not in response.content and not response.content.startswith(b"\x1f\x8b")
    assert ARCHIVE_DIGEST_HEADER not in response.headers


def test_a_read_token_gets_the_archive_from_nginx_as_pinflow_serves_it(deployed: Deployed):
    sha = deployed.shas[1]
    direct = deployed.server.api("read").get(f"/repos/{REPO}/archive/{sha}.tar.gz")
    assert direct.status_code == 200
    first = deployed.get(sha, deployed.server.tokens["read"])
    assert first.status_code == 200 and first.content == direct.content
    digest = hashlib.sha256(first.content).hexdigest()
    assert first.headers[ARCHIVE_DIGEST_HEADER] == digest
    assert first.headers["ETag"] == f'"{digest}"'
    assert "immutable" in first.headers["Cache-Control"]
    assert _cached(deployed, sha) == direct.content  # and from the cache, the same bytes
    # pinflow was asked once, its answer kept: not a Python request per archive request.
    token = deployed.server.tokens["read"].encode()
    assert any(token in answer for answer in deployed.kept_auth_answers())


@pytest.mark.parametrize(
    ("secret", "status"),
    [
        (None, 401),
        ("pf_" + "x" * 43, 401),
        ("revoked", 401),
        ("trigger", 403),  # a live token without read scope
        ("pftry_1_1_" + "x" * 43, 403),  # shaped like a try credential, never issued
    ],
)
def test_refused_tokens_get_no_bytes_even_when_nginx_has_the_archive(
    deployed: Deployed, secret: str | None, status: int
):
    sha = deployed.shas[1]
    archive = _cached(deployed, sha)
    secret = deployed.server.tokens.get(secret, secret) if secret else None
    for _ in range(2):  # a refusal is not kept either
        _refused(deployed.get(sha, secret), archive, status)
    basic = httpx.get(deployed.archive_url(sha), auth=("x", deployed.server.tokens["read"]))
    _refused(basic, archive, 401)  # pinflow reads bearer tokens only; so does the recipe


def test_a_revoked_token_is_refused_within_pinflows_token_cache_ttl(deployed: Deployed):
    sha = deployed.shas[1]
    db = Database(deployed.server.database_url)
    try:
        with db.write() as session:
            token_id, secret = issue_token(session, "read", "soon-revoked")
        archive = _cached(deployed, sha)
        assert deployed.get(sha, secret).status_code == 200
        assert deployed.get(sha, secret).status_code == 200  # the auth answer is kept now
        with db.write() as session:
            revoke_token(session, token_id)
            assert session.get(Token, token_id).token_hash == hash_token(secret)
        revoked_at = time.monotonic()
        while deployed.get(sha, secret).status_code == 200:
            assert time.monotonic() - revoked_at < TOKEN_CACHE_SECONDS + 1.0, "still served"
            time.sleep(0.1)
        for _ in range(3):
            _refused(deployed.get(sha, secret), archive, 401)
    finally:
        db.dispose()


def test_a_try_credential_gets_its_own_version_only(deployed: Deployed):
    old, new = deployed.shas
    archives = {sha: _cached(deployed, sha) for sha in (old, new)}
    credential = running_try_credential(deployed.server.database_url, REPO, old)
    mine = deployed.get(old, credential)
    assert mine.status_code == 200 and mine.content == archives[old]
    for _ in range(2):
        _refused(deployed.get(new, credential), archives[new], 403)
    # A try can end at any moment: pinflow checks its credential on every request, so must nginx.
    assert not any(credential.encode() in answer for answer in deployed.kept_auth_answers())


def test_the_api_and_odd_archive_paths_pass_through_to_pinflow(deployed: Deployed):
    read = {"Authorization": f"Bearer {deployed.server.tokens['read']}"}
    base = deployed.nginx.url
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    repos = httpx.get(f"{base}/api/v1/repos", headers=read)
    assert repos.status_code == 200 and REPO in [r["name"] for r in repos.json()["items"]]
    assert httpx.get(f"{base}/api/v1/repos").status_code == 401
    upper = httpx.get(f"{base}/api/v1/repos/{REPO}/archive/{'A' * 40}.tar.gz", headers=read)
    assert upper.status_code == 400  # not the recipe's pattern: pinflow's route says why
    unknown = httpx.get(deployed.archive_url("b" * 40), headers=read)
    assert unknown.status_code == 404 and "X-Cache-Status" in unknown.headers


def test_a_push_through_nginx_lands_and_its_archive_is_served(deployed: Deployed):
    sha = deployed.work.commit("v3", **{"dags/a.py": "x = 3\n"})
    url = _git_url(deployed.nginx, deployed.server.tokens["push"])
    push = deployed.work.run("push", url, "main", check=False)
    assert push.returncode == 0, push.stderr
    refs = deployed.server.api("read").get(f"/repos/{REPO}/refs").json()["refs"]
    assert refs["refs/heads/main"] == sha
    response = deployed.get(sha, deployed.server.tokens["read"])
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == response.headers[ARCHIVE_DIGEST_HEADER]


def test_the_recipe_takes_the_archive_paths_pinflows_fast_path_takes():
    """One pattern in two languages: the location nginx caches and checks is exactly the
    paths of valid repo names and full shas (`dagstore.api.archive_http`)."""
    conf = DEPLOY_CONF.read_text()
    (location,) = re.findall(r'location ~ "(\^/api/v1/repos/[^"]+)"', conf)
    as_python = location.replace("(?<archive_", "(?P<")  # nginx's variable names, Python's groups
    assert as_python == f"^{ARCHIVE_PATH.pattern}$"
