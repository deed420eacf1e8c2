"""A repo's git objects as packs stored in the database, read through a local cache.

Modelled on dulwich's `BucketBasedObjectStore` (its GCS store keeps one pack per upload in a
bucket): every push adds one pack, its bytes in 1 MiB chunk rows and its index in the pack's
row. A server reads packs into its cache folder and serves every object from there, as from
an on-disk repository (`dagstore.git.packcache`). Consolidation (`dagstore.git.repack`) keeps the
number of packs per repo small.

A pushed pack starts in quarantine: visible to the push's own request (its hooks parse it),
to nobody else. It becomes live in the very transaction that moves a ref onto it (`publish`,
called by `dagstore.git.refs`): when that ref's compare-and-swap fails, the transaction rolls
back and the pack is still in quarantine. At the end of the push, `discard` deletes what
is still in quarantine.

Packs are deduplicated by name (the sha1 of their object ids), so a push can find its pack
stored already by another push, and then shares that row (PITFALLS.md, "Deduplicated rows
are shared rows"). Hence:
- a request deletes only rows it inserted itself, and only while they are in quarantine (a
  conditional DELETE): a row it found, or one another push has made live since, is never
  its to delete, whatever the two requests' timing;
- publishing checks that each row it makes live is still there: a shared quarantine row can
  go (its owner's push was refused, or the sweep of stale quarantine took it), and the push
  then stores its own copy again, in the same transaction, before its ref moves.
A row is named by id and name together: SQLite may give a deleted row's id to the next row.
A live row is deleted only by consolidation, after its objects are in the consolidated pack.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from dulwich.object_store import BucketBasedObjectStore, PackInputTooLarge
from dulwich.pack import (
    Pack,
    PackData,
    PackIndexer,
    UnresolvedDeltas,
    extend_pack,
    iter_sha1,
    write_pack_index,
)
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from dagstore.core.db import Database, db_time, upsert_insert
from dagstore.git.models import PACK_CHUNK_BYTES, GitPack, GitPackChunk
from dagstore.git.packcache import HeldPack, PackCache, PackGone
from dagstore.git.packcheck import InflateLimits, copy_checked

log = logging.getLogger("pinflow.packs")
RESCAN_AFTER = 1.0  # seconds a request trusts its list of packs before asking again
STORE_ATTEMPTS = 5  # a row found, then deleted before it was read: insert again, so often


@dataclass(frozen=True)
class PackBytes:
    """What a pack's row is made of: its `.pack` file (open, read with `os.pread`), its
    index, and figures."""

    file: BinaryIO
    size: int
    index_data: bytes
    objects: int
    checksum: str


@dataclass(frozen=True)
class PackRow:
    """A pack's row as `store_pack` left it: `created` when that call inserted it (only then
    is it the caller's to delete), `live` when it was or became live."""

    id: int
    created: bool
    live: bool


def store_pack(session: Session, repo_id: int, name: str, source: PackBytes, state: str) -> PackRow:
    """The repo's row for pack `name`: inserted with its chunks, or the row another request
    stored already (shared, never the caller's to delete). Storing `live` makes a found
    quarantine row live, locked first, so that its owner's discard no longer matches it."""
    table = GitPack.__table__
    for _ in range(STORE_ATTEMPTS):
        pack_id = session.scalar(
            upsert_insert(session, table)
            .values(
                repo_id=repo_id,
                name=name,
                state=state,
                objects=source.objects,
                size=source.size,
                checksum=source.checksum,
                index_data=source.index_data,
            )
            .on_conflict_do_nothing()
            .returning(table.c.id)
        )
        if pack_id is not None:
            fd = source.file.fileno()
            for seq, offset in enumerate(range(0, source.size, PACK_CHUNK_BYTES)):
                chunk = os.pread(fd, PACK_CHUNK_BYTES, offset)
                session.execute(insert(GitPackChunk).values(pack_id=pack_id, seq=seq, data=chunk))
            return PackRow(pack_id, created=True, live=state == "live")
        found = session.execute(
            select(GitPack.id, GitPack.state)
            .where(GitPack.repo_id == repo_id, GitPack.name == name)
            .with_for_update()
        ).one_or_none()
        if found is not None:
            if state == "live" and found.state != "live":
                session.execute(update(GitPack).where(GitPack.id == found.id).values(state="live"))
            return PackRow(found.id, created=False, live=state == "live" or found.state == "live")
        # Deleted between the two statements (PostgreSQL, READ COMMITTED): insert it again.
    raise OSError(f"pack {name} could not be stored: another request kept deleting it")


@dataclass(frozen=True)
class Brought:
    """A pack the push brought and no ref points into yet: its row, and its bytes, held until
    the push ends in case the row must be stored again."""

    row: PackRow
    source: PackBytes


class DatabaseObjectStore(BucketBasedObjectStore):
    def __init__(self, db: Database, repo_id: int, cache: PackCache, limits: InflateLimits) -> None:
        super().__init__()
        self.db = db
        self.repo_id = repo_id
        self.cache = cache
        self.limits = limits
        self.brought: dict[str, Brought] = {}  # this push's packs no ref points into yet
        self.landed: set[str] = set()  # this push's packs that are live
        self.written: dict[str, int] = {}  # packs pinflow wrote itself (live at once): row id
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
        return iter(self._names | set(self.brought) | self.landed | set(self.written))

    def _update_pack_cache(self) -> list[Pack]:
        new: list[Pack] = []
        for _ in range(3):
            vanished = False
            for name in set(self._iter_pack_names()) - set(self._pack_cache):
                try:
                    files = self.cache.open(self.repo_id, name)
                except PackGone:  # consolidated away since the list was read: read it again
                    vanished = True
                    continue
                pack = HeldPack(*files, self.object_format, self.get_raw)
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

    def cached_packs(self) -> list[tuple[str, HeldPack]]:
        """(name, pack) of every pack this store knows now, reading the list first."""
        self._update_pack_cache()
        return list(self._pack_cache.items())  # type: ignore[arg-type]

    def _remove_pack_by_name(self, name: str) -> None:
        with self.db.write() as session:
            session.execute(
                delete(GitPack).where(GitPack.repo_id == self.repo_id, GitPack.name == name)
            )

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._let_go()

    # -- adding packs ---------------------------------------------------------------------

    def add_thin_pack(  # type: ignore[override]
        self,
        read_all: Callable[[int], bytes],
        read_some: Callable[[int], bytes] | None,
        progress: Callable[..., None] | None = None,
        *,
        max_input_size: int | None = None,
    ) -> Pack:
        """A pushed pack, checked on the way in (`dagstore.git.packcheck`), completed with the
        bases it deltas against, in quarantine."""
        if max_input_size:
            read_all, read_some = _bounded(read_all, read_some, max_input_size)
        fd, path = tempfile.mkstemp(dir=self.cache.incoming(), prefix=".tmp-push-", suffix=".pack")
        try:
            with os.fdopen(fd, "w+b") as f:
                copy_checked(read_all, read_some, f, self.limits)
                f.flush()
                f.seek(0)
                with PackData(path, file=f, object_format=self.object_format) as data:
                    indexer = PackIndexer.for_pack_data(data, resolve_ext_ref=self.get_raw)
                    try:
                        entries = list(indexer)
                    except UnresolvedDeltas as exc:  # dulwich would answer with a hang-up
                        raise OSError(
                            f"the pack has deltas against {len(exc.shas)} object(s) the store "
                            "does not have"
                        ) from None
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
        fd, path = tempfile.mkstemp(dir=self.cache.incoming(), prefix=".tmp-add-", suffix=".pack")
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
        """Store a pack this request built in `incoming`, move it into the cache, open it."""
        entries.sort()
        name = iter_sha1(entry[0] for entry in entries).decode("ascii")
        index = io.BytesIO()
        write_pack_index(index, entries, pack_sha)
        idx_file = pack_file.with_suffix(".idx")
        idx_file.write_bytes(index.getvalue())
        with ExitStack() as on_error:
            on_error.callback(idx_file.unlink, missing_ok=True)
            # Opened before they move into the cache, where another process may evict them:
            # the pack's data and index, and the bytes to store (again, if need be).
            data, idx, raw = (
                on_error.enter_context(open(f, "rb")) for f in (pack_file, idx_file, pack_file)
            )
            source = PackBytes(
                raw, pack_file.stat().st_size, index.getvalue(), len(entries), pack_sha.hex()
            )
            with self.db.write() as session:
                row = store_pack(session, self.repo_id, name, source, state)
            self.cache.adopt(self.repo_id, name, pack_file, idx_file)
            pack = HeldPack(data, idx, self.object_format, self.get_raw)
            on_error.pop_all()
        if state == "quarantine" and not row.live:
            self.brought[name] = Brought(row, source)
        else:
            source.file.close()
            if state == "quarantine":  # found live: another push's, already pointed into
                self.landed.add(name)
            else:
                self.written[name] = row.id
        self._add_cached_pack(name, pack)
        return pack

    # -- quarantine -----------------------------------------------------------------------

    def publish(self, session: Session) -> None:
        """In the transaction that is about to move a ref onto this push's objects: the
        packs it brought become live. A shared row that went meanwhile is stored again from
        this request's own copy. Lasts only if that transaction commits (`published`)."""
        for name, brought in sorted(self.brought.items(), key=lambda item: item[1].row.id):
            made_live = session.execute(
                update(GitPack)
                .where(
                    GitPack.id == brought.row.id,
                    GitPack.name == name,
                    GitPack.repo_id == self.repo_id,
                )
                .values(state="live")
            ).rowcount
            if not made_live:
                log.warning("pack %s was deleted before its push published it: stored again", name)
                store_pack(session, self.repo_id, name, brought.source, "live")

    def published(self) -> None:
        """The transaction that moved a ref committed: this push's packs are live for good."""
        self.landed.update(self.brought)
        self._let_go()

    def discard(self) -> None:
        """At the end of a push: the rows it inserted that no ref moved onto (still in
        quarantine) go. A row it found is not its own, and a row of its own that another
        push has made live meanwhile no longer matches the conditional DELETE."""
        mine = [(b.row.id, name) for name, b in self.brought.items() if b.row.created]
        try:
            if mine:
                with self.db.write() as session:
                    for pack_id, name in mine:
                        session.execute(
                            delete(GitPack).where(
                                GitPack.id == pack_id,
                                GitPack.name == name,
                                GitPack.state == "quarantine",
                            )
                        )
                log.info("discarded %d pack(s) of a push that moved no ref onto them", len(mine))
        finally:
            self._let_go()

    def _let_go(self) -> None:
        for brought in self.brought.values():
            brought.source.file.close()
        self.brought.clear()


def discard_stale_quarantine(db: Database, older_than: float = 3600.0) -> int:
    """Packs of pushes whose server died before it published or discarded them. A push that
    found such a row and is about to publish it stores it again (`publish`)."""
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
