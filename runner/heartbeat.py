"""Heartbeats while a task runs, and the two reasons a worker stops its own task.

1. The try was taken away (the server answers 409): someone else owns it now.
2. Self-fencing: no heartbeat got through for so long that the server may be about to declare
   the try lost and start it again elsewhere. A worker cut off from every API server never
   receives that 409, so it must not wait for one: it stops the task at three quarters of the
   server's heartbeat timeout (the claim's answer tells it), counted from the *sending* of the
   last heartbeat that got through, which the server recorded no earlier. Two copies of one
   try therefore never run at once.

Either way the task is stopped with a signal that raises `Abandoned` in it (a task blocked in
sleep() or I/O wakes up too) and nothing is reported for the try. A task that does not stop
(it blocks signals, or sits in C code) within an eighth of the timeout more is ended with its
process: in a forked work horse that is the task alone; in a --no-fork worker, the worker.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from dagstore.core.errors import Conflict, PinflowError
from dagstore.core.protocol import TaskSpec
from runner.capture import THREAD_PREFIX, CappedLog
from runner.client import WorkerClient

log = logging.getLogger("pinflow.worker")

# Sent by the heartbeat thread to the main thread to stop the task. Not SIGINT: RQ's work
# horse ignores SIGINT, and in a --no-fork worker SIGINT means "shut down".
ABANDON_SIGNAL = signal.SIGUSR1
FENCE_FRACTION = 0.75  # of the server's heartbeat timeout: stop the task after this silence
HARD_EXIT_FRACTION = 0.125  # then this much more for the task to stop before its process ends
HARD_EXIT_CODE = 75
LOG_EVERY = 1.0  # seconds: how soon a printed line can be followed


class Abandoned(BaseException):
    """The try is not ours to finish any more: stop, report nothing."""


def on_abandon(_signum: int, _frame: Any) -> None:
    raise Abandoned()


class Heartbeater(threading.Thread):
    def __init__(
        self, client: WorkerClient, spec: TaskSpec, last_ok: float, log: CappedLog | None = None
    ) -> None:
        """`last_ok`: when (time.monotonic()) the claim that the server recorded was sent.
        `log`: the task's log, shipped as it grows (at most every LOG_EVERY seconds, and only
        when it grew) so it can be followed while the task runs."""
        super().__init__(daemon=True, name=f"{THREAD_PREFIX}heartbeat")
        self.client, self.ti_id, self.try_number = client, spec.ti_id, spec.try_number
        self.interval = spec.heartbeat_interval
        timeout = spec.heartbeat_timeout
        self.fence_after = timeout * FENCE_FRACTION if timeout else float("inf")
        self.hard_exit_after = timeout * HARD_EXIT_FRACTION if timeout else 0.0
        self.last_ok = last_ok
        self.log = log
        self.shipped = 0  # the log's stream offset where the server's copy ends
        self.done = threading.Event()
        self.abandoned = ""  # why the task was stopped; empty while it is ours
        self.main_ident = threading.main_thread().ident or 0

    def run(self) -> None:
        next_beat = self.last_ok + self.interval
        while True:
            now = time.monotonic()
            left = self.last_ok + self.fence_after - now
            if left <= 0:
                silent = now - self.last_ok
                self.stop_task(f"no heartbeat got through for {silent:.1f} s")
                return
            wait = min(next_beat - now, left, LOG_EVERY if self.log is not None else left)
            if self.done.wait(max(wait, 0.0)):
                return
            if time.monotonic() >= self.last_ok + self.fence_after:
                continue
            offset, piece = self._unshipped()
            if time.monotonic() < next_beat and not piece:
                continue  # woke to ship the log, but nothing new was printed
            sent = time.monotonic()
            try:
                held = self.client.heartbeat(
                    self.ti_id, self.try_number, timeout=self.interval, log=(offset, piece)
                )
            except Conflict as exc:
                self.stop_task(f"taken away: {exc.detail}")
                return
            except PinflowError as exc:
                log.warning("heartbeat failed: %s", exc.detail)
                next_beat = time.monotonic() + min(self.interval, LOG_EVERY)
                continue
            self.last_ok, next_beat = sent, sent + self.interval
            if held is not None:
                self.shipped = held

    def _unshipped(self) -> tuple[int, str]:
        """The log's next piece and the stream offset it starts at (`dagstore.core.logtail`):
        from where the server's log ends, or later when those bytes were cut meanwhile."""
        if self.log is None:
            return self.shipped, ""
        return self.log.piece(self.shipped)

    def stop_task(self, why: str) -> None:
        self.abandoned = why
        log.warning("stopping try %s of task instance %s: %s", self.try_number, self.ti_id, why)
        # A real signal to the main thread, so a task blocked in sleep() or I/O wakes up too
        # (`_thread.interrupt_main` would wait for it to return by itself).
        signal.pthread_kill(self.main_ident, ABANDON_SIGNAL)
        if self.hard_exit_after and not self.done.wait(self.hard_exit_after):
            log.critical(
                "the task did not stop within %.1f s: ending its process", self.hard_exit_after
            )
            os._exit(HARD_EXIT_CODE)
