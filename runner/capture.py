"""A task's log: stdout, stderr and logging of the task, kept in memory as its head and tail.

The log holds what the task wrote and pinflow's own short header and ending lines, nothing
else: while the task runs, the root logger's level is lowered so the task's `logging.info`
reaches its log, and that would let in what pinflow's own threads log meanwhile (the
heartbeat thread's HTTP client writes one `httpx: HTTP Request: POST .../heartbeat` line per
heartbeat). Records from those threads stay out (`OwnThreads`); a library the task itself
uses logs as usual, httpx included.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from dagstore.core.logtail import DEFAULT_CAP, HeadTail

THREAD_PREFIX = "pinflow-"  # the names of the threads pinflow starts beside a task


class OwnThreads(logging.Filter):
    """Drops records logged by pinflow's own threads (named THREAD_PREFIX...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName or "").startswith(THREAD_PREFIX)


class CappedLog(io.TextIOBase):
    """A text sink that keeps the head and the tail of what the task writes, `cap` bytes in
    all, and says in the log what it cut between them (`dagstore.core.logtail`): the lines
    that explain a failure are the last ones."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = cap
        self.stream = HeadTail(cap)
        # The task writes while the heartbeat thread reads pieces to ship: a piece's offset
        # must match its bytes.
        self._lock = threading.RLock()  # reentrant: a task's signal handler may print

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "replace")
        with self._lock:
            self.stream.write(data)
        return len(text)

    def line(self, text: str) -> None:
        self.write(text.rstrip("\n") + "\n")

    @property
    def truncated(self) -> bool:
        with self._lock:
            return self.stream.cut > 0

    def getvalue(self) -> str:
        with self._lock:
            return self.stream.render().decode("utf-8", "replace")

    def piece(self, shipped: int) -> tuple[int, str]:
        """What the server, holding the log up to stream offset `shipped`, gets next (and from
        which offset: later than `shipped` when those bytes were cut here meanwhile)."""
        with self._lock:
            offset, data = self.stream.piece(shipped)
        return offset, data.decode("utf-8", "replace")

    def parts(self) -> tuple[str, str, int]:
        """The log as the finish report carries it: head, tail, bytes written in all."""
        with self._lock:
            head, tail = self.stream.text()
            return head, tail, self.stream.total


@contextmanager
def capture(log: CappedLog) -> Iterator[None]:
    """Send print, sys.stderr and the logging module to `log` while the task runs."""
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(OwnThreads())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    old_out, old_err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = log
    try:
        yield
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        root.removeHandler(handler)
        root.setLevel(old_level)
