"""One stretch of failures of a backing service (Redis, the database), as a process rides it out.

Every pinflow process that loses Redis or the database says so once when the outage starts
and once when it ends (with how long it lasted), not once per retry, and waits a capped,
growing delay between tries (issue 26). Shared by the worker, the scheduler and the enqueuer.
"""

from __future__ import annotations

import logging
import time


class Outage:
    def __init__(
        self, service: str, log: logging.Logger, first: float = 0.5, cap: float = 10.0
    ) -> None:
        self.service, self.log = service, log
        self.first, self.cap = first, cap
        self.since: float | None = None
        self.delay = first

    def failed(self, what: str, exc: BaseException) -> float:
        """A failure; returns how long to wait before trying again."""
        if self.since is None:
            self.since = time.monotonic()
            self.delay = self.first
            self.log.warning(
                "%s unavailable while %s (%s: %s); carrying on, retrying with backoff up to "
                "%.0f s",
                self.service,
                what,
                type(exc).__name__,
                str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                self.cap,
            )
        else:
            self.log.debug("%s still unavailable while %s: %s", self.service, what, exc)
        delay = self.delay
        self.delay = min(self.delay * 2, self.cap)
        return delay

    def ended(self) -> None:
        """A success: the outage, if there was one, is over."""
        if self.since is not None:
            self.log.warning(
                "%s is back after %.1f s", self.service, time.monotonic() - self.since
            )
            self.since = None
            self.delay = self.first

    @property
    def ongoing(self) -> bool:
        return self.since is not None
