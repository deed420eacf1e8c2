"""A forked work horse hands its finish report to its worker, which sends it.

A horse is a new process: reporting itself means a new TCP connection to the API server and
a cold HTTP client in a process where every page it touches is copied, for each task. The
worker keeps one connection for its whole life, so the horse writes the report (state,
result, error, log) into memory it shares with the worker and exits; the worker sends it with
that try's credential (`runner.claim`, `dagstore.access.grants`), never with a token.

The memory is a fresh shared mapping per task (a memfd, so that a horse forked by a warm fork
server, `runner.forkserver`, can be handed it too): a process that one task left behind (a
daemon it forked) keeps only its own task's mapping and cannot write into the next task's
report. The worker takes from it only the report's body: which try it is for is what the
worker claimed, so a task cannot report for another try. A report too large for the mapping is
sent by the horse itself, as before.

If the worker dies between its horse's exit and the send, the report is lost and the try goes
the way of any try whose worker died: declared lost after the heartbeat timeout, and retried.
"""

from __future__ import annotations

import mmap
import os
import struct

# The log is capped (1 MiB by default, ~2 MiB as JSON); results are small. A report past this
# (a larger PINFLOW_TASK_LOG_MAX_BYTES) is sent by the horse itself.
SIZE = 4 * 1024 * 1024
_HEADER = struct.Struct("<Q")


class Handover:
    """The current task's mapping: made by the worker before the fork, read after the horse
    exits. In any other process (a --no-fork worker, tests) there is none."""

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None
        self._fd: int | None = None

    def open(self) -> None:
        """In the worker, before the fork."""
        self.close()
        self._fd = os.memfd_create("pinflow-handover", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, SIZE)  # zero-filled: no report
        self._map = mmap.mmap(self._fd, SIZE)  # shared with the horse

    def fileno(self) -> int | None:
        """The mapping's file, for a horse that is not forked from this process."""
        return self._fd

    def adopt(self, fd: int) -> None:
        """In a horse forked elsewhere: map the file the worker made for this task."""
        self.close()
        self._map = mmap.mmap(fd, SIZE)
        os.close(fd)

    def put(self, data: bytes) -> bool:
        """In the horse: hand `data` over; False when there is no mapping or it is too big."""
        if self._map is None or len(data) > SIZE - _HEADER.size:
            return False
        self._map[_HEADER.size : _HEADER.size + len(data)] = data
        self._map[: _HEADER.size] = _HEADER.pack(len(data))  # the length last: all or nothing
        return True

    def take(self) -> bytes | None:
        """In the worker, after the horse exited: the report, or None if it left none."""
        if self._map is None:
            return None
        (size,) = _HEADER.unpack(self._map[: _HEADER.size])
        if size == 0 or size > SIZE - _HEADER.size:
            return None
        return bytes(self._map[_HEADER.size : _HEADER.size + size])

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


HANDOVER = Handover()
