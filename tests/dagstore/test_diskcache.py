"""A server's disk cache: bounded, least recently used first, safe to lose."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dagstore.git.diskcache import DiskCache


def fill(size: int):
    return lambda out: out.write(b"x" * size)


def test_least_recently_used_entries_go_first(tmp_path: Path):
    cache = DiskCache(tmp_path / "c", max_bytes=3000)
    paths = [tmp_path / "c" / "p" / f"pack-{i}.pack" for i in range(3)]
    for i, path in enumerate(paths):
        cache.write(path, fill(1000))
        (path.with_suffix(".idx")).write_bytes(b"")  # an entry's files go together
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    cache._touched.clear()
    cache.touch(paths[0])  # the oldest, used just now
    cache.write(tmp_path / "c" / "a" / "x.tar.gz", fill(1000))
    assert paths[0].exists() and not paths[1].exists() and paths[2].exists()
    assert not paths[1].with_suffix(".idx").exists()


def test_the_entry_being_written_is_kept_even_if_alone_too_big(tmp_path: Path):
    cache = DiskCache(tmp_path / "c", max_bytes=10)
    target = tmp_path / "c" / "big.tar.gz"
    cache.write(target, fill(100))
    assert target.read_bytes() == b"x" * 100


def test_a_failed_write_leaves_nothing_and_a_lost_folder_is_no_error(tmp_path: Path):
    cache = DiskCache(tmp_path / "c", max_bytes=1000)

    def broken(out):
        out.write(b"half")
        raise OSError("disk full")

    target = tmp_path / "c" / "a" / "x.tar.gz"
    with pytest.raises(OSError, match="disk full"):
        cache.write(target, broken)
    assert list((tmp_path / "c").rglob("*")) == [tmp_path / "c" / "a"]
    os.rmdir(tmp_path / "c" / "a")
    os.rmdir(tmp_path / "c")  # deleted by an operator
    cache.touch(target)
    assert cache.evict() == 0
    cache.write(target, fill(10))
    assert target.exists()
