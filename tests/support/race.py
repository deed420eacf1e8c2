"""Two transactions interleaved on purpose: the first holds its changes uncommitted while the
second gets as far as it can. The way to show a write skew, or its fix, without luck."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from dagstore.db import Database


def waits_for_lock(db: Database, pid: int) -> bool:
    with db.engine.connect() as conn:
        kind = conn.execute(
            text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        ).scalar()
    return kind == "Lock"


def race(db: Database, first: Callable[[Session], Any], second: Callable[[Session], Any]) -> None:
    """Run `first` in a transaction and keep it open while `second` runs in another one, until
    `second` waits for a lock (PostgreSQL), half a second (SQLite: it waits for the one writer
    anyway) or its end; then commit `first` and let `second` finish. Raises what `second`
    raised."""
    errors: list[BaseException] = []
    pid: list[int] = []

    def run_second() -> None:
        try:
            with db.write() as session:
                if not db.is_sqlite:
                    pid.append(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
                second(session)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    with db.write() as session:
        first(session)
        thread = threading.Thread(target=run_second)
        thread.start()
        deadline = time.monotonic() + 10
        while thread.is_alive() and time.monotonic() < deadline:
            if db.is_sqlite and time.monotonic() > deadline - 9.5:
                break  # SQLite: the second transaction waits for the one writer
            if pid and waits_for_lock(db, pid[0]):
                break
            time.sleep(0.01)
    thread.join(30)
    assert not thread.is_alive(), "the second transaction never ended"
    if errors:
        raise errors[0]
