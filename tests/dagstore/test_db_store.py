"""Git objects and refs in the database (issue 13): two `pinflow server`s with homes of their
own on one database serve one store; a server's disk is a cache it can lose at any moment."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dagstore.core.db import Database
from dagstore.core.models import Repo
from dagstore.git.models import GitPack
from dagstore.git.repack import MAX_PACKS
from tests.conftest import BACKENDS, _database_for
from tests.support.git import Git, clone, work_on_tip
from tests.support.server import ServerProcess, make_tokens
from tests.support.store import fsck, refs_of, storage_for


class Pair:
    def __init__(self, a: ServerProcess, b: ServerProcess, db: Database) -> None:
        self.a, self.b, self.db = a, b, db

    def url(self, server: ServerProcess, repo: str, scope: str = "push") -> str:
        return server.git_url(repo, server.tokens[scope])

    def packs(self, repo: str) -> dict[str, int]:
        """Pack rows of `repo` by state."""
        with self.db.read() as session:
            rows = session.execute(
                select(GitPack.state, func.count())
                .join(Repo, Repo.id == GitPack.repo_id)
                .where(Repo.name == repo)
                .group_by(GitPack.state)
            )
            return {state: count for state, count in rows}


@pytest.fixture(scope="module", params=BACKENDS)
def pair(request, tmp_path_factory) -> Iterator[Pair]:
    """Servers A and B: separate PINFLOW_HOMEs, one database (SQLite's file in neither home)."""
    base = tmp_path_factory.mktemp("pair")
    for url in _database_for(request, request.param, str(base)):
        tokens = make_tokens(url)
        servers = []
        for name in "ab":
            server = ServerProcess(home=base / name, database_url=url, backend=request.param)
            server.home.mkdir()
            server.tokens = tokens
            server.start()
            servers.append(server)
        db = Database(url)
        try:
            yield Pair(servers[0], servers[1], db)
        finally:
            db.dispose()
            for server in servers:
                server.stop()


def test_push_through_a_then_everything_through_b(pair: Pair, repo_name: str, tmp_path: Path):
    pair.a.create_repo(repo_name)
    work = Git(tmp_path / "w").init()
    first = work.commit("first", **{"dags__a.py": "A = 1\n"})
    assert work.run("push", pair.url(pair.a, repo_name), "main").returncode == 0
    cloned = clone(pair.url(pair.b, repo_name, "read"), tmp_path / "c")
    assert cloned.returncode == 0, cloned.stderr
    assert (tmp_path / "c" / "dags" / "a.py").read_text() == "A = 1\n"
    second = work.commit("second", **{"dags__a.py": "A = 2\n"})
    work.run("push", pair.url(pair.a, repo_name), "main")
    reader = Git(tmp_path / "c")
    reader.run("fetch", "-q", "origin")
    assert reader.head("origin/main") == second
    with pair.b.api("read") as api:
        archive = api.get(f"/repos/{repo_name}/archive/{first}.tar.gz")
        assert archive.status_code == 200
        assert api.get(f"/repos/{repo_name}/files/{second}/dags/a.py").content == b"A = 2\n"
        assert api.get(f"/repos/{repo_name}/resolve/main").json() == {"sha": second}
        assert api.get(f"/repos/{repo_name}/resolve/{first[:8]}").json() == {"sha": first}
        versions = api.get(f"/repos/{repo_name}/versions").json()["items"]
        assert [v["sha"] for v in versions] == [second, first]
    with pair.a.api("read") as api:  # the same bytes from either server
        assert api.get(f"/repos/{repo_name}/archive/{first}.tar.gz").content == archive.content
    assert not (pair.b.home / "repos").exists(), "no repository on a server's disk"


def test_force_push_through_b_and_the_orphan_through_a(pair: Pair, repo_name, tmp_path):
    pair.a.create_repo(repo_name)
    work = Git(tmp_path / "w").init()
    work.commit("base", **{"a.py": "0\n"})
    orphan = work.commit("to be rewritten", **{"a.py": "orphan\n"})
    assert work.run("push", pair.url(pair.b, repo_name), "main").returncode == 0
    work.run("reset", "-q", "--hard", "HEAD~1")
    rewritten = work.commit("rewritten", **{"a.py": "new\n"})
    assert work.run("push", "--force", pair.url(pair.b, repo_name), "main").returncode == 0
    with pair.a.api("read") as api:
        assert api.get(f"/repos/{repo_name}/refs").json()["refs"]["refs/heads/main"] == rewritten
        assert api.get(f"/repos/{repo_name}/archive/{orphan}.tar.gz").status_code == 200
        assert api.get(f"/repos/{repo_name}/files/{orphan}/a.py").content == b"orphan\n"
    fetched = Git(tmp_path / "f").init()
    url = pair.url(pair.a, repo_name, "read")
    assert "refs/pinflow" not in fetched.run("ls-remote", url).stdout, "keep refs are hidden"
    fetched.run("fetch", "-q", url, orphan)  # but their commits can be fetched by sha
    assert fetched.run("show", "FETCH_HEAD:a.py").stdout == "orphan\n"


def test_a_server_that_loses_its_home_loses_nothing(pair: Pair, repo_name, tmp_path):
    pair.a.create_repo(repo_name)
    work = Git(tmp_path / "w").init()
    sha = work.commit("kept", **{"dags__k.py": "K = 1\n"})
    work.run("push", pair.url(pair.a, repo_name), "main")
    with pair.a.api("read") as api:  # A has packs and archives in its cache now
        assert api.get(f"/repos/{repo_name}/archive/{sha}.tar.gz").status_code == 200
    assert any((pair.a.home / "cache" / "server").rglob("*.pack"))
    for entry in pair.a.home.iterdir():  # rm -rf of everything in A's home, A still serving
        if entry.is_dir():
            shutil.rmtree(entry)
        elif not entry.name.startswith("server-"):  # its log
            entry.unlink()
    cloned = clone(pair.url(pair.a, repo_name, "read"), tmp_path / "c")
    assert cloned.returncode == 0, cloned.stderr
    with pair.a.api("read") as api:
        assert api.get(f"/repos/{repo_name}/archive/{sha}.tar.gz").status_code == 200
        assert api.get(f"/repos/{repo_name}/files/{sha}/dags/k.py").content == b"K = 1\n"
    again = work.commit("after", **{"dags__k.py": "K = 2\n"})
    assert work.run("push", pair.url(pair.a, repo_name), "main").returncode == 0
    with pair.b.api("read") as api:
        assert api.get(f"/repos/{repo_name}/resolve/main").json() == {"sha": again}


def test_refused_pushes_leave_no_objects(pair: Pair, repo_name, tmp_path):
    """Strict parse failure, hook refusal, lost race: nothing of the push stays."""
    pair.a.create_repo(repo_name, strict=True)
    work = Git(tmp_path / "w").init()
    work.commit("good", **{"dags__ok.py": "x = 1\n"})
    assert work.run("push", pair.url(pair.a, repo_name), "main").returncode == 0
    before = pair.packs(repo_name)
    work.commit("broken", **{"dags__bad.py": "from pinflow import DAG\ndef oops(:\n"})
    refused = work.run("push", pair.url(pair.a, repo_name), "main", check=False)
    assert refused.returncode != 0 and "strict repository" in refused.stderr
    work.commit("store ref", **{"x.py": "1\n"})
    hook = work.run("push", pair.url(pair.b, repo_name), "HEAD:refs/pinflow/mine", check=False)
    assert hook.returncode != 0
    assert pair.packs(repo_name) == before, "a refused push left its objects"
    assert fsck(storage_for(pair.db, tmp_path), repo_name) > 0


def test_many_pushes_are_consolidated(pair: Pair, repo_name, tmp_path):
    pair.a.create_repo(repo_name)
    work = Git(tmp_path / "w").init()
    shas = []
    for i in range(MAX_PACKS + 4):
        shas.append(work.commit(f"c{i}", **{f"f{i % 5}.py": f"v = {i}\n" * 50}))
        server = pair.a if i % 2 else pair.b
        assert work.run("push", pair.url(server, repo_name), "main").returncode == 0
    assert pair.packs(repo_name)["live"] <= MAX_PACKS
    storage = storage_for(pair.db, tmp_path)
    assert fsck(storage, repo_name) >= 3 * len(shas)
    cloned = clone(pair.url(pair.b, repo_name, "read"), tmp_path / "c")
    assert cloned.returncode == 0
    assert Git(tmp_path / "c").run("rev-list", "--count", "HEAD").stdout.strip() == str(len(shas))
    with pair.a.api("read") as api:
        assert api.get(f"/repos/{repo_name}/archive/{shas[0]}.tar.gz").status_code == 200


def test_kill_9_mid_push_leaves_no_partial_ref(pair: Pair, repo_name, tmp_path):
    pair.a.create_repo(repo_name)
    work = Git(tmp_path / "w").init()
    base = work.commit("base", **{"a.py": "0\n"})
    work.run("push", pair.url(pair.a, repo_name), "main")
    work.write("big.bin", os.urandom(24 * 1024 * 1024))
    big = work.commit("big")
    pushing = subprocess.Popen(
        ["git", "push", pair.url(pair.a, repo_name), "main"],
        cwd=work.path,
        env=work.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    pair.a.kill9()
    pushing.wait(60)
    storage = storage_for(pair.db, tmp_path)
    assert refs_of(storage, repo_name)[b"refs/heads/main"] in (base.encode(), big.encode())
    assert fsck(storage, repo_name) > 0
    retried = work.run("push", pair.url(pair.b, repo_name), "main", check=False)
    assert retried.returncode == 0, retried.stderr
    pair.a.start()
    cloned = clone(pair.url(pair.a, repo_name, "read"), tmp_path / "c")
    assert cloned.returncode == 0, cloned.stderr
    assert Git(tmp_path / "c").head() == big
    assert work_on_tip(tmp_path / "t", pair.url(pair.a, repo_name, "read")).head() == big


def test_clones_and_fetches_of_a_deltified_history_check_out_whole(pair: Pair, repo_name, tmp_path):
    """Packs are sent by copying stored entries (dagstore.git.packsend): offset-deltas rewritten
    as ref-deltas, deltas against objects a shallow clone lacks sent whole. git checks every
    object of what it receives."""
    pair.a.create_repo(repo_name)
    work = Git(tmp_path / "w").init()
    lines = [f"line {i} " + "x" * 60 for i in range(2000)]
    for i in range(MAX_PACKS + 3):  # consolidated on the way: one pack full of deltas
        lines[i * 7] = f"changed in {i}"
        work.commit(f"c{i}", **{"big.txt": "\n".join(lines), f"n{i}.py": f"{i}\n"})
        work.run("push", pair.url(pair.a, repo_name), "main")
    for args, dest in (((), "full"), (("--depth", "1"), "shallow")):
        cloned = clone(pair.url(pair.b, repo_name, "read"), tmp_path / dest, *args)
        assert cloned.returncode == 0, cloned.stderr
        Git(tmp_path / dest).run("fsck", "--full")
        assert (tmp_path / dest / "big.txt").read_text() == "\n".join(lines)
    lines[1] = "one more"
    tip = work.commit("more", **{"big.txt": "\n".join(lines)})
    work.run("push", pair.url(pair.a, repo_name), "main")
    # (A fetch into the shallow clone fails in dulwich's upload-pack itself, on disk too.)
    reader = Git(tmp_path / "full")
    reader.run("fetch", "-q", "origin")
    assert reader.head("origin/main") == tip
    reader.run("fsck", "--full")
