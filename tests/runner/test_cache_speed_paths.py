"""The version cache's fast paths, without a server: a hit is local and cheap, a miss's
eviction reads sizes from the READY markers, and the shortcuts keep the cache correct."""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import statistics
import tarfile
import time
from pathlib import Path

import pytest

from dagstore.git.unpack import UnsafeArchive
from runner.cache import READY, USED, VersionCache

REPO = "demo"
SHAS = [f"{i:040x}" for i in range(1, 5)]


def _archive(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


class FakeClient:
    """Serves one archive for every sha and counts the calls (a hit must make none)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.calls = 0

    def archive(self, repo: str, sha: str) -> tuple[bytes, str]:
        self.calls += 1
        return self.data, hashlib.sha256(self.data).hexdigest()


FILES = {"dags/a.py": b"A = 1\n", "data/big.bin": b"x" * 10_000}


@pytest.fixture
def client() -> FakeClient:
    return FakeClient(_archive(FILES))


def _cache(tmp_path: Path, client: FakeClient, **kwargs) -> VersionCache:
    return VersionCache(tmp_path / "cache", client, **kwargs)  # type: ignore[arg-type]


def test_a_hit_is_local_and_holds_the_version(tmp_path, client):
    cache = _cache(tmp_path, client)
    assert not cache.ensure(REPO, SHAS[0]).hit
    for _ in range(20):
        assert cache.ensure(REPO, SHAS[0]).hit
        with (
            cache.using(REPO, SHAS[0]) as root,
            cache._lock_path(REPO, SHAS[0]).open("a") as other,  # what eviction opens
            pytest.raises(BlockingIOError),
        ):
            assert (root / USED).exists()
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert client.calls == 1
    with cache._lock_path(REPO, SHAS[0]).open("a") as other:  # released after the task
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_warm_task_start_is_well_under_a_millisecond(tmp_path, client):
    """Issue 8's goal is <= 1 ms; it takes tens of µs, so this holds on a loaded machine."""
    cache = _cache(tmp_path, client)
    cache.ensure(REPO, SHAS[0])
    samples = []
    for _ in range(300):
        started = time.perf_counter()
        cache.ensure(REPO, SHAS[0])
        with cache.using(REPO, SHAS[0]):
            samples.append(time.perf_counter() - started)
    assert statistics.median(samples) < 0.001


def test_an_empty_ready_marker_is_fetched_again(tmp_path, client):
    """What a crash after the rename but before writeback can leave: empty files."""
    cache = _cache(tmp_path, client)
    root = cache.ensure(REPO, SHAS[0]).path
    (root / READY).write_bytes(b"")
    (root / "dags/a.py").write_bytes(b"")
    fetched = cache.ensure(REPO, SHAS[0])
    assert not fetched.hit and client.calls == 2
    assert (root / "dags/a.py").read_bytes() == b"A = 1\n"
    assert (root / READY).read_text() == f"unpacked-bytes {sum(map(len, FILES.values()))}\n"


def test_eviction_reads_sizes_from_ready_markers(tmp_path, client, monkeypatch):
    size = sum(map(len, FILES.values()))
    cache = _cache(tmp_path, client, max_bytes=2 * size)
    cache.ensure(REPO, SHAS[0])
    cache.ensure(REPO, SHAS[1])

    def no_walk(*args, **kwargs):
        raise AssertionError("eviction walked a version's files")

    monkeypatch.setattr(Path, "rglob", no_walk)
    cache.ensure(REPO, SHAS[2])  # over the limit: the least recently used goes
    assert not cache.path(REPO, SHAS[0]).exists()
    assert cache.path(REPO, SHAS[1]).exists() and cache.path(REPO, SHAS[2]).exists()


def test_older_ready_markers_are_sized_by_walking(tmp_path, client):
    size = sum(map(len, FILES.values()))
    cache = _cache(tmp_path, client, max_bytes=2 * size)
    old = cache.ensure(REPO, SHAS[0]).path
    (old / READY).write_text("1234")  # the archive's length, as markers used to hold
    cache.ensure(REPO, SHAS[1])
    cache.ensure(REPO, SHAS[2])
    assert not old.exists()


def test_eviction_leaves_staging_folders_alone(tmp_path, client):
    """Another worker's unpack, between writing READY and its rename, is not a version."""
    cache = _cache(tmp_path, client, max_bytes=0)
    staging = tmp_path / "cache/.unpack-abc/v"
    staging.mkdir(parents=True)
    (staging / READY).write_text("unpacked-bytes 5\n")
    cache.ensure(REPO, SHAS[0])
    assert cache.evict() == [cache.path(REPO, SHAS[0])]
    assert (staging / READY).exists()


def test_a_hostile_archive_leaves_nothing(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil.py")
        tar.addfile(info, io.BytesIO(b""))
    cache = _cache(tmp_path, FakeClient(raw.getvalue()))
    with pytest.raises(UnsafeArchive, match="leaves the version folder"):
        cache.ensure(REPO, SHAS[0])
    assert not cache.path(REPO, SHAS[0]).exists()
    assert not list((tmp_path / "cache").glob(".unpack-*"))
    assert not (tmp_path / "cache" / REPO / "evil.py").exists()
    assert os.listdir(tmp_path) == ["cache"]
