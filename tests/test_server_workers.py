"""`pinflow server --workers 2`: two processes on one port and one SQLite file serve, take
pushes (also several at once: SQLite's writers queue on its busy timeout) and give every
client the same archive bytes whichever process answers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from dagstore.core.protocol import ARCHIVE_DIGEST_HEADER
from pinflow.supervise import descendants
from tests.support.git import Git
from tests.support.server import ServerProcess, make_tokens

REPO = "multi"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[ServerProcess]:
    url = f"sqlite:///{tmp_path}/pinflow.db"
    server = ServerProcess(tmp_path, url, extra_args=("--workers", "2"))
    server.tokens = make_tokens(url)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_two_server_processes_serve_and_take_pushes(two_workers: ServerProcess, tmp_path: Path):
    server, base, tokens = two_workers, two_workers.url, two_workers.tokens
    assert server.proc is not None
    serving = [p for p in descendants(server.proc.pid) if "spawn_main" in _cmdline(p)]
    assert len(serving) == 2, [_cmdline(p) for p in descendants(server.proc.pid)]
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    created = httpx.post(f"{base}/api/v1/repos", json={"name": REPO}, headers=admin)
    assert created.status_code == 201, created.text
    work = Git(tmp_path / "work").init()
    sha = work.commit("one", **{"dags/a.py": "x = 1\n"})
    remote = server.git_url(REPO, tokens["push"])
    assert work.run("push", remote, "main", check=False).returncode == 0

    def push(branch: str) -> int:
        return work.run("push", remote, f"main:refs/heads/{branch}", check=False).returncode

    branches = [f"b{i}" for i in range(4)]
    with ThreadPoolExecutor(len(branches)) as pool:
        assert list(pool.map(push, branches)) == [0] * len(branches)
    read = {"Authorization": f"Bearer {tokens['read']}"}
    refs = httpx.get(f"{base}/api/v1/repos/{REPO}/refs", headers=read).json()["refs"]
    assert {f"refs/heads/{b}" for b in ["main", *branches]} <= set(refs)
    archives = [  # a new connection each, taken by whichever process accepts it
        httpx.get(f"{base}/api/v1/repos/{REPO}/archive/{sha}.tar.gz", headers=read)
        for _ in range(12)
    ]
    digests = {hashlib.sha256(a.content).hexdigest() for a in archives}
    assert [a.status_code for a in archives] == [200] * 12 and len(digests) == 1
    assert {a.headers[ARCHIVE_DIGEST_HEADER] for a in archives} == digests
