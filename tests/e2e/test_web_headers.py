"""What the API server tells browsers (issue 25, item 6): no page may be framed or sniffed, no
address leaks in a Referer, and the session cookie is Secure wherever users come over TLS,
also behind a proxy that ends TLS (its X-Forwarded-Proto, from the proxies configured to be
believed) or when the server is told its public https address."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.git import Git
from tests.support.server import ServerProcess, start_server

EXPECTED = {
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    started = start_server(tmp_path_factory.mktemp("headers"))
    try:
        yield started
    finally:
        started.stop()


def test_every_answer_carries_the_browser_hardening_headers(server: ServerProcess, tmp_path):
    work = Git(tmp_path / "w").init()
    server.create_repo("framed")
    work.write("dags/a.py", "x = 1\n")
    sha = work.commit("one")
    work.run("push", server.git_url("framed", server.tokens["push"]), "main")
    read = {"Authorization": f"Bearer {server.tokens['read']}"}
    archive = f"/api/v1/repos/framed/archive/{sha}.tar.gz"
    session = {"pinflow_session": server.tokens["read"]}
    with (
        httpx.Client(base_url=server.url, follow_redirects=False) as web,
        httpx.Client(base_url=server.url, cookies=session) as browser,
    ):
        answers = {
            "login page": web.get("/login"),
            "login": web.post("/login", data={"token": server.tokens["read"], "next": "/"}),
            "a page": browser.get("/"),
            "a page's redirect": httpx.get(f"{server.url}/"),
            "a static file": web.get("/static/favicon.svg"),
            "api docs": web.get("/docs"),
            "openapi": web.get("/openapi.json"),
            "healthz": web.get("/healthz"),
            "metrics": web.get("/metrics"),
            "api json": web.get("/api/v1/repos", headers=read),
            "api 401": web.get("/api/v1/repos"),
            "api 404": web.get("/api/v1/nowhere", headers=read),
            "git": web.get("/git/framed.git/info/refs?service=git-upload-pack"),
            "archive": web.get(archive, headers=read),
            "archive from memory": web.get(archive, headers=read),
        }
    assert answers["a page"].status_code == 200 and answers["archive"].status_code == 200
    for what, answer in answers.items():
        got = {name: answer.headers.get(name) for name in EXPECTED}
        assert got == EXPECTED, (what, answer.status_code, got)


def login_cookie(server: ServerProcess, source: str = "127.0.0.1", **headers: str) -> str:
    """The Set-Cookie of a login sent from `source` (another loopback address: a proxy)."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=server.url, transport=transport, follow_redirects=False) as web:
        answer = web.post("/login", data={"token": server.tokens["read"]}, headers=headers)
    assert answer.status_code == 303, answer.text
    return answer.headers["set-cookie"].lower()


def test_the_cookie_is_secure_behind_a_tls_proxy_the_server_believes(tmp_path: Path):
    server = start_server(tmp_path / "h", PINFLOW_FORWARDED_ALLOW_IPS="127.0.0.2")
    try:
        https = {"X-Forwarded-Proto": "https"}
        assert "secure" in login_cookie(server, "127.0.0.2", **https)  # the proxy
        assert "secure" not in login_cookie(server, "127.0.0.2")  # plain http through it
        assert "secure" not in login_cookie(server, "127.0.0.1", **https)  # not a proxy
    finally:
        server.stop()


def test_the_cookie_is_secure_when_the_public_url_is_https(tmp_path: Path):
    server = start_server(tmp_path / "h", PINFLOW_PUBLIC_URL="https://pinflow.example.com")
    try:
        assert "secure" in login_cookie(server)
    finally:
        server.stop()


def test_a_public_url_that_is_not_one_is_refused_at_start(tmp_path: Path):
    server = ServerProcess(
        home=tmp_path, database_url=f"sqlite:///{tmp_path}/p.db",
        extra_env={"PINFLOW_PUBLIC_URL": "pinflow.example.com"},
    )  # fmt: skip
    try:
        with pytest.raises(RuntimeError, match="PINFLOW_PUBLIC_URL must be an http"):
            server.start()
    finally:
        server.stop()  # had it started (the bug this test looks for), it is stopped
