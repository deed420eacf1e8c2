"""An installation from before issue 13: repositories on disk, moved into the database by
`pinflow db upgrade`, verified, once."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dulwich.repo import Repo as DiskRepo

from dagstore.core.db import Database
from dagstore.core.models import Repo
from pinflow.migrate import upgrade
from tests.support.git import Git, clone
from tests.support.server import PINFLOW, ServerProcess, make_tokens, pinflow_env
from tests.support.store import fsck, refs_of, storage_for


def old_install(home: Path, database_url: str, work: Git) -> tuple[dict[bytes, bytes], str]:
    """A repo row and its bare repository on disk, as pinflow kept them before: two branches,
    a tag, and a keep ref to a commit no branch reaches any more."""
    db = Database(database_url)
    try:
        upgrade(db)
        with db.write() as session:
            session.add(Repo(name="old", track="main", strict=False))
    finally:
        db.dispose()
    bare = home / "repos" / "old.git"
    Git(bare).run("init", "-q", "--bare", "-b", "main")
    work.commit("one", **{"dags__a.py": "A = 1\n"})
    orphan = work.commit("two", **{"dags__a.py": "A = 2\n"})
    work.run("push", "-q", str(bare), "main")
    work.run("reset", "-q", "--hard", "HEAD~1")
    work.commit("rewritten", **{"dags__a.py": "A = 3\n"})
    work.run("push", "-q", "--force", str(bare), "main")
    work.run("tag", "v1")
    work.run("checkout", "-q", "-b", "feature")
    work.commit("feature", **{"f.py": "F = 1\n"})
    work.run("push", "-q", str(bare), "feature", "v1")
    Git(bare).run("update-ref", f"refs/pinflow/keep/{orphan}", orphan)
    with DiskRepo(str(bare)) as repo:
        refs = {name: repo.refs.read_ref(name) for name in sorted(repo.refs.allkeys())}
    return refs, orphan


def db_upgrade(home: Path, database_url: str) -> str:
    result = subprocess.run(
        [PINFLOW, "db", "upgrade"],
        env=pinflow_env(home, database_url),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_db_upgrade_moves_disk_repositories_in_once(database_url, tmp_path):
    home = tmp_path / "home"
    disk_refs, orphan = old_install(home, database_url, Git(tmp_path / "w").init())
    first = db_upgrade(home, database_url)
    assert "repository old: moved into the database" in first
    assert "can be deleted" in first
    assert "moved into the database" not in db_upgrade(home, database_url), "not idempotent"
    db = Database(database_url)
    try:
        storage = storage_for(db, tmp_path / "reader")
        assert refs_of(storage, "old") == disk_refs  # HEAD, branches, tag, keep ref
        assert fsck(storage, "old") >= 9
    finally:
        db.dispose()
    assert (home / "repos" / "old.git").is_dir(), "the old folder is the user's to delete"
    # A server with a fresh home serves it all, the orphan included.
    server = ServerProcess(home=tmp_path / "fresh", database_url=database_url)
    server.home.mkdir()
    server.tokens = make_tokens(database_url)
    server.start()
    try:
        cloned = clone(server.git_url("old", server.tokens["read"]), tmp_path / "c")
        assert cloned.returncode == 0, cloned.stderr
        assert (tmp_path / "c" / "dags" / "a.py").read_text() == "A = 3\n"
        with server.api("read") as api:
            assert api.get(f"/repos/old/archive/{orphan}.tar.gz").status_code == 200
            refs = api.get("/repos/old/refs").json()["refs"]
            assert set(refs) == {"refs/heads/main", "refs/heads/feature", "refs/tags/v1"}
            shas = {v["sha"] for v in api.get("/repos/old/versions").json()["items"]}
            assert len(shas) == 3  # every commit a branch or tag reaches, recorded at start
    finally:
        server.stop()
