"""`pinflow server` as a real subprocess on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from dagstore.access.tokens import SCOPES, create_token
from dagstore.core.db import Database
from pinflow.migrate import upgrade
from tests.support.ports import free_port

PINFLOW = str(Path(sys.executable).with_name("pinflow"))


def make_tokens(database_url: str) -> dict[str, str]:
    """One live token per scope, plus a revoked admin token under "revoked"."""
    db = Database(database_url)
    try:
        upgrade(db)
        with db.write() as session:
            tokens = {scope: create_token(session, scope, f"test-{scope}") for scope in SCOPES}
            tokens["revoked"] = create_token(session, "admin", "test-revoked")
        from sqlalchemy import update

        from dagstore.access.tokens import hash_token
        from dagstore.core.models import Token

        with db.write() as session:
            session.execute(
                update(Token)
                .where(Token.token_hash == hash_token(tokens["revoked"]))
                .values(revoked_at=Token.created_at)
            )
    finally:
        db.dispose()
    return tokens


def pinflow_env(home: Path, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINFLOW_")}
    env.update(PINFLOW_HOME=str(home), PINFLOW_DATABASE_URL=database_url, COLUMNS="200", **extra)
    return env


@dataclass
class ServerProcess:
    home: Path
    database_url: str
    backend: str = "sqlite"
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()  # more `pinflow server` options, e.g. ("--workers", "2")
    port: int = 0
    tokens: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def git_url(self, repo: str, token: str | None = None) -> str:
        auth = f"x:{token}@" if token else ""
        return f"http://{auth}127.0.0.1:{self.port}/git/{repo}.git"

    def start(self, timeout: float = 120.0) -> None:
        """Returns once /healthz answers; raises at once if the server exits. `timeout` only
        bounds a server that hangs: a loaded 2-core machine starts one in 30 s and more."""
        self.port = self.port or free_port()
        env = pinflow_env(self.home, self.database_url, **self.extra_env)
        self.log_path = self.home / f"server-{self.port}.log"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                PINFLOW,
                "server",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *self.extra_args,
            ],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not become healthy")

    def kill9(self) -> None:
        """Killed at once, no shutdown; `start()` brings it back on the same port."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def api(self, scope: str = "admin") -> httpx.Client:
        return self.api_as(self.tokens[scope] if scope else None)

    def api_as(self, secret: str | None) -> httpx.Client:
        """A client sending `secret` (any token or try credential) as its bearer."""
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=30)

    def create_repo(self, name: str, track: str = "main", strict: bool = False) -> dict:
        with self.api("admin") as client:
            response = client.post("/repos", json={"name": name, "track": track, "strict": strict})
        assert response.status_code == 201, response.text
        return response.json()

    def server_log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(home: Path, database_url: str | None = None, **env: str) -> ServerProcess:
    """A started server with tokens, on SQLite in `home` unless a database URL is given."""
    home.mkdir(parents=True, exist_ok=True)
    url = database_url or f"sqlite:///{home}/pinflow.db"
    server = ServerProcess(home=home, database_url=url, extra_env=env)
    server.tokens = make_tokens(url)
    server.start()
    return server
