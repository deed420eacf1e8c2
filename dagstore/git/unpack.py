"""Unpacking a version's archive safely: the one code path for parsing and for workers.

An archive comes over the network, so it is treated as hostile whatever its digest says:
absolute paths, `..`, links that leave the version folder (also through other links), files
written through a link, hard links, devices, FIFOs and sparse files are refused, and so is an
archive that unpacks to more than a size cap or a member cap, or nests folders deeper than
`MAX_DEPTH` (deleting such a tree would exhaust the recursion of `shutil.rmtree`, which the
cache and the parser use). Each refusal names the member and the reason.

It is also on the critical path of a cold task start, so it does little besides the
syscalls a file needs (open, write, close): tarfile parses the headers (its own, well-tested
parser) from a forward-only view of the decompressed stream, inflated a window at a time so
memory stays bounded whatever the archive holds; file contents go from that window to
`os.write` without copies; every folder is made once, relative to one descriptor of `dest`.
There is no fsync: a version becomes visible only when its finished folder is renamed into
place (runner/cache.py).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

from dagstore.core.errors import BadRequest

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_MEMBERS = 100_000

_INPUT_CHUNK = 256 * 1024  # compressed bytes read from the source at a time
_WINDOW = 1024 * 1024  # decompressed bytes produced at a time
_KEEP = tarfile.BLOCKSIZE  # history kept behind the read position: tarfile seeks back 1 byte
_MAX_HEADER = 64 * 1024  # largest single read tarfile may ask for (pax and long-name headers)
MAX_DEPTH = 256  # folders deep: shutil.rmtree recurses once per level, later, on every copy


class UnsafeArchive(BadRequest):
    """An archive that would write outside its folder, or is too large to unpack."""


class DigestMismatch(BadRequest):
    """The bytes received are not the archive the server vouched for."""


def verify_digest(data: bytes, expected_sha256: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256.lower():
        raise DigestMismatch(
            f"archive digest mismatch: expected sha256 {expected_sha256}, got {actual}"
        )


def _safe_name(name: str) -> str:
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise UnsafeArchive(f"archive member {name!r}: absolute or malformed path")
    clean = posixpath.normpath(name)
    if clean == ".." or clean.startswith("../") or ".." in name.split("/"):
        raise UnsafeArchive(f"archive member {name!r}: path leaves the version folder")
    if clean.count("/") >= MAX_DEPTH:
        raise UnsafeArchive(f"archive member {name[:200]!r}...: deeper than {MAX_DEPTH} folders")
    return clean


def _check_link(name: str, target: str) -> None:
    if not target or "\x00" in target:
        raise UnsafeArchive(f"archive member {name!r}: malformed link target {target!r}")
    if target.startswith("/"):
        raise UnsafeArchive(f"archive member {name!r}: link to absolute path {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchive(f"archive member {name!r}: link {target!r} points outside the version")


class _Inflated:
    """The decompressed bytes of a gzip stream as a forward-only file for `tarfile` "r:".

    Only a window of the stream is in memory: tarfile reads headers with `read`, skips with
    `seek` (forward, or back by at most `_KEEP` bytes), and file contents leave through
    `copy_to` as memoryviews of the window.
    """

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._inflater = zlib.decompressobj(31)  # gzip framing only, not zlib or raw deflate
        self._buf = b""
        self._start = 0  # stream offset of self._buf[0]
        self._at = 0  # read position, an index into self._buf
        self._done = False

    def _more(self) -> bool:
        """Append the next window of decompressed bytes; False at the end of the stream."""
        while not self._done:
            pending = self._inflater.unconsumed_tail
            if not pending:
                pending = self._source.read(_INPUT_CHUNK)
                if not pending:
                    raise UnsafeArchive("archive is corrupt or truncated: gzip stream ends early")
            try:
                out = self._inflater.decompress(pending, _WINDOW)
            except zlib.error as exc:
                raise UnsafeArchive(f"archive is corrupt or truncated: {exc}") from None
            self._done = self._inflater.eof  # bytes after the gzip member are ignored
            if out:
                drop = max(0, self._at - _KEEP)
                self._buf = self._buf[drop:] + out
                self._start += drop
                self._at -= drop
                return True
        return False

    def tell(self) -> int:
        return self._start + self._at

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self.tell()
        elif whence != os.SEEK_SET:
            raise OSError("archive stream can only seek from the start or the current position")
        if offset < self._start:
            raise OSError("archive stream cannot seek that far back")
        while offset > self._start + len(self._buf):  # skipping: drop what is passed over
            self._at = len(self._buf)
            if not self._more():
                break
        self._at = min(offset - self._start, len(self._buf))
        return self.tell()

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > _MAX_HEADER:
            raise UnsafeArchive(f"archive has a header larger than {_MAX_HEADER} bytes")
        while len(self._buf) - self._at < size and self._more():
            pass
        data = self._buf[self._at : self._at + size]
        self._at += len(data)
        return data

    def copy_to(self, fd: int, size: int) -> None:
        """Write the next `size` bytes of the stream to `fd`."""
        while size:
            if self._at == len(self._buf) and not self._more():
                raise UnsafeArchive("archive is corrupt or truncated: a file's data is cut short")
            written = os.write(fd, memoryview(self._buf)[self._at : self._at + size])
            self._at += written
            size -= written


class _Tree:
    """Creates a version's folders, files and links under `dest`, through one descriptor."""

    def __init__(self, dest: Path) -> None:
        self.root = str(dest)
        self.fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
        self.dirs = {"", "."}  # folders made (or found) so far, relative to dest
        self.links: dict[str, str] = {}  # link name -> target

    def close(self) -> None:
        os.close(self.fd)

    def check_parents(self, name: str) -> None:
        if not self.links:
            return
        parent = posixpath.dirname(name)
        while parent:
            if parent in self.links:
                raise UnsafeArchive(f"archive member {name!r}: written through a link")
            parent = posixpath.dirname(parent)

    def mkdir(self, name: str) -> None:
        """Make folder `name` and any missing parents (all of them checked by the caller)."""
        missing = []
        while name not in self.dirs:
            missing.append(name)
            name = posixpath.dirname(name)
        for folder in reversed(missing):
            try:
                os.mkdir(folder, 0o777, dir_fd=self.fd)
            except FileExistsError:
                if folder in self.links or not _is_real_dir(folder, self.fd):
                    raise UnsafeArchive(f"archive has a duplicate member: {folder}") from None
            self.dirs.add(folder)

    def parent_of(self, name: str) -> None:
        parent = posixpath.dirname(name)
        if parent not in self.dirs:
            self.mkdir(parent)

    def file(self, name: str, executable: bool, data: _Inflated, size: int) -> None:
        self.parent_of(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o755 if executable else 0o644, dir_fd=self.fd)
        try:
            data.copy_to(fd, size)
        finally:
            os.close(fd)

    def symlink(self, name: str, target: str) -> None:
        _check_link(name, target)
        self.parent_of(name)
        os.symlink(target, name, dir_fd=self.fd)
        self.links[name] = target

    def check_links(self) -> None:
        """Each link checked alone stays inside; chained through other links it may not."""
        root = os.path.realpath(self.root)
        for name, target in self.links.items():
            resolved = os.path.realpath(os.path.join(root, name))
            if resolved != root and not resolved.startswith(root + os.sep):
                raise UnsafeArchive(
                    f"archive member {name!r}: link {target!r} points outside the version "
                    "through another link"
                )


def _is_real_dir(name: str, dir_fd: int) -> bool:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode & 0o170000 == 0o040000


def unpack_archive(
    fileobj: BinaryIO,
    dest: Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> int:
    """Unpack a .tar.gz stream into `dest` (an empty folder the caller owns).

    Returns the bytes of file contents written. On a refusal `dest` may hold part of the
    archive (never anything outside it): the caller deletes it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    tree = _Tree(dest)
    total = 0
    try:
        data = _Inflated(fileobj)
        with tarfile.TarFile(fileobj=data, mode="r") as tar:  # type: ignore[arg-type]
            for count, member in enumerate(tar, start=1):
                if member.type in (tarfile.XGLTYPE, tarfile.XHDTYPE):
                    continue
                if count > max_members:
                    raise UnsafeArchive(f"archive has more than {max_members} members")
                name = _safe_name(member.name)
                tree.check_parents(name)
                if member.isdir():
                    tree.mkdir(name)
                elif member.issym():
                    tree.symlink(name, member.linkname)
                elif member.isreg() and member.sparse is None:
                    total += member.size
                    if total > max_bytes:
                        raise UnsafeArchive(f"archive unpacks to more than {max_bytes} bytes")
                    tree.file(name, bool(member.mode & 0o100), data, member.size)
                else:
                    kind = (
                        "hard link"
                        if member.islnk()
                        else "sparse file"
                        if member.isreg()
                        else "device or special file"
                    )
                    raise UnsafeArchive(f"archive member {name!r}: {kind} not allowed")
        tree.check_links()
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileExistsError):
            raise UnsafeArchive(f"archive has a duplicate member: {exc.filename}") from None
        raise UnsafeArchive(f"archive is corrupt or truncated: {exc}") from None
    finally:
        tree.close()
    return total
