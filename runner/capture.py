"""A task's log: stdout, stderr and logging of the task, kept in memory up to a size cap.

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
from collections.abc import Iterator
from contextlib import contextmanager

TRUNCATED = "\n[pinflow: log truncated at {cap} bytes]\n"
THREAD_PREFIX = "pinflow-"  # the names of the threads pinflow starts beside a task


class OwnThreads(logging.Filter):
    """Drops records logged by pinflow's own threads (named THREAD_PREFIX...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.threadName or "").startswith(THREAD_PREFIX)


class CappedLog(io.TextIOBase):
    """A text sink that keeps the first `cap` bytes and notes what it dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._parts: list[str] = []
        self._size = 0
        self.truncated = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._size < self.cap:
            room = self.cap - self._size
            piece = text if len(text.encode("utf-8", "replace")) <= room else text[:room]
            self._parts.append(piece)
            self._size += len(piece.encode("utf-8", "replace"))
            self.truncated = self.truncated or piece is not text
        else:
            self.truncated = True
        return len(text)

    def line(self, text: str) -> None:
        self.write(text.rstrip("\n") + "\n")

    def getvalue(self) -> str:
        value = "".join(self._parts)
        return value + TRUNCATED.format(cap=self.cap) if self.truncated else value


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
