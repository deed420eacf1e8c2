"""The worker's local cache of versions: one folder per (repo, sha), filled once, verified.

A hit costs no network call. A miss downloads the archive, checks its sha256 against the
header and the bytes, unpacks it into a temporary folder and renames that into place, so a
reader never sees half a version; several workers on one host fetching the same sha at once
take a per-sha file lock and end up with one correct copy. Tasks hold a shared lock on the
version they run; eviction (least recently used first, over the size limit) only takes
versions it can lock exclusively, so never one a task is using.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dagstore.gitrepo import validate_full_sha, validate_repo_name
from dagstore.unpack import unpack_archive, verify_digest
from runner.client import WorkerClient

READY = ".pinflow-ready"
USED = ".pinflow-used"


@dataclass(frozen=True)
class Fetched:
    path: Path
    hit: bool
    seconds: float


class VersionCache:
    def __init__(self, root: Path, client: WorkerClient, max_bytes: int = 5 * 1024**3) -> None:
        self.root = root
        self.client = client
        self.max_bytes = max_bytes

    def path(self, repo: str, sha: str) -> Path:
        return self.root / validate_repo_name(repo) / validate_full_sha(sha)

    def _lock_path(self, repo: str, sha: str) -> Path:
        return self.root / ".locks" / f"{repo}@{sha}"

    def ensure(self, repo: str, sha: str) -> Fetched:
        started = time.perf_counter()
        target = self.path(repo, sha)
        if (target / READY).exists():
            return Fetched(target, True, time.perf_counter() - started)
        lock_path = self._lock_path(repo, sha)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download per sha per host
            if (target / READY).exists():
                return Fetched(target, True, time.perf_counter() - started)
            data, digest = self.client.archive(repo, sha)
            verify_digest(data, digest)
            self._install(data, target)
        self.evict(keep=target)
        return Fetched(target, False, time.perf_counter() - started)

    def _install(self, data: bytes, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self.root))
        try:
            unpack_archive(io.BytesIO(data), staging / "v")
            (staging / "v" / READY).write_text(str(len(data)))
            shutil.rmtree(target, ignore_errors=True)  # a half-written leftover of a crash
            os.rename(staging / "v", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @contextmanager
    def using(self, repo: str, sha: str) -> Iterator[Path]:
        """Hold the version while a task runs: eviction skips it."""
        target = self.path(repo, sha)
        lock_path = self._lock_path(repo, sha)
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            (target / USED).touch()
            yield target

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used versions not in use until the cache fits its limit."""
        versions = [p for p in self.root.glob("*/*") if (p / READY).exists() and p != keep]
        sizes = {p: _size(p) for p in versions}
        total = sum(sizes.values()) + (_size(keep) if keep else 0)
        removed = []
        for version in sorted(versions, key=_last_used):
            if total <= self.max_bytes:
                break
            lock_path = self._lock_path(version.parent.name, version.name)
            with lock_path.open("a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a task is running it
                (version / READY).unlink(missing_ok=True)
                shutil.rmtree(version, ignore_errors=True)
            total -= sizes[version]
            removed.append(version)
        return removed


def _last_used(path: Path) -> float:
    for marker in (path / USED, path / READY):
        try:
            return marker.stat().st_mtime
        except FileNotFoundError:
            continue
    return 0.0


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
