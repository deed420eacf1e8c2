"""Unpacking archives: the good path round-trips, every hostile archive is refused clearly."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from dulwich.repo import Repo

from dagstore.archive import write_archive
from dagstore.unpack import DigestMismatch, UnsafeArchive, unpack_archive, verify_digest
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
