"""Whether this scheduler may judge a try lost: only on evidence it could have had.

"No heartbeat for the timeout" means the worker is gone only if heartbeats could have been
written all that time. When the database stalls (a long lock, a restart, SQLite's one writer
held), API servers cannot record heartbeats either, and the first transaction that gets
through afterwards would see every running try silent. A scheduler therefore times its own
writes: after one that stalled (took longer than a third of the timeout, or failed for want
of a database), it waits one full timeout of writes going through before it declares
anything lost. A stall shorter than that cannot fake a loss: a try heartbeats every sixth of
the timeout.

Whether it judges is logged when that changes (at start, at a stall, when judging resumes),
not at every tick: a healthy scheduler's first timeout is no news worth a line every 5 s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from dagstore.core.db import Database, database_unavailable

log = logging.getLogger("pinflow.scheduler")


class WriteHealth:
    def __init__(self, db: Database, heartbeat_timeout: float) -> None:
        self.db = db
        self.timeout = heartbeat_timeout
        self.stall_after = heartbeat_timeout / 3
        # Nothing is known of the time before this process started: count from now.
        self.last_stall = time.monotonic()
        self.judging: bool | None = None  # what was last logged

    @contextmanager
    def write(self) -> Iterator[Session]:
        """`db.write()`, timed: a stall is remembered."""
        started = time.monotonic()
        try:
            with self.db.write() as session:
                yield session
        except Exception as exc:
            if database_unavailable(exc):
                self.last_stall = time.monotonic()
            raise
        if time.monotonic() - started > self.stall_after:
            self.last_stall = time.monotonic()

    def may_judge_lost(self) -> bool:
        """True once writes have gone through without a stall for a whole timeout; logs
        when the answer changes."""
        judging = time.monotonic() - self.last_stall >= self.timeout
        if judging != self.judging:
            self._log_change(judging)
            self.judging = judging
        return judging

    def _log_change(self, judging: bool) -> None:
        if judging:
            log.info("judging tries lost: database writes went through for %g s", self.timeout)
        elif self.judging is None:
            log.info(
                "not judging tries lost for the first %g s (heartbeat timeout): what "
                "happened before this scheduler started is not known",
                self.timeout,
            )
        else:
            log.warning(
                "database writes stalled: not judging tries lost until they go through for %g s",
                self.timeout,
            )
