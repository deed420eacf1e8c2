"""Unpacking archives: the good path round-trips, every hostile archive is refused clearly."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import tarfile
from pathlib import Path

import pytest
from dulwich.repo import Repo

from dagstore.git.archive import write_archive
from dagstore.git.unpack import (
    MAX_DEPTH,
    DigestMismatch,
    UnsafeArchive,
    unpack_archive,
    verify_digest,
)
from tests.support.git import Git


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw.seek(0)
    return raw


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    return _special(name, tarfile.DIRTYPE)


def _sparse(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    return info, None


def test_roundtrip_of_a_commit(tmp_path: Path):
    work = Git(tmp_path / "w").init()
    work.write("dags/a.py", "a = 1\n")
    work.write("run.sh", "#!/bin/sh\n", executable=True)
    (work.path / "link.py").symlink_to("dags/a.py")
    sha = work.commit("c")
    with Repo(str(work.path)) as repo:
        buffer = io.BytesIO()
        write_archive(repo, repo[sha.encode()], buffer)
    buffer.seek(0)
    unpack_archive(buffer, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "dags/a.py").read_text() == "a = 1\n"
    assert (out / "run.sh").stat().st_mode & 0o100
    assert not (out / "dags/a.py").stat().st_mode & 0o100
    assert (out / "link.py").is_symlink() and (out / "link.py").read_text() == "a = 1\n"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([_file("../evil.py")], "leaves the version folder"),
        ([_file("a/../../evil.py")], "leaves the version folder"),
        ([_file("/etc/evil")], "absolute"),
        ([_special("l", tarfile.SYMTYPE, "/etc/passwd")], "absolute path"),
        ([_special("a/l", tarfile.SYMTYPE, "../../outside")], "points outside"),
        ([_special("d", tarfile.SYMTYPE, "sub"), _file("d/x.py")], "written through a link"),
        ([_file("a.py"), _special("h", tarfile.LNKTYPE, "a.py")], "hard link"),
        ([_special("dev", tarfile.CHRTYPE)], "device"),
        ([_special("fifo", tarfile.FIFOTYPE)], "device or special"),
        ([_file("a.py"), _file("a.py")], "duplicate"),
        ([_special("d", tarfile.SYMTYPE, "sub"), _dir("d")], "duplicate"),
        ([_special("l", tarfile.SYMTYPE, "")], "malformed link"),
        # each link alone stays inside; `e` through `a` is the folder's parent
        ([_special("a", tarfile.SYMTYPE, "."), _special("e", tarfile.SYMTYPE, "a/..")], "outside"),
        ([_special("e", tarfile.SYMTYPE, "a/.."), _special("a", tarfile.SYMTYPE, ".")], "outside"),
        ([_sparse("s")], "sparse file"),
    ],
)
def test_hostile_archives_are_refused(tmp_path: Path, members, message):
    with pytest.raises(UnsafeArchive, match=message):
        unpack_archive(_tar(*members), tmp_path / "out")
    assert not (tmp_path / "evil.py").exists()


def test_size_cap(tmp_path: Path):
    archive = _tar(_file("a.bin", b"0" * 2000), _file("b.bin", b"0" * 2000))
    with pytest.raises(UnsafeArchive, match="more than 3000 bytes"):
        unpack_archive(archive, tmp_path / "out", max_bytes=3000)


def test_member_cap(tmp_path: Path):
    archive = _tar(*[_file(f"f{i}") for i in range(5)])
    with pytest.raises(UnsafeArchive, match="more than 3 members"):
        unpack_archive(archive, tmp_path / "out", max_members=3)


def test_truncated_and_garbage(tmp_path: Path):
    data = _tar(_file("a.py", b"x" * 100_000)).getvalue()
    with pytest.raises(UnsafeArchive, match="corrupt or truncated"):
        unpack_archive(io.BytesIO(data[: len(data) // 2]), tmp_path / "t")
    with pytest.raises(UnsafeArchive, match="corrupt or truncated"):
        unpack_archive(io.BytesIO(b"not a gzip at all"), tmp_path / "g")
    with pytest.raises(UnsafeArchive):
        unpack_archive(io.BytesIO(gzip.compress(b"not a tar" * 100)), tmp_path / "n")


def test_verify_digest():
    data = b"archive bytes"
    verify_digest(data, hashlib.sha256(data).hexdigest())
    with pytest.raises(DigestMismatch, match="digest mismatch"):
        verify_digest(data + b"!", hashlib.sha256(data).hexdigest())


def _tree_of(root: Path) -> dict[str, tuple[bool, bytes | str]]:
    """Every path under `root`: (is a link, its bytes or link target)."""
    found: dict[str, tuple[bool, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[name] = (True, os.readlink(path))
        elif path.is_file():
            found[name] = (False, path.read_bytes() + bytes([path.stat().st_mode & 0o100]))
        else:
            found[name] = (False, b"dir")
    return found


def test_large_and_many_files_match_tarfile(tmp_path: Path):
    """Files across the inflate window's edges, sizes on and off the 512-byte blocks, empty
    files, deep folders, long (pax) names and links give the same tree as tarfile's own."""
    rng = random.Random(8)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    sizes = [0, 1, 511, 512, 513, 1024, 3 * 1024 * 1024, 1024 * 1024 + 7, 2 * 1024 * 1024]
    sizes += [rng.randrange(0, 40_000) for _ in range(300)]
    for i, size in enumerate(sizes):
        name = f"d{i % 7}/sub{i % 3}/{'n' * (i % 5) * 40}f{i}.bin"  # some names > 100 chars
        info, data = _file(name, rng.randbytes(size))  # random: the gzip cannot shrink it
        info.mode = 0o755 if i % 4 == 0 else 0o644
        members.append((info, data))
    members.append(_special("d0/link", tarfile.SYMTYPE, "sub0"))
    members.append(_special("top", tarfile.SYMTYPE, "d1/sub1/f1.bin"))
    archive = _tar(*members).getvalue()
    unpack_archive(io.BytesIO(archive), tmp_path / "ours")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path / "theirs", filter="data")
    assert _tree_of(tmp_path / "ours") == _tree_of(tmp_path / "theirs")
    assert len(_tree_of(tmp_path / "ours")) > len(sizes)


def test_unpack_from_a_file_on_disk(tmp_path: Path):
    """The parser hands an open file, not bytes: read in chunks, same result."""
    path = tmp_path / "a.tar.gz"
    path.write_bytes(_tar(_file("a/b.py", b"b = 1\n"), _file("c.bin", os.urandom(600_000))).read())
    with path.open("rb") as f:
        unpack_archive(f, tmp_path / "out")
    assert (tmp_path / "out/a/b.py").read_bytes() == b"b = 1\n"
    assert (tmp_path / "out/c.bin").stat().st_size == 600_000


def test_truncated_inside_a_large_file(tmp_path: Path):
    data = _tar(_file("big.bin", os.urandom(3 * 1024 * 1024))).getvalue()
    with pytest.raises(UnsafeArchive, match="corrupt or truncated"):
        unpack_archive(io.BytesIO(data[: len(data) // 2]), tmp_path / "out")


def test_oversized_pax_header_is_refused(tmp_path: Path):
    info, data = _file("a.py")
    info.pax_headers = {"comment": "x" * 200_000}
    with pytest.raises(UnsafeArchive, match="header larger than"):
        unpack_archive(_tar((info, data)), tmp_path / "out")


def test_a_bomb_is_refused_before_it_is_written(tmp_path: Path):
    """Highly compressible contents over the cap: refused by the header's size, nothing big
    is written or held in memory."""
    archive = _tar(_file("ok.py", b"x"), _file("zeros.bin", bytes(64 * 1024 * 1024)))
    assert len(archive.getvalue()) < 200_000
    with pytest.raises(UnsafeArchive, match="more than 1000000 bytes"):
        unpack_archive(archive, tmp_path / "out", max_bytes=1_000_000)
    assert not (tmp_path / "out/zeros.bin").exists()


def test_deep_folders(tmp_path: Path):
    """Deep is fine up to MAX_DEPTH; deeper is refused before anything deep is made, since
    every later `shutil.rmtree` of the tree (cache, parser, pytest) would hit the recursion
    limit."""
    name = "d/" * (MAX_DEPTH - 1) + "f.py"
    unpack_archive(_tar(_file(name, b"deep")), tmp_path / "ok")
    assert (tmp_path / "ok" / name).read_bytes() == b"deep"
    with pytest.raises(UnsafeArchive, match=f"deeper than {MAX_DEPTH} folders"):
        unpack_archive(_tar(_file("d/" * 1100 + "f.py")), tmp_path / "deep")
    assert not (tmp_path / "deep/d").exists()
