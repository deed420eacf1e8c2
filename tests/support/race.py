"""Two transactions interleaved on purpose: the first holds its changes uncommitted while the
second gets as far as it can. The way to show a write skew, a deadlock, or their fix, without
luck."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.orm import Session

from dagstore.core.db import Database

WAIT = 10.0  # seconds a step may take to reach its lock wait (or its end)


def waits_for_lock(db: Database, pid: int) -> bool:
    with db.engine.connect() as conn:
        kind = conn.execute(
            text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ).scalar()
    return kind == "Lock"


class Side:
    """A transaction run in a thread of its own; `pid` is its PostgreSQL backend."""

    def __init__(self, db: Database, work: Callable[[Session], Any]) -> None:
        self.db, self.work = db, work
        self.errors: list[BaseException] = []
        self.result: Any = None
        self.pid: list[int] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            with self.db.write() as session:
                if not self.db.is_sqlite:
                    self.pid.append(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
                self.result = self.work(session)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.errors.append(exc)

    def start(self) -> Side:
        self.thread.start()
        return self

    def blocked_or_done(self) -> None:
        """Return once this side waits for a lock (PostgreSQL), has waited half a second
        (SQLite: it queues for the one writer) or has ended."""
        started = time.monotonic()
        while self.thread.is_alive() and time.monotonic() < started + WAIT:
            if self.db.is_sqlite and time.monotonic() > started + 0.5:
                return
            if self.pid and waits_for_lock(self.db, self.pid[0]):
                return
            time.sleep(0.01)

    def join(self) -> Any:
        """Wait for the end; raise what the transaction raised, else return its result."""
        self.thread.join(30)
        assert not self.thread.is_alive(), "the transaction never ended"
        if self.errors:
            raise self.errors[0]
        return self.result


def race(db: Database, first: Callable[[Session], Any], second: Callable[[Session], Any]) -> Any:
    """Run `first` in a transaction and keep it open while `second` runs in another one, until
    `second` waits for a lock (PostgreSQL), half a second (SQLite: it waits for the one writer
    anyway) or its end; then commit `first` and let `second` finish. Raises what either
    raised; returns what `second` returned."""
    other = Side(db, second)
    try:
        with db.write() as session:
            first(session)
            other.start().blocked_or_done()
    finally:
        if other.thread.ident is not None:
            other.thread.join(30)
    return other.join()


class Pause:
    """Where a paused transaction stands: `reached` once it stopped, `resume` to let it go on."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.resume = threading.Event()


@contextmanager
def paused_after(
    session: Session, pattern: str, count: int = 1, pause: Pause | None = None
) -> Iterator[Pause]:
    """Stop `session` right after its `count`-th statement matching `pattern` (a regular
    expression, case-insensitive) until `resume` is set: the middle of a function that runs
    several statements, as another transaction sees it."""
    connection = session.connection()
    pause = pause or Pause()
    seen = 0
    wanted = re.compile(pattern, re.IGNORECASE)

    def after(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        nonlocal seen
        if wanted.search(statement):
            seen += 1
            if seen == count:
                pause.reached.set()
                assert pause.resume.wait(WAIT * 3), "never resumed"

    event.listen(connection, "after_cursor_execute", after)
    try:
        yield pause
    finally:
        pause.resume.set()
        event.remove(connection, "after_cursor_execute", after)


def interleave(
    db: Database,
    first: Callable[[Session], Any],
    second: Callable[[Session], Any],
    after: str,
    count: int = 1,
) -> tuple[Any, Any]:
    """Run `first` until right after its `count`-th statement matching `after` (see
    `paused_after`), then `second` until it waits for a lock or ends, then let `first` go on:
    two transactions that each hold what the other wants next deadlock here every time.
    Returns both results; raises what either raised (the first's error first)."""
    pause = Pause()

    def paused_first(session: Session) -> Any:
        with paused_after(session, after, count, pause):
            return first(session)

    one = Side(db, paused_first).start()
    other = Side(db, second)
    try:
        started = time.monotonic()
        while not pause.reached.wait(0.01) and one.thread.is_alive():
            assert time.monotonic() < started + WAIT, f"the first never ran {after!r}"
        assert pause.reached.is_set(), f"the first ended before it ran {after!r}"
        other.start().blocked_or_done()
    finally:
        pause.resume.set()
        one.thread.join(30)
        if other.thread.ident is not None:
            other.thread.join(30)
    return one.join(), other.join()
