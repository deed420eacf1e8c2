"""A try's log kept as its head and its tail, with what was between them cut and said so.

A task that prints a lot and then fails explains itself last: the traceback is at the end. A
log that kept only its first bytes lost exactly those lines (issue 33). So a log is kept as
the first quarter of the cap (how the task started) and the last three quarters (how it
ended); the bytes between are dropped as they give way, and the log says where and how many:

    ...the head...
    [pinflow: 3,145,728 bytes cut here; a try's log keeps its first 256 KiB and its last 768 KiB
    (PINFLOW_TASK_LOG_MAX_BYTES)]
    ...the tail, down to the traceback

Positions are stream offsets: the count of bytes the task printed so far, cut ones included.
The worker keeps its log this way (`runner.capture.CappedLog`) and ships it from a stream
offset with its heartbeats; the server keeps the try's log the same way (`scheduler.tries`),
so a follower that asks for the log from offset K gets what followed byte K, with a marker for
what it missed when that was cut meanwhile. Both sides build the same tail from the same
stream: where it starts depends only on the stream's last bytes (a character boundary, then
the start of a line when one begins within `ALIGN` bytes).

Shared by the runner and the scheduler: this module imports nothing of either.
"""

from __future__ import annotations

HEAD_SHARE = 4  # the head gets a quarter of the cap, the tail the rest
ALIGN = 4096  # the tail starts at a line's start when one begins this close to the cut
MIN_CAP = 4096
MAX_CAP = 64 * 1024 * 1024  # the most PINFLOW_TASK_LOG_MAX_BYTES may say (request limits)
DEFAULT_CAP = 1024 * 1024
SETTING = "PINFLOW_TASK_LOG_MAX_BYTES"


def _char_start(data: bytes | bytearray, at: int) -> int:
    """`at`, moved forward past UTF-8 continuation bytes: a cut never splits a character."""
    while at < len(data) and data[at] & 0xC0 == 0x80:
        at += 1
    return at


def _char_end(data: bytes | bytearray, at: int) -> int:
    """`at`, moved back to the start of the character it is in (a head ends before it)."""
    while 0 < at < len(data) and data[at] & 0xC0 == 0x80:
        at -= 1
    return at


def _size(n: int) -> str:
    return f"{n // 1024:,} KiB" if n % 1024 == 0 else f"{n:,} bytes"


class HeadTail:
    """A log stream's first `cap // 4` bytes and its last ones, up to `cap` in all."""

    def __init__(
        self, cap: int, head: bytes = b"", tail: bytes = b"", total: int | None = None
    ) -> None:
        self.cap = cap
        self.head_cap = cap // HEAD_SHARE
        self.tail_cap = cap - self.head_cap
        self.head = bytearray(head)
        # The tail's buffer holds up to twice its share, so that dropping its oldest bytes is
        # a copy once per `tail_cap` bytes written, not one per write.
        self._buffer = bytearray(tail)
        self.total = len(head) + len(tail) if total is None else max(total, len(head) + len(tail))

    @classmethod
    def restore(cls, cap: int, head: str, tail: str, total: int | None) -> HeadTail:
        """A log as a row keeps it (`task_tries.log`, `log_tail`, `log_bytes`)."""
        return cls(cap, head.encode("utf-8"), tail.encode("utf-8"), total)

    @property
    def tail(self) -> bytes:
        """The stream's last bytes (at most `tail_cap`), starting at a character and, when
        one begins within ALIGN bytes of the cut, at a line."""
        buffer = self._buffer
        start = len(buffer) - self.tail_cap
        if start <= 0:
            return bytes(buffer)  # all of it fits (it follows the head, or a gap)
        newline = buffer.find(b"\n", start, start + ALIGN)
        start = newline + 1 if newline >= 0 else _char_start(buffer, start)
        return bytes(buffer[start:])

    @property
    def cut(self) -> int:
        """Bytes of the stream kept neither in the head nor in the tail."""
        return self.total - len(self.head) - len(self.tail)

    def write(self, data: bytes) -> None:
        """Append bytes to the stream."""
        self.write_at(self.total, data)

    def write_at(self, offset: int, data: bytes) -> None:
        """The stream's bytes from `offset` on. What overlaps what this log has seen is skipped;
        a gap (bytes before `offset` this log never got: the sender had dropped them from its
        own tail) counts as cut, and the tail starts again after it."""
        if offset + len(data) <= self.total:
            return
        if offset < self.total:
            data = data[self.total - offset :]
        elif offset > self.total:
            self._buffer.clear()
            self.total = offset
        if self.total == len(self.head) and len(self.head) < self.head_cap:
            room = _char_end(data, self.head_cap - len(self.head))
            self.head += data[:room]
            self.total += min(room, len(data))
            data = data[room:]
        if data:
            self._buffer += data
            self.total += len(data)
            if len(self._buffer) > 2 * self.tail_cap:
                kept = self.tail
                self._buffer = bytearray(kept)

    def add_line(self, line: str) -> None:
        """Append `line` on a line of its own (pinflow's ending line): after a newline unless
        the stream ends with one."""
        data = line.encode("utf-8")
        if self._buffer:
            last = self._buffer[-1:]
        else:
            last = self.head[-1:] if self.total == len(self.head) else b"\n"
        self.write(data if last in (b"", b"\n") else b"\n" + data)

    def marker(self, cut: int) -> bytes:
        """What the log says where `cut` bytes are missing."""
        if cut <= 0:
            return b""
        lead = b"" if not self.head or self.head.endswith(b"\n") else b"\n"
        text = (
            f"[pinflow: {cut:,} bytes cut here; a try's log keeps its first "
            f"{_size(self.head_cap)} and its last {_size(self.tail_cap)} ({SETTING})]\n"
        )
        return lead + text.encode("utf-8")

    def render(self) -> bytes:
        """The whole log: head, marker, tail."""
        return bytes(self.head) + self.marker(self.cut) + self.tail

    def since(self, offset: int) -> bytes:
        """What a reader that has the stream up to `offset` gets next: the rest of the head,
        a marker for the bytes it cannot have any more, the tail."""
        tail = self.tail
        tail_start = self.total - len(tail)
        if offset >= tail_start:
            return tail[offset - tail_start :]
        head = bytes(self.head[offset:]) if offset < len(self.head) else b""
        return head + self.marker(tail_start - max(offset, len(self.head))) + tail

    def piece(self, shipped: int) -> tuple[int, bytes]:
        """The next contiguous part of the stream for a receiver that holds it up to `shipped`,
        and the offset it starts at: past `shipped` only when those bytes were dropped here."""
        tail = self.tail
        tail_start = self.total - len(tail)
        if shipped < len(self.head):
            rest = tail if tail_start == len(self.head) else b""
            return shipped, bytes(self.head[shipped:]) + rest
        if shipped >= tail_start:
            return shipped, tail[shipped - tail_start :]
        return tail_start, tail

    def text(self) -> tuple[str, str]:
        """(head, tail) as text, for the row (cuts fall between characters)."""
        return self.head.decode("utf-8", "replace"), self.tail.decode("utf-8", "replace")


def check_cap(value: int) -> int:
    """The cap PINFLOW_TASK_LOG_MAX_BYTES may name (the requests that carry logs have limits)."""
    if not MIN_CAP <= value <= MAX_CAP:
        raise ValueError(
            f"{SETTING} must be between {MIN_CAP:,} and {MAX_CAP:,} bytes, not {value:,}"
        )
    return value
