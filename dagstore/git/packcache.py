"""Packs on a server's disk: read from the database into the cache folder once, held while used.

A server reads a pack's chunks into its cache folder once (streamed, checked against the
pack's trailing checksum) and then serves every object from the file, as from an on-disk
repository. The folder is shared by the server's processes and bounded (`dagstore.git.diskcache`),
so any process may evict any pack at any moment: a request opens a pack's two files before
it reads anything and holds them until it closes the pack (`HeldPack`); an eviction after
that takes nothing from it. A pack found on disk and gone before it was opened is read from
the database again.

Another server may consolidate a pack away (`dagstore.git.repack`) while this one reads it from
the database: the download then says so (`PackGone`), and the reader lists the packs again
and finds the consolidated pack, instead of failing a clone.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from dulwich.object_format import ObjectFormat
from dulwich.pack import Pack, PackData, load_pack_index_file
from sqlalchemy import select

from dagstore.core.db import Database
from dagstore.git.diskcache import DiskCache
from dagstore.git.models import GitPack, GitPackChunk


class PackGone(Exception):
    """The database no longer has a pack this server wanted to read (a consolidation replaced
    it with another): list the packs again."""

    def __init__(self, name: str) -> None:
        super().__init__(f"pack {name} was consolidated away: list the packs again")
        self.name = name


class HeldPack(Pack):
    """A dulwich pack over files this request holds open. dulwich opens a pack's files by
    name when it first needs them; this one reads the files it was given, held from the
    moment they were found: `file` (the `.pack`, which `dagstore.git.packsend` reads with
    `os.pread`) and the index. As in dulwich, the index and data are parsed only when first
    used (a lookup need not read every pack's index). Closing the pack closes both files."""

    def __init__(
        self,
        pack_file: BinaryIO,
        idx_file: BinaryIO,
        object_format: ObjectFormat,
        resolve_ext_ref: Callable | None = None,
    ) -> None:
        super().__init__(
            str(pack_file.name).removesuffix(".pack"),
            object_format=object_format,
            resolve_ext_ref=resolve_ext_ref,
        )
        self.file = pack_file
        self._idx_file = idx_file
        self._data_load = lambda: PackData(self._data_path, object_format, file=pack_file)
        self._idx_load = lambda: load_pack_index_file(self._idx_path, idx_file, object_format)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.file.close()
            self._idx_file.close()


class PackCache:
    """Pack and index files of every repo this server read, under one bounded folder."""

    def __init__(self, db: Database, disk: DiskCache) -> None:
        self.db = db
        self.disk = disk
        self.root = disk.root / "packs"

    def basepath(self, repo_id: int, name: str) -> Path:
        return self.root / str(repo_id) / f"pack-{name}"

    def incoming(self) -> Path:
        """Where a pack being received or written is built (names starting with `.tmp-`,
        which no eviction touches)."""
        folder = self.root / "incoming"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def open(self, repo_id: int, name: str) -> tuple[BinaryIO, BinaryIO]:
        """The pack's `.pack` and `.idx`, open for reading (the caller's to close); read from
        the database when they are not on disk. Raises PackGone when the database no longer
        has the pack."""
        base = self.basepath(repo_id, name)
        found = self._open_pair(base)
        if found is not None:
            return found
        base.parent.mkdir(parents=True, exist_ok=True)
        with open(base.parent / f".{name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download per pack per host
            found = self._open_pair(base)
            if found is not None:
                return found
            with self.db.read() as session:
                row = session.execute(
                    select(GitPack.id, GitPack.checksum, GitPack.index_data).where(
                        GitPack.repo_id == repo_id, GitPack.name == name
                    )
                ).one_or_none()
            if row is None:
                raise PackGone(name)
            pack = self.disk.write_open(
                base.with_suffix(".pack"),
                lambda out: self._download(row.id, name, row.checksum, out),
            )
            try:
                idx = self.disk.write_open(
                    base.with_suffix(".idx"), lambda out: out.write(row.index_data)
                )
            except BaseException:
                pack.close()
                raise
            return pack, idx

    def _open_pair(self, base: Path) -> tuple[BinaryIO, BinaryIO] | None:
        pack = self.disk.open(base.with_suffix(".pack"))
        if pack is None:
            return None
        idx = self.disk.open(base.with_suffix(".idx"))
        if idx is None:  # evicted between the two: fetch both again
            pack.close()
            return None
        return pack, idx

    def _download(self, pack_id: int, name: str, checksum: str, out: BinaryIO) -> None:
        """The pack's chunks, each in a read transaction of its own (a large pack never
        holds one open for long). A pack deleted meanwhile ends early and fails its
        checksum: if its row is gone that is a consolidation, not damage."""
        digest = hashlib.sha1()
        tail = b""
        seq = 0
        while True:
            with self.db.read() as session:
                data = session.scalar(
                    select(GitPackChunk.data).where(
                        GitPackChunk.pack_id == pack_id, GitPackChunk.seq == seq
                    )
                )
            if data is None:
                break
            out.write(data)
            joined = tail + bytes(data)
            digest.update(joined[:-20])
            tail = joined[-20:]
            seq += 1
        if digest.hexdigest() != checksum or tail.hex() != checksum:
            if not self._exists(pack_id, name):
                raise PackGone(name)
            raise OSError(f"pack {name} (row {pack_id}) from the database failed its checksum")

    def _exists(self, pack_id: int, name: str) -> bool:
        """Whether the row is still this pack (an id alone may be reused: SQLite's rowid)."""
        with self.db.read() as session:
            return (
                session.scalar(
                    select(GitPack.id).where(GitPack.id == pack_id, GitPack.name == name)
                )
                is not None
            )

    def adopt(self, repo_id: int, name: str, pack_file: Path, idx_file: Path) -> None:
        """Move a pack this process wrote into the cache (no download needed later); whoever
        holds it open keeps reading it whatever happens to the cache."""
        base = self.basepath(repo_id, name)
        base.parent.mkdir(parents=True, exist_ok=True)
        os.replace(idx_file, base.with_suffix(".idx"))
        os.replace(pack_file, base.with_suffix(".pack"))
        self.disk.evict(keep={str(base)})
