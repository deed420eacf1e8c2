"""A repo's git objects as packs stored in the database, read through a local cache.

Modelled on dulwich's `BucketBasedObjectStore` (its GCS store keeps one pack per upload in a
bucket): every push adds one pack, its bytes in 1 MiB chunk rows and its index in the pack's
row. A server reads a pack into its cache folder once (streamed, checked against the pack's
trailing checksum) and then serves every object from the file, exactly as from an on-disk
repository; the folder is only a cache (`dagstore.diskcache`). Consolidation
(`dagstore.repack`) keeps the number of packs per repo small.

A pushed pack starts in quarantine: visible to the push's own request (its hooks parse it),
to nobody else. `publish` makes it live just before a ref moves; `discard` deletes it when
the push moved nothing (refused, lost its race, broke off).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from dulwich.object_store import BucketBasedObjectStore, PackInputTooLarge
from dulwich.pack import (
    Pack,
    PackData,
    PackIndexer,
    extend_pack,
    iter_sha1,
    write_pack_index,
)
from sqlalchemy import delete, insert, select, update

from dagstore.db import Database, db_time
from dagstore.diskcache import DiskCache
from dagstore.gitmodels import PACK_CHUNK_BYTES, GitPack, GitPackChunk
from dagstore.packcheck import InflateLimits, copy_checked

log = logging.getLogger("pinflow.packs")
RESCAN_AFTER = 1.0  # seconds a request trusts its list of packs before asking again


class PackCache:
    """Pack and index files of every repo this server read, under one bounded folder."""

    def __init__(self, db: Database, disk: DiskCache) -> None:
        self.db = db
        self.disk = disk
        self.root = disk.root / "packs"

    def basepath(self, repo_id: int, name: str) -> Path:
        return self.root / str(repo_id) / f"pack-{name}"

    def incoming(self) -> Path:
        folder = self.root / "incoming"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def ensure(self, repo_id: int, name: str) -> Path | None:
        """The pack's base path (files `.pack`, `.idx`), fetched from the database if need be;
        None when the database no longer has it (consolidated away meanwhile)."""
        base = self.basepath(repo_id, name)
        pack, idx = base.with_suffix(".pack"), base.with_suffix(".idx")
        if pack.exists() and idx.exists():
            self.disk.touch(pack)
            return base
        base.parent.mkdir(parents=True, exist_ok=True)
        with open(base.parent / f".{name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one download per pack per host
            if pack.exists() and idx.exists():
                return base
            with self.db.read() as session:
                row = session.execute(
                    select(GitPack.id, GitPack.checksum, GitPack.index_data).where(
                        GitPack.repo_id == repo_id, GitPack.name == name
                    )
                ).one_or_none()
            if row is None:
                return None
            self.disk.write(pack, lambda out: self._download(row.id, row.checksum, out))
            self.disk.write(idx, lambda out: out.write(row.index_data))
        return base

    def _download(self, pack_id: int, checksum: str, out: BinaryIO) -> None:
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
            raise OSError(f"pack {pack_id} from the database failed its checksum")

    def adopt(self, repo_id: int, name: str, pack_file: Path, idx_file: Path) -> Path:
        """Move a pack this process wrote into the cache (no download needed later)."""
        base = self.basepath(repo_id, name)
        base.parent.mkdir(parents=True, exist_ok=True)
        os.replace(idx_file, base.with_suffix(".idx"))
        os.replace(pack_file, base.with_suffix(".pack"))
        self.disk.evict(keep={str(base)})
        return base


def store_pack(
    db: Database,
    repo_id: int,
    name: str,
    pack_file: Path,
    idx_file: Path,
    objects: int,
    checksum: str,
    state: str,
) -> int:
    """Insert a pack (streamed in chunks) and its index; returns its row id. A pack already
    stored under its name is kept as it is."""
    with db.write() as session:
        existing = session.scalar(
            select(GitPack.id).where(GitPack.repo_id == repo_id, GitPack.name == name)
        )
        if existing is not None:
            if state == "live":
                session.execute(update(GitPack).where(GitPack.id == existing).values(state="live"))
            return existing
        pack_id = session.execute(
            insert(GitPack)
            .values(
                repo_id=repo_id,
                name=name,
                state=state,
                objects=objects,
                size=pack_file.stat().st_size,
                checksum=checksum,
                index_data=idx_file.read_bytes(),
            )
            .returning(GitPack.id)
        ).scalar_one()
        with pack_file.open("rb") as f:
            for seq, chunk in enumerate(iter(lambda: f.read(PACK_CHUNK_BYTES), b"")):
                session.execute(insert(GitPackChunk).values(pack_id=pack_id, seq=seq, data=chunk))
        return pack_id


class DatabaseObjectStore(BucketBasedObjectStore):
    def __init__(self, db: Database, repo_id: int, cache: PackCache, limits: InflateLimits) -> None:
        super().__init__()
        self.db = db
        self.repo_id = repo_id
        self.cache = cache
        self.limits = limits
        self.quarantined: dict[str, int] = {}  # name → row id: this request's unpublished packs
        self.published: dict[str, int] = {}  # this request's pushed packs made live
        self.written: dict[str, int] = {}  # packs pinflow wrote itself (live at once)
        self._names: set[str] = set()
        self._names_at = float("-inf")

    # -- which packs there are --------------------------------------------------------------

    def _iter_pack_names(self) -> Iterator[str]:
        if time.monotonic() - self._names_at >= RESCAN_AFTER:
            with self.db.read() as session:
                self._names = set(
                    session.scalars(
                        select(GitPack.name).where(
                            GitPack.repo_id == self.repo_id, GitPack.state == "live"
                        )
                    )
                )
            self._names_at = time.monotonic()
        return iter(self._names | set(self.quarantined) | set(self.published) | set(self.written))

    def _update_pack_cache(self) -> list[Pack]:
        new = []
        for _ in range(3):
            names = set(self._iter_pack_names())
            vanished = False
            for name in names - set(self._pack_cache):
                base = self.cache.ensure(self.repo_id, name)
                if base is None:  # consolidated away since the list was read: read it again
                    vanished = True
                    continue
                pack = self._open(base)
                self._pack_cache[name] = pack
                new.append(pack)
            if not vanished:
                break
            self.rescan()
        for name in set(self._pack_cache) - set(self._iter_pack_names()):
            self._pack_cache.pop(name).close()
        return new

    def rescan(self) -> None:
        """Ask the database for the list of packs at the next lookup."""
        self._names_at = float("-inf")

    def cached_packs(self) -> list[tuple[str, Pack]]:
        """(name, pack) of every pack this store knows now, reading the list first."""
        self._update_pack_cache()
        return list(self._pack_cache.items())

    def _open(self, base: Path) -> Pack:
        return Pack(str(base), object_format=self.object_format, resolve_ext_ref=self.get_raw)

    def _remove_pack_by_name(self, name: str) -> None:
        with self.db.write() as session:
            session.execute(
                delete(GitPack).where(GitPack.repo_id == self.repo_id, GitPack.name == name)
            )

    # -- adding packs ---------------------------------------------------------------------

    def add_thin_pack(  # type: ignore[override]
        self,
        read_all: Callable[[int], bytes],
        read_some: Callable[[int], bytes] | None,
        progress: Callable[..., None] | None = None,
        *,
        max_input_size: int | None = None,
    ) -> Pack:
        """A pushed pack, checked on the way in (`dagstore.packcheck`), completed with the
        bases it deltas against, in quarantine."""
        if max_input_size:
            read_all, read_some = _bounded(read_all, read_some, max_input_size)
        fd, path = tempfile.mkstemp(dir=self.cache.incoming(), prefix="push-", suffix=".pack")
        try:
            with os.fdopen(fd, "w+b") as f:
                copy_checked(read_all, read_some, f, self.limits)
                f.flush()
                f.seek(0)
                with PackData(path, file=f, object_format=self.object_format) as data:
                    indexer = PackIndexer.for_pack_data(data, resolve_ext_ref=self.get_raw)
                    entries = list(indexer)
                    ext_refs = set(indexer.ext_refs())
                pack_sha, extra = extend_pack(
                    f, ext_refs, get_raw=self.get_raw, object_format=self.object_format
                )
                entries.extend(extra)
            return self._keep(Path(path), entries, pack_sha, "quarantine")
        finally:
            Path(path).unlink(missing_ok=True)

    def add_pack(self) -> tuple[BinaryIO, Callable[[], Pack | None], Callable[[], None]]:
        """For packs pinflow writes itself (consolidation, import): stored live at once."""
        fd, path = tempfile.mkstemp(dir=self.cache.incoming(), prefix="add-", suffix=".pack")
        f = os.fdopen(fd, "w+b")

        def commit() -> Pack | None:
            try:
                if f.tell() == 0:
                    return None
                f.flush()
                f.seek(0)
                with PackData(path, file=f, object_format=self.object_format) as data:
                    indexer = PackIndexer.for_pack_data(data, resolve_ext_ref=self.get_raw)
                    entries = list(indexer)
                    checksum = data.get_stored_checksum()
                f.close()
                return self._keep(Path(path), entries, checksum, "live")
            finally:
                f.close()
                Path(path).unlink(missing_ok=True)

        def abort() -> None:
            f.close()
            Path(path).unlink(missing_ok=True)

        return f, commit, abort  # type: ignore[return-value]

    def _keep(self, pack_file: Path, entries: list, pack_sha: bytes, state: str) -> Pack:
        entries.sort()
        name = iter_sha1(entry[0] for entry in entries).decode("ascii")
        idx_file = pack_file.with_suffix(".idx")
        with idx_file.open("wb") as out:
            write_pack_index(out, entries, pack_sha)
        pack_id = store_pack(
            self.db,
            self.repo_id,
            name,
            pack_file,
            idx_file,
            len(entries),
            pack_sha.hex(),
            state,
        )
        base = self.cache.adopt(self.repo_id, name, pack_file, idx_file)
        (self.quarantined if state == "quarantine" else self.written)[name] = pack_id
        pack = self._open(base)
        self._add_cached_pack(name, pack)
        return pack

    # -- quarantine -----------------------------------------------------------------------

    def publish(self) -> None:
        """This request's packs become live: a ref is about to point into them."""
        if not self.quarantined:
            return
        with self.db.write() as session:
            session.execute(
                update(GitPack)
                .where(GitPack.id.in_(list(self.quarantined.values())))
                .values(state="live")
            )
        self.published.update(self.quarantined)
        self.quarantined.clear()

    def discard(self, refs_moved: bool) -> None:
        """At the end of a push: what it brought goes if nothing points into it."""
        gone = dict(self.quarantined)
        if not refs_moved:
            gone.update(self.published)
        if gone:
            with self.db.write() as session:
                session.execute(delete(GitPack).where(GitPack.id.in_(list(gone.values()))))
            log.info("discarded %d pack(s) of a push that moved no ref", len(gone))
        self.quarantined.clear()
        if not refs_moved:
            self.published.clear()


def discard_stale_quarantine(db: Database, older_than: float = 3600.0) -> int:
    """Packs of pushes whose server died before it published or discarded them."""
    with db.write() as session:
        cutoff = db_time(session) - timedelta(seconds=older_than)
        return session.execute(
            delete(GitPack).where(GitPack.state == "quarantine", GitPack.created_at < cutoff)
        ).rowcount


def _bounded(
    read_all: Callable[[int], bytes], read_some: Callable[[int], bytes] | None, limit: int
) -> tuple[Callable[[int], bytes], Callable[[int], bytes] | None]:
    """git's receive.maxInputSize: refuse a pack stream longer than `limit` bytes."""
    seen = [0]

    def count(data: bytes) -> bytes:
        seen[0] += len(data)
        if seen[0] > limit:
            raise PackInputTooLarge(f"pack exceeds the maximum input size of {limit} bytes")
        return data

    return (
        lambda n: count(read_all(n)),
        (lambda n: count(read_some(n))) if read_some is not None else None,
    )
