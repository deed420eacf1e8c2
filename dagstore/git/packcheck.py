"""A pushed pack, copied from the wire and checked before any object of it is held in memory.

A pack is small on the wire and large inflated: a 200 KB pack can declare, and deliver, a
280 MB object, which dulwich would inflate whole into memory while indexing it. This copies
the stream into a file and reads every entry as it passes: an object's declared size (and a
delta's declared result size, from the delta's own header) is checked against the per-object
limit before anything is inflated, each entry is then inflated into nothing, in small pieces,
to check that it is what it declares and to count the push's inflated total, and the pack's
trailing checksum is checked. Only a pack that passes reaches dulwich's indexer.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

OFS_DELTA, REF_DELTA = 6, 7
PIECE = 64 * 1024


class PackRejected(OSError):
    """The pack breaks a limit or is malformed; receive-pack reports the message to git."""


@dataclass(frozen=True)
class InflateLimits:
    object_bytes: int  # one object, or one delta's result, inflated
    total_bytes: int  # everything a push inflates


class _Wire:
    """The pack stream: what is consumed goes to the file and into the checksum."""

    def __init__(
        self,
        read_all: Callable[[int], bytes],
        read_some: Callable[[int], bytes],
        out: BinaryIO,
    ) -> None:
        self.read_all, self.read_some, self.out = read_all, read_some, out
        self.pending = b""  # read from the wire, not consumed yet
        self.digest = hashlib.sha1()

    def consume(self, data: bytes) -> None:
        self.out.write(data)
        self.digest.update(data)

    def take(self, n: int) -> bytes:
        data, self.pending = self.pending[:n], self.pending[n:]
        if len(data) < n:
            data += self.read_all(n - len(data))
        if len(data) < n:
            raise PackRejected("the pack ended early")
        self.consume(data)
        return data

    def some(self) -> bytes:
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        data = self.read_some(PIECE)
        if not data:
            raise PackRejected("the pack ended early")
        return data

    def varint_header(self) -> tuple[int, int]:
        """An entry's type and declared size."""
        c = self.take(1)[0]
        kind, size, shift = (c >> 4) & 7, c & 15, 4
        while c & 0x80:
            c = self.take(1)[0]
            size |= (c & 0x7F) << shift
            shift += 7
            if shift > 70:
                raise PackRejected("malformed pack: an object header does not end")
        return kind, size

    def skip_offset(self) -> None:
        c = self.take(1)[0]
        for _ in range(10):
            if not c & 0x80:
                return
            c = self.take(1)[0]
        raise PackRejected("malformed pack: a delta offset does not end")

    def inflate(self, declared: int, head_bytes: int = 0) -> tuple[int, bytes]:
        """Inflate one zlib stream into nothing; returns (its size, its first bytes)."""
        inflater = zlib.decompressobj()
        produced, head = 0, b""
        while not inflater.eof:
            chunk = self.some()
            data = chunk
            while data and not inflater.eof:
                try:
                    out = inflater.decompress(data, PIECE)
                except zlib.error as exc:
                    raise PackRejected(f"malformed pack: {exc}") from None
                produced += len(out)
                if produced > declared:
                    raise PackRejected("malformed pack: an object is larger than it declares")
                if len(head) < head_bytes:
                    head += out[: head_bytes - len(head)]
                data = inflater.unconsumed_tail
            if inflater.eof:
                unused = inflater.unused_data
                self.consume(chunk[: len(chunk) - len(unused)])
                self.pending = unused + self.pending
            else:
                self.consume(chunk)
        if produced != declared:
            raise PackRejected("malformed pack: an object is smaller than it declares")
        return produced, head


def _delta_result_size(head: bytes) -> int:
    """A delta's declared result size: its header's second varint (after the base size)."""
    pos = 0
    for _ in range(2):
        value, shift = 0, 0
        while True:
            if pos >= len(head):
                raise PackRejected("malformed pack: a delta header is cut short")
            c = head[pos]
            pos += 1
            value |= (c & 0x7F) << shift
            shift += 7
            if not c & 0x80:
                break
    return value


def copy_checked(
    read_all: Callable[[int], bytes],
    read_some: Callable[[int], bytes] | None,
    out: BinaryIO,
    limits: InflateLimits,
) -> int:
    """Copy a pack from the wire into `out`, checked (see the module docstring); returns its
    object count. Raises PackRejected."""
    wire = _Wire(read_all, read_some or read_all, out)
    header = wire.take(12)
    if header[:4] != b"PACK" or struct.unpack(">I", header[4:8])[0] not in (2, 3):
        raise PackRejected("malformed pack: no pack header")
    count = struct.unpack(">I", header[8:12])[0]
    total = 0
    for _ in range(count):
        kind, size = wire.varint_header()
        if kind in (0, 5):
            raise PackRejected(f"malformed pack: unknown object type {kind}")
        if size > limits.object_bytes:
            raise PackRejected(_too_big("an object", size, limits.object_bytes))
        if kind == OFS_DELTA:
            wire.skip_offset()
        elif kind == REF_DELTA:
            wire.take(20)
        produced, head = wire.inflate(size, head_bytes=20 if kind in (OFS_DELTA, REF_DELTA) else 0)
        if kind in (OFS_DELTA, REF_DELTA):
            result = _delta_result_size(head)
            if result > limits.object_bytes:
                raise PackRejected(_too_big("a delta's result", result, limits.object_bytes))
            produced += result
        total += produced
        if total > limits.total_bytes:
            raise PackRejected(_too_big("the push, inflated,", total, limits.total_bytes))
    expected = wire.digest.digest()
    trailer = wire.pending[:20]
    wire.pending = wire.pending[20:]
    if len(trailer) < 20:
        trailer += wire.read_all(20 - len(trailer))
    out.write(trailer)
    if trailer != expected:
        raise PackRejected("malformed pack: its checksum does not match")
    return count


def _too_big(what: str, size: int, limit: int) -> str:
    return (
        f"push refused: {what} would be {size / 2**20:.1f} MiB, over the store's limit of "
        f"{limit / 2**20:.1f} MiB"
    )
