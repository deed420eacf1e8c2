"""A repo's refs as database rows: dulwich's `RefsContainer` with a conditional UPDATE as its
compare-and-swap.

Two pushes to one branch through two servers both send `UPDATE ... WHERE value = <old>`; the
database lets exactly one match (PostgreSQL re-checks the WHERE after the first commits,
SQLite has one writer), and the loser's failed swap raises `OSError`, which receive-pack
reports as git's normal `[remote rejected] (failed to write)`.

The push's packs become live in the transaction that moves a branch or tag onto them
(`Publisher`, the push's object store): a swap that fails rolls that back too, so no pack is
ever live without a ref having moved, and none a ref points at is left in quarantine.

Reads come from one snapshot of all the repo's refs, taken in one query at the first read
(a request sees one consistent set, and advertising N refs costs one query, not N) and kept
up to date with this container's own writes. `refresh()` drops it: whoever must know what a
ref is now (is the tracked tip still this commit?) asks for that; `dagstore.git.repo.ref_sha` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from dulwich.refs import SYMREF, RefsContainer
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from dagstore.core.db import Database, insert_ignoring_duplicates
from dagstore.git.models import GitRef
from dagstore.git.versions import ZERO_SHA

MAX_SYMREF_DEPTH = 5
HIDDEN_PREFIX = b"refs/pinflow/"  # the store's own refs (keep refs): never a push's


class Publisher(Protocol):
    """What makes a push's objects live when a ref moves onto them (`dagstore.git.packs`)."""

    def publish(self, session: Session) -> None:
        """In the ref's transaction, before it moves."""

    def published(self) -> None:
        """After that transaction committed."""


class _Lost(Exception):
    """A compare-and-swap that did not match: its transaction rolls back."""


class DatabaseRefsContainer(RefsContainer):
    def __init__(self, db: Database, repo_id: int, publisher: Publisher | None = None) -> None:
        super().__init__()
        self.db = db
        self.repo_id = repo_id
        self.publisher = publisher
        self._snapshot: dict[bytes, bytes] | None = None

    # -- reading --------------------------------------------------------------------------

    def refresh(self) -> None:
        """Forget the snapshot: the next read asks the database."""
        self._snapshot = None

    def _all(self) -> dict[bytes, bytes]:
        if self._snapshot is None:
            with self.db.read() as session:
                rows = session.execute(
                    select(GitRef.name, GitRef.value).where(GitRef.repo_id == self.repo_id)
                )
                self._snapshot = {name.encode(): value.encode() for name, value in rows}
        return self._snapshot

    def allkeys(self) -> set[bytes]:  # type: ignore[override]
        return set(self._all())

    def read_loose_ref(self, name: bytes) -> bytes | None:  # type: ignore[override]
        return self._all().get(name)

    def get_packed_refs(self) -> dict[bytes, bytes]:  # type: ignore[override]
        return {}

    def get_peeled(self, name: bytes) -> bytes | None:  # type: ignore[override]
        return None  # not known without reading the object: dulwich peels it itself

    def as_dict(self, base: bytes | None = None) -> dict[bytes, bytes]:  # type: ignore[override]
        """Every ref resolved, from one query (the default asks once per ref)."""
        values = self._all()
        prefix = base.rstrip(b"/") + b"/" if base else b""
        resolved = {}
        for name in values:
            if not name.startswith(prefix):
                continue
            sha = _resolve(values, name)
            if sha is not None:
                resolved[name[len(prefix) :]] = sha
        return resolved

    def get_symrefs(self) -> dict[bytes, bytes]:  # type: ignore[override]
        return {
            name: value[len(SYMREF) :]
            for name, value in self._all().items()
            if value.startswith(SYMREF)
        }

    # -- writing --------------------------------------------------------------------------

    def _target(self, name: bytes) -> bytes:
        """The ref a write to `name` changes: symbolic refs are followed."""
        names, _ = self.follow(name)
        return names[-1]

    def _written(self, name: bytes, value: bytes | None) -> None:
        if self._snapshot is not None:
            if value is None:
                self._snapshot.pop(name, None)
            else:
                self._snapshot[name] = value

    @contextmanager
    def _pointing(self, name: bytes) -> Iterator[Session]:
        """The transaction of a write that points `name` at an object: for a branch or tag
        it first makes the push's packs live (a keep ref only ever names a commit that is
        live already). Raise `_Lost` inside to roll both back."""
        publisher = None if name.startswith(HIDDEN_PREFIX) else self.publisher
        with self.db.write() as session:
            if publisher is not None:
                publisher.publish(session)
            yield session
        if publisher is not None:
            publisher.published()

    def set_if_equals(  # type: ignore[override]
        self, name: bytes, old_ref: bytes | None, new_ref: bytes, *args: object, **kwargs: object
    ) -> bool:
        self._check_ref_value(new_ref)
        target = self._target(name)
        self._check_refname(target)
        try:
            with self._pointing(target) as session:
                if old_ref is None:  # unconditional
                    done = self._upsert(session, target, new_ref)
                elif old_ref == ZERO_SHA:  # only if it does not exist yet
                    done = self._insert(session, target, new_ref)
                else:
                    done = (
                        session.execute(
                            update(GitRef)
                            .where(
                                GitRef.repo_id == self.repo_id,
                                GitRef.name == target.decode(),
                                GitRef.value == old_ref.decode(),
                            )
                            .values(value=new_ref.decode())
                        ).rowcount
                        == 1
                    )
                if not done:
                    raise _Lost
        except _Lost:
            self.refresh()  # someone else moved it: what we know is stale
            raise OSError(f"{name!r} moved while this push was applied") from None
        self._written(target, new_ref)
        return True

    def add_if_new(  # type: ignore[override]
        self, name: bytes, ref: bytes, *args: object, **kwargs: object
    ) -> bool:
        self._check_ref_value(ref)
        self._check_refname(name)
        try:
            with self._pointing(name) as session:
                if not self._insert(session, name, ref):
                    raise _Lost
        except _Lost:
            self.refresh()
            return False
        self._written(name, ref)
        return True

    def remove_if_equals(  # type: ignore[override]
        self, name: bytes, old_ref: bytes | None, *args: object, **kwargs: object
    ) -> bool:
        query = delete(GitRef).where(GitRef.repo_id == self.repo_id, GitRef.name == name.decode())
        if old_ref is not None and old_ref != ZERO_SHA:
            query = query.where(GitRef.value == old_ref.decode())
        with self.db.write() as session:
            done = session.execute(query).rowcount == 1
        if not done and old_ref is not None:
            self.refresh()
            raise OSError(f"{name!r} moved while this push was applied")
        self._written(name, None)
        return True

    def set_symbolic_ref(  # type: ignore[override]
        self, name: bytes, other: bytes, *args: object, **kwargs: object
    ) -> None:
        self._check_refname(name)
        self._check_refname(other)
        with self.db.write() as session:
            self._upsert(session, name, SYMREF + other)
        if self._snapshot is not None:
            self._snapshot[name] = SYMREF + other

    def _insert(self, session, name: bytes, value: bytes) -> bool:
        before = session.execute(
            select(GitRef.id).where(GitRef.repo_id == self.repo_id, GitRef.name == name.decode())
        ).first()
        if before is not None:
            return False
        insert_ignoring_duplicates(
            session,
            GitRef.__table__,
            [{"repo_id": self.repo_id, "name": name.decode(), "value": value.decode()}],
        )
        # ON CONFLICT DO NOTHING reports no row count on every backend: read it back.
        return (
            session.scalar(
                select(GitRef.value).where(
                    GitRef.repo_id == self.repo_id, GitRef.name == name.decode()
                )
            )
            == value.decode()
        )

    def _upsert(self, session, name: bytes, value: bytes) -> bool:
        changed = session.execute(
            update(GitRef)
            .where(GitRef.repo_id == self.repo_id, GitRef.name == name.decode())
            .values(value=value.decode())
        ).rowcount
        if not changed:
            insert_ignoring_duplicates(
                session,
                GitRef.__table__,
                [{"repo_id": self.repo_id, "name": name.decode(), "value": value.decode()}],
            )
        return True


def _resolve(values: dict[bytes, bytes], name: bytes) -> bytes | None:
    value = values.get(name)
    for _ in range(MAX_SYMREF_DEPTH):
        if value is None or not value.startswith(SYMREF):
            return value
        value = values.get(value[len(SYMREF) :])
    return None
