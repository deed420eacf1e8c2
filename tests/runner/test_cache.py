"""The worker's version cache against a real store: hits, verification, outages, eviction."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from dagstore.git.unpack import DigestMismatch
from runner.cache import VersionCache
from runner.client import WorkerClient
from tests.conftest import BACKENDS, serve
from tests.support.git import Git
from tests.support.server import ServerProcess, start_server


@pytest.fixture(scope="module", params=BACKENDS)
def store_server(request, tmp_path_factory) -> Iterator[ServerProcess]:
    """Archives served from disk every time (no bytes kept in memory), so a test can tamper
    with the file the server vouches for."""
    yield from serve(request, tmp_path_factory, PINFLOW_ARCHIVE_MEMORY_MB="0")


@pytest.fixture
def version(store_server: ServerProcess, repo_name: str, tmp_path: Path) -> tuple[str, str]:
    store_server.create_repo(repo_name)
    work = Git(tmp_path / "w").init()
    work.write("dags/a.py", "A = 1\n")
    work.write("bin/x.sh", "#!/bin/sh\n", executable=True)
    sha = work.commit("v1")
    work.run("push", store_server.git_url(repo_name, store_server.tokens["push"]), "main")
    return repo_name, sha


def cache_for(server: ServerProcess, root: Path, **kwargs) -> VersionCache:
    client = WorkerClient(server.url, server.tokens["worker"], max_wait=kwargs.pop("max_wait", 60))
    return VersionCache(root, client, **kwargs)


def test_miss_then_hit(store_server, version, tmp_path):
    repo, sha = version
    cache = cache_for(store_server, tmp_path / "cache")
    first = cache.ensure(repo, sha)
    assert not first.hit
    assert (first.path / "dags/a.py").read_text() == "A = 1\n"
    assert (first.path / "bin/x.sh").stat().st_mode & 0o100
    second = cache.ensure(repo, sha)
    assert second.hit and second.path == first.path


def test_hit_needs_no_network(store_server, version, tmp_path):
    repo, sha = version
    cache_for(store_server, tmp_path / "cache").ensure(repo, sha)
    offline = VersionCache(
        tmp_path / "cache", WorkerClient("http://127.0.0.1:9", "pf_x", max_wait=0)
    )
    assert offline.ensure(repo, sha).hit


def test_tampered_archive_is_refused(store_server, version, tmp_path):
    repo, sha = version
    with store_server.api("read") as api:  # the server builds it and vouches for its digest
        assert api.get(f"/repos/{repo}/archive/{sha}.tar.gz").status_code == 200
    built = store_server.home / "cache" / "server" / "archives" / repo / f"{sha}.tar.gz"
    data = bytearray(built.read_bytes())
    data[len(data) // 2] ^= 0xFF
    built.write_bytes(bytes(data))
    cache = cache_for(store_server, tmp_path / "cache")
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        cache.ensure(repo, sha)
    assert not cache.path(repo, sha).exists()


def _ensure_in_process(args: tuple[str, str, str, str, str]) -> str:
    url, token, root, repo, sha = args
    cache = VersionCache(Path(root), WorkerClient(url, token, max_wait=30))
    return str(cache.ensure(repo, sha).path)


def test_workers_on_one_host_fetch_one_copy(store_server, version, tmp_path):
    repo, sha = version
    root = tmp_path / "shared"
    args = (store_server.url, store_server.tokens["worker"], str(root), repo, sha)
    with ProcessPoolExecutor(4) as pool:
        paths = set(pool.map(_ensure_in_process, [args] * 8))
    assert len(paths) == 1
    assert [p.name for p in (root / repo).iterdir()] == [sha]
    assert not list(root.glob(".unpack-*"))


def test_store_down_then_back_the_fetch_waits(tmp_path, repo_name):
    """No cached copy and no store: the worker waits (it never runs another version)."""
    server = start_server(tmp_path / "home")
    try:
        server.create_repo(repo_name)
        work = Git(tmp_path / "w").init()
        sha = work.commit("v", **{"a.py": "1\n"})
        work.run("push", server.git_url(repo_name, server.tokens["push"]), "main")
        server.stop()
        cache = cache_for(server, tmp_path / "cache")
        result: dict = {}
        fetcher = threading.Thread(target=lambda: result.update(f=cache.ensure(repo_name, sha)))
        fetcher.start()
        time.sleep(2)
        assert fetcher.is_alive() and not result
        server.start()
        fetcher.join(60)
        assert result["f"].path.joinpath("a.py").read_text() == "1\n"
    finally:
        server.stop()


def test_eviction_spares_versions_in_use(store_server, version, tmp_path):
    repo, _ = version
    work = Git(tmp_path / "w")
    shas = []
    for fill in "xy":
        work.write("big.bin", fill * 20_000)
        shas.append(work.commit(f"big {fill}"))
    work.run("push", store_server.git_url(repo, store_server.tokens["push"]), "main")
    old, new = shas
    cache = cache_for(store_server, tmp_path / "cache", max_bytes=30_000)
    cache.ensure(repo, old)
    with cache.using(repo, old):
        cache.ensure(repo, new)  # now over the limit, but `old` is in use
        assert cache.path(repo, old).exists()
    assert cache.evict() == [cache.path(repo, old)]  # least recently used goes first
    assert cache.path(repo, new).exists()


def test_a_version_evicted_between_ensure_and_using_is_fetched_again(
    store_server, version, tmp_path
):
    """Issue 12, finding 5: another worker's eviction deleted the version after this worker's
    ensure(); using() must notice under its lock and fetch it again, not hand out a hole."""
    repo, sha = version
    cache = cache_for(store_server, tmp_path / "cache")
    cache.ensure(repo, sha)
    other = cache_for(store_server, tmp_path / "cache", max_bytes=0)
    assert other.evict() == [cache.path(repo, sha)]
    with cache.using(repo, sha) as root:
        assert (root / "dags/a.py").read_text() == "A = 1\n"
        assert other.evict() == [], "evicted while in use"
