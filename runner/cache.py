"""The worker's local cache of versions: one folder per (repo, sha), filled once, verified.

A hit costs no network call. A miss downloads the archive, checks its sha256 against the
header and the bytes, unpacks it into a temporary folder and renames that into place, so a
reader never sees half a version; several workers on one host fetching the same sha at once
take a per-sha file lock and end up with one correct copy. Tasks hold a shared lock on the
version they run; eviction (least recently used first, over the size limit) only takes
versions it can lock exclusively, so never one a task is using.

The READY marker, written last, holds the size of the version's files, so eviction adds up
sizes without walking every cached tree after each miss. Nothing is fsynced (that would cost
more than the whole unpack): a crash before the rename leaves no version, only a staging
folder. A crash after it, before the files reach the disk, can leave the folder with empty
files; READY is then most likely empty too, and an empty marker is not a hit (re-fetched).
A hit (`ensure` + `using` at task start) is a stat, an open, a flock and a utime: tens of µs.
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

from dagstore.core.errors import VersionUnavailable
from dagstore.core.names import validate_full_sha, validate_repo_name
from dagstore.git.unpack import unpack_archive, verify_digest
from runner.client import WorkerClient

READY = ".pinflow-ready"
USED = ".pinflow-used"
USING_ATTEMPTS = 3
_SIZE_KEY = "unpacked-bytes "  # READY's content: this, then the size of the version's files


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
        return version_path(self.root, repo, sha)

    def _lock_path(self, repo: str, sha: str) -> Path:
        return self.root / ".locks" / f"{repo}@{sha}"

    def ensure(self, repo: str, sha: str) -> Fetched:
        started = time.perf_counter()
        target = self.path(repo, sha)
        if is_ready(target):
            return Fetched(target, True, time.perf_counter() - started)
        lock_path = self._lock_path(repo, sha)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download per sha per host
            if is_ready(target):
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
            size = unpack_archive(io.BytesIO(data), staging / "v")
            (staging / "v" / READY).write_text(f"{_SIZE_KEY}{size}\n")
            shutil.rmtree(target, ignore_errors=True)  # a half-written leftover of a crash
            os.rename(staging / "v", target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @contextmanager
    def using(self, repo: str, sha: str) -> Iterator[Path]:
        """Hold the version while a task runs: eviction skips it.

        Another worker's eviction may have removed it since `ensure()`: checked again under
        the shared lock (eviction needs the exclusive one), and fetched again if gone.
        """
        target = self.path(repo, sha)
        for _ in range(USING_ATTEMPTS):
            lock = os.open(
                self._lock_path(repo, sha), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
            try:
                fcntl.flock(lock, fcntl.LOCK_SH)
                if is_ready(target):
                    (target / USED).touch()
                    yield target
                    return
            finally:
                os.close(lock)  # releases the lock
            self.ensure(repo, sha)  # takes the exclusive lock: ours is released by now
        raise VersionUnavailable(
            f"version {sha[:12]} of {repo} was evicted {USING_ATTEMPTS} times before use: "
            "the cache is too small for the versions in use"
        )

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove least recently used versions not in use until the cache fits its limit."""
        versions = [
            p
            for p in self.root.glob("*/*")
            if not p.parent.name.startswith(".")  # staging folders and locks
            and (p / READY).exists()
            and p != keep
        ]
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


def version_path(root: Path, repo: str, sha: str) -> Path:
    """Where a cache rooted at `root` keeps `repo@sha` (names checked: nothing escapes it)."""
    return root / validate_repo_name(repo) / validate_full_sha(sha)


def ready_version(root: Path, repo: str, sha: str) -> Path | None:
    """The folder of `repo@sha` if it is completely in the cache at `root`, else None."""
    target = version_path(root, repo, sha)
    return target if is_ready(target) else None


def is_ready(target: Path) -> bool:
    """A complete version: its READY marker exists and is not empty (see the docstring)."""
    try:
        return os.stat(target / READY).st_size > 0
    except (FileNotFoundError, NotADirectoryError):
        return False


def _last_used(path: Path) -> float:
    for marker in (path / USED, path / READY):
        try:
            return marker.stat().st_mtime
        except FileNotFoundError:
            continue
    return 0.0


def _size(path: Path) -> int:
    """The bytes of a version's files, from its READY marker (walked for older markers)."""
    try:
        recorded = (path / READY).read_text()
        if recorded.startswith(_SIZE_KEY):
            return int(recorded[len(_SIZE_KEY) :])
    except (OSError, ValueError):
        pass
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
