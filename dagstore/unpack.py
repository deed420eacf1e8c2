"""Unpacking a version's archive safely: the one code path for parsing and for workers.

An archive comes over the network, so it is treated as hostile whatever its digest says:
absolute paths, `..`, links that leave the version folder, files written through a link,
hard links, devices and FIFOs are refused, and so is an archive that unpacks to more than
a size cap. Each refusal names the member and the reason.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tarfile
from pathlib import Path
from typing import BinaryIO

from dagstore.errors import BadRequest

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_MEMBERS = 100_000


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
    return clean


def _check_link(name: str, target: str) -> None:
    if target.startswith("/"):
        raise UnsafeArchive(f"archive member {name!r}: link to absolute path {target!r}")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchive(f"archive member {name!r}: link {target!r} points outside the version")


def unpack_archive(
    fileobj: BinaryIO,
    dest: Path,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> None:
    """Unpack a .tar.gz stream into `dest` (an empty folder the caller owns)."""
    dest.mkdir(parents=True, exist_ok=True)
    links: set[str] = set()
    total = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|gz") as tar:
            for count, member in enumerate(tar, start=1):
                if member.type in (tarfile.XGLTYPE, tarfile.XHDTYPE):
                    continue
                if count > max_members:
                    raise UnsafeArchive(f"archive has more than {max_members} members")
                name = _safe_name(member.name)
                parent = posixpath.dirname(name)
                while parent:
                    if parent in links:
                        raise UnsafeArchive(f"archive member {name!r}: written through a link")
                    parent = posixpath.dirname(parent)
                target = dest / name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.issym():
                    _check_link(name, member.linkname)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(member.linkname, target)
                    links.add(name)
                elif member.isreg():
                    total += member.size
                    if total > max_bytes:
                        raise UnsafeArchive(f"archive unpacks to more than {max_bytes} bytes")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                    mode = 0o755 if member.mode & 0o100 else 0o644
                    with os.fdopen(os.open(target, flags, mode), "wb") as out:
                        while chunk := source.read(1 << 20):
                            out.write(chunk)
                else:
                    kind = "hard link" if member.islnk() else "device or special file"
                    raise UnsafeArchive(f"archive member {name!r}: {kind} not allowed")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileExistsError):
            raise UnsafeArchive(f"archive has a duplicate member: {exc.filename}") from None
        raise UnsafeArchive(f"archive is corrupt or truncated: {exc}") from None
