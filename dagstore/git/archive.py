"""A commit's files as a deterministic .tar.gz, built once and then served from disk.

Deterministic means the same commit always gives the same bytes on every server: entries
sorted by path, mtime = the commit's time, uid/gid 0 and no owner names, gzip header without
name or time. So the sha256 and the ETag of an archive are properties of the commit, and a
worker can verify what it downloads against the header whichever API server answered.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dulwich.objects import Blob, Commit
from dulwich.repo import Repo

from dagstore.core.names import validate_full_sha, validate_repo_name
from dagstore.git.diskcache import DiskCache
from dagstore.git.repo import get_commit

GZIP_LEVEL = 6  # level 9 costs ~3x the time for a few percent (PITFALLS.md)
_S_IFGITLINK = 0o160000


@dataclass(frozen=True)
class ArchiveFile:
    path: Path
    sha256: str
    size: int


def write_archive(repo: Repo, commit: Commit, out: io.BufferedIOBase) -> None:
    """Write `commit`'s tree as tar.gz into `out`; same file set and bytes as `git archive`."""
    entries: dict[str, tuple[int, bytes]] = {}
    dirs: set[str] = set()
    for entry in repo.object_store.iter_tree_contents(commit.tree):
        if entry.mode == _S_IFGITLINK:  # submodules have no files here, as in git archive
            continue
        path = entry.path.decode("utf-8", "surrogateescape")
        entries[path] = (entry.mode, entry.sha)
        parent = os.path.dirname(path)
        while parent and parent not in dirs:
            dirs.add(parent)
            parent = os.path.dirname(parent)
    mtime = commit.commit_time
    with (
        gzip.GzipFile(fileobj=out, mode="wb", compresslevel=GZIP_LEVEL, mtime=0, filename="") as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in sorted(dirs | entries.keys()):
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if name in dirs and name not in entries:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            mode, sha = entries[name]
            blob = repo[sha]
            assert isinstance(blob, Blob)
            data = blob.as_raw_string()
            if stat.S_ISLNK(mode):
                info.type = tarfile.SYMTYPE
                info.linkname = data.decode("utf-8", "surrogateescape")
                info.mode = 0o777
                tar.addfile(info)
            else:
                info.mode = 0o755 if mode & 0o111 else 0o644
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


class ArchiveCache:
    """Archives on disk, one file per (repo, sha); built at most once per sha per server while
    the disk cache keeps it (`dagstore.git.diskcache`: bounded, least recently used go). The
    server's processes share the folder and evict from it at any moment, so an archive is
    opened when it is found and read from that open file, never looked up and opened later."""

    def __init__(self, disk: DiskCache, memory_bytes: int = 128 * 1024**2) -> None:
        self.disk = disk
        self.root = disk.root / "archives"
        self._digests: dict[Path, ArchiveFile] = {}
        self._locks: dict[Path, threading.Lock] = {}
        self._guard = threading.Lock()
        # The most recently served archives' bytes: answering from memory is one write to the
        # socket, where a file response takes a thread hop per 64 KiB chunk (~4x slower here).
        self.memory_bytes = memory_bytes
        self._in_memory: OrderedDict[Path, bytes] = OrderedDict()
        self._in_memory_size = 0

    def load(
        self, repo_name: str, sha: str, open_repo: Callable[[], Repo]
    ) -> tuple[ArchiveFile, bytes]:
        """The archive and its bytes: from memory when read lately (least recently used go),
        else from disk, built first when it is not there (`open_repo` is called only then)."""
        hit = self.in_memory(repo_name, sha)
        if hit is not None:
            return hit
        with self.opened(repo_name, sha, open_repo) as (archive, f):
            data = f.read()
        if len(data) != archive.size:  # never: archives are written once, by rename
            raise RuntimeError(f"archive {archive.path} changed on disk")
        with self._guard:
            if archive.path not in self._in_memory and len(data) <= self.memory_bytes:
                self._in_memory[archive.path] = data
                self._in_memory_size += len(data)
                while self._in_memory_size > self.memory_bytes:
                    _, dropped = self._in_memory.popitem(last=False)
                    self._in_memory_size -= len(dropped)
        return archive, data

    def in_memory(self, repo_name: str, sha: str) -> tuple[ArchiveFile, bytes] | None:
        """The archive and its bytes when this process holds both in memory: no file system
        call, no wait (what `dagstore.api.archive_http`'s fast path may answer from)."""
        path = self.path(repo_name, sha)
        archive = self._digests.get(path)
        if archive is None:
            return None
        with self._guard:
            data = self._in_memory.get(path)
            if data is None:
                return None
            self._in_memory.move_to_end(path)
        self.disk.touch(path)  # rate-limited: keeps a hot archive from leaving the disk cache
        return archive, data

    def path(self, repo_name: str, sha: str) -> Path:
        return self.root / validate_repo_name(repo_name) / f"{validate_full_sha(sha)}.tar.gz"

    def digest(self, repo_name: str, sha: str) -> ArchiveFile | None:
        """The archive's digest and size if this process built or read it before: enough to
        answer a conditional GET, whether or not the file is still on disk (the bytes of an
        archive are a property of its commit)."""
        return self._digests.get(self.path(repo_name, sha))

    @contextmanager
    def opened(
        self, repo_name: str, sha: str, open_repo: Callable[[], Repo]
    ) -> Iterator[tuple[ArchiveFile, BinaryIO]]:
        """The archive of `sha` and its file, open: found on disk or built here (`open_repo`
        is called only then), and held from that moment, whoever evicts it meanwhile."""
        path = self.path(repo_name, sha)
        f = self.disk.open(path)
        if f is None:
            with self._lock_for(path):
                f = self.disk.open(path)  # built by another thread while we waited
                if f is None:
                    f = self._build(open_repo(), sha, path)
        with f:
            archive = self._digests.get(path)
            if archive is None:
                archive = ArchiveFile(path, _sha256_of(f), os.fstat(f.fileno()).st_size)
                self._digests[path] = archive
                f.seek(0)
            yield archive, f

    def _lock_for(self, path: Path) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(path, threading.Lock())

    def _build(self, repo: Repo, sha: str, path: Path) -> BinaryIO:
        commit = get_commit(repo, sha)
        return self.disk.write_open(path, lambda out: write_archive(repo, commit, out))


def _sha256_of(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()
