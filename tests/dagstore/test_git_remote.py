"""The real git client against a real `pinflow server` (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dagstore.core.db import Database
from dagstore.git.models import GitPack
from tests.support.git import Git, clone, race_pushes, work_on_tip
from tests.support.server import ServerProcess, start_server


@pytest.fixture
def work(tmp_path: Path) -> Git:
    return Git(tmp_path / "work").init()


def push(work: Git, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return work.run("push", url, *args, check=False)


def test_push_clone_fetch_roundtrip(store_server: ServerProcess, work: Git, repo_name, tmp_path):
    store_server.create_repo(repo_name)
    token = store_server.tokens["push"]
    first = work.commit("first", **{"dags__etl.py": "x = 1\n"})
    result = push(work, store_server.git_url(repo_name, token), "main")
    assert result.returncode == 0, result.stderr
    assert "pinflow: recorded 1 new version(s)" in result.stderr

    reader = store_server.tokens["read"]
    cloned = clone(store_server.git_url(repo_name, reader), tmp_path / "clone")
    assert cloned.returncode == 0, cloned.stderr
    assert (tmp_path / "clone" / "dags" / "etl.py").read_text() == "x = 1\n"

    second = work.commit("second", **{"dags__etl.py": "x = 2\n"})
    assert push(work, store_server.git_url(repo_name, token), "main").returncode == 0
    other = Git(tmp_path / "clone")
    other.run("fetch", "-q", "origin")
    assert other.head("origin/main") == second
    assert other.run("rev-parse", "origin/main~1").stdout.strip() == first


def test_clone_checks_out_the_tracked_branch(store_server, work, repo_name, tmp_path):
    """Repo.init_bare points HEAD at master; the store points it at the tracked branch."""
    store_server.create_repo(repo_name, track="develop")
    work.run("checkout", "-q", "-b", "develop")
    work.commit("on develop", **{"a.py": "a = 1\n"})
    token = store_server.tokens["push"]
    assert push(work, store_server.git_url(repo_name, token), "develop").returncode == 0
    cloned = clone(store_server.git_url(repo_name, token), tmp_path / "c")
    assert cloned.returncode == 0, cloned.stderr
    assert (tmp_path / "c" / "a.py").exists()
    assert Git(tmp_path / "c").run("branch", "--show-current").stdout.strip() == "develop"


@pytest.mark.parametrize(
    ("scope", "action", "allowed"),
    [
        (None, "clone", False),
        ("read", "clone", True),
        ("push", "clone", True),
        ("admin", "clone", True),
        ("trigger", "clone", False),
        ("worker", "clone", True),
        ("revoked", "clone", False),
        ("bogus", "clone", False),
        (None, "push", False),
        ("read", "push", False),
        ("trigger", "push", False),
        ("worker", "push", False),
        ("push", "push", True),
        ("admin", "push", True),
        ("revoked", "push", False),
    ],
)
def test_auth_matrix(store_server, tmp_path, repo_name, scope, action, allowed):
    store_server.create_repo(repo_name)
    seed = Git(tmp_path / "seed").init()
    seed.commit("seed", **{"a.py": "1\n"})
    assert (
        push(seed, store_server.git_url(repo_name, store_server.tokens["admin"]), "main").returncode
        == 0
    )
    token = {None: None, "bogus": "pf_not_a_real_token"}.get(
        scope, store_server.tokens.get(scope or "")
    )
    url = store_server.git_url(repo_name, token)
    if action == "clone":
        result = clone(url, tmp_path / "c")
    else:
        seed.commit("more", **{"b.py": "2\n"})
        result = push(seed, url, "main")
    assert (result.returncode == 0) == allowed, result.stderr
    if not allowed and scope in ("read", "trigger", "worker"):
        assert "403" in result.stderr or "does not allow" in result.stderr


def test_push_to_unknown_repo_says_so(store_server, work):
    work.commit("x", **{"a.py": "1\n"})
    result = push(work, store_server.git_url("nosuchrepo", store_server.tokens["push"]), "main")
    assert result.returncode != 0
    assert "repository 'nosuchrepo' does not exist" in result.stderr


def test_non_fast_forward_refused_force_keeps_old_version(store_server, work, repo_name, tmp_path):
    store_server.create_repo(repo_name)
    url = store_server.git_url(repo_name, store_server.tokens["push"])
    work.commit("base", **{"a.py": "base\n"})
    old = work.commit("old", **{"a.py": "old\n"})
    assert push(work, url, "main").returncode == 0
    work.run("reset", "-q", "--hard", "HEAD~1")
    new = work.commit("rewritten", **{"a.py": "new\n"})

    refused = push(work, url, "main")
    assert refused.returncode != 0
    assert "rejected" in refused.stderr and "non-fast-forward" in refused.stderr

    forced = push(work, url, "--force", "main")
    assert forced.returncode == 0, forced.stderr
    assert _fetch_sha_and_read(store_server, repo_name, old, tmp_path / "f1") == "old\n"
    assert _fetch_sha_and_read(store_server, repo_name, new, tmp_path / "f2") == "new\n"
    with store_server.api("read") as api:
        assert api.get(f"/repos/{repo_name}/files/{old}/a.py").content == b"old\n"
        refs = api.get(f"/repos/{repo_name}/refs").json()["refs"]
    assert refs == {"refs/heads/main": new}, "the store's keep refs are not user refs"


def test_branch_deletion_keeps_its_commits(store_server, work, repo_name, tmp_path):
    store_server.create_repo(repo_name)
    url = store_server.git_url(repo_name, store_server.tokens["push"])
    work.commit("base", **{"a.py": "base\n"})
    assert push(work, url, "main").returncode == 0
    work.run("checkout", "-q", "-b", "feature")
    feature = work.commit("feature work", **{"a.py": "feature\n"})
    assert push(work, url, "feature").returncode == 0
    deleted = push(work, url, "--delete", "feature")
    assert deleted.returncode == 0, deleted.stderr
    assert _fetch_sha_and_read(store_server, repo_name, feature, tmp_path / "f") == "feature\n"
    with store_server.api("read") as api:
        assert "refs/heads/feature" not in api.get(f"/repos/{repo_name}/refs").json()["refs"]
        archive = api.get(f"/repos/{repo_name}/archive/{feature}.tar.gz")
    assert archive.status_code == 200


def test_pushing_store_refs_is_refused(store_server, work, repo_name):
    store_server.create_repo(repo_name)
    sha = work.commit("x", **{"a.py": "1\n"})
    url = store_server.git_url(repo_name, store_server.tokens["push"])
    result = push(work, url, f"HEAD:refs/pinflow/keep/{sha}")
    assert result.returncode != 0
    assert "reserved" in result.stderr


def _fetch_sha_and_read(server, repo, sha, dest: Path) -> str:
    """`git fetch <sha>` by a fresh client, then read a.py at that sha."""
    g = Git(dest).init()
    g.run("fetch", "-q", server.git_url(repo, server.tokens["read"]), sha)
    return g.run("show", f"{sha}:a.py").stdout


def test_concurrent_pushes_one_wins_none_lies(store_server, repo_name, tmp_path):
    """dulwich reports a lost compare-and-swap as success unless the store refuses it."""
    store_server.create_repo(repo_name)
    url = store_server.git_url(repo_name, store_server.tokens["push"])
    base = Git(tmp_path / "base").init()
    base.commit("base", **{"a.py": "0\n"})
    assert push(base, url, "main").returncode == 0
    rounds, clients = 5, 4
    for round_no in range(rounds):
        works = []
        for i in range(clients):
            g = work_on_tip(tmp_path / f"r{round_no}c{i}", url)
            g.commit(f"round {round_no} client {i}", **{f"c{i}.py": f"{round_no}\n"})
            works.append(g)
        results = race_pushes(works, url)
        winners = [sha for sha, r in results if r.returncode == 0]
        with store_server.api("read") as api:
            tip = api.get(f"/repos/{repo_name}/refs").json()["refs"]["refs/heads/main"]
        assert len(winners) == 1, [r.stderr for _, r in results]
        assert tip == winners[0]
    check = Git(tmp_path / "fsck").init()
    check.run("fetch", "-q", url, "main")
    assert check.run("fsck", "--full").returncode == 0


def test_large_push_is_chunked_and_lands(store_server, work, repo_name, tmp_path):
    """Pushes over 1 MiB arrive chunked; uvicorn already de-chunked them (PITFALLS.md)."""
    store_server.create_repo(repo_name)
    work.write("blob.bin", os.urandom(3 * 1024 * 1024))
    sha = work.commit("big")
    result = push(work, store_server.git_url(repo_name, store_server.tokens["push"]), "main")
    assert result.returncode == 0, result.stderr
    cloned = clone(store_server.git_url(repo_name, store_server.tokens["read"]), tmp_path / "c")
    assert cloned.returncode == 0
    assert (tmp_path / "c" / "blob.bin").read_bytes() == (work.path / "blob.bin").read_bytes()
    assert Git(tmp_path / "c").head() == sha


def test_parallel_fetches_and_archives(store_server, work, repo_name, tmp_path):
    """One Repo shared across threads breaks on pack-cache eviction; each request opens its own."""
    store_server.create_repo(repo_name)
    url = store_server.git_url(repo_name, store_server.tokens["push"])
    shas = []
    for i in range(15):
        work.write(f"f{i}.py", f"v = {i}\n" * 200)
        shas.append(work.commit(f"c{i}"))
        if i % 5 == 4:
            assert push(work, url, "main").returncode == 0
    errors: list[str] = []

    def fetch(i: int) -> None:
        dest = tmp_path / f"p{i}"
        r = clone(store_server.git_url(repo_name, store_server.tokens["read"]), dest)
        if r.returncode != 0:
            errors.append(r.stderr)

    def archive(sha: str) -> None:
        with store_server.api("read") as api:
            r = api.get(f"/repos/{repo_name}/archive/{sha}.tar.gz")
            if r.status_code != 200:
                errors.append(r.text)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(6)]
    threads += [threading.Thread(target=archive, args=(s,)) for s in shas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert "Traceback" not in store_server.server_log()


def test_push_size_limit(tmp_path, repo_name):
    """A push over PINFLOW_MAX_PUSH_BYTES is refused with a message the git client shows."""
    server = start_server(tmp_path / "home", PINFLOW_MAX_PUSH_BYTES="1048576")
    try:
        server.create_repo(repo_name)
        work = Git(tmp_path / "w").init()
        work.write("blob.bin", os.urandom(3 * 1024 * 1024))
        work.commit("too big")
        result = work.run(
            "push", server.git_url(repo_name, server.tokens["push"]), "main", check=False
        )
        assert result.returncode != 0
        assert "larger than the store's limit of 1.0 MiB" in result.stderr
        with server.api("read") as api:
            assert api.get(f"/repos/{repo_name}/refs").json()["refs"] == {}
        db = Database(server.database_url)
        try:
            with db.read() as session:
                assert session.scalar(select(func.count()).select_from(GitPack)) == 0
        finally:
            db.dispose()
        small = Git(tmp_path / "s").init()
        small.commit("small", **{"a.py": "1\n"})
        ok = small.run(
            "push", server.git_url(repo_name, server.tokens["push"]), "main", check=False
        )
        assert ok.returncode == 0, ok.stderr
    finally:
        server.stop()
