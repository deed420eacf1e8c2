"""Messages between a worker's own processes (token agent, RQ worker, warm fork server): JSON
objects, length-prefixed, on a Unix socket; a file descriptor rides on a one-byte message of
its own. Whatever arrives may come from a process that ran task code: bounded, and only an
object is accepted."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from dagstore.core.errors import PinflowError

MAX_FRAME = 64 * 1024 * 1024  # a claim answer carries upstream results: generous, bounded
_FRAME = struct.Struct("!I")


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode("utf-8")
    sock.sendall(_FRAME.pack(len(data)) + data)


def receive(sock: socket.socket) -> dict[str, Any] | None:
    """One message, or None when the other end has gone."""
    head = _read_exactly(sock, _FRAME.size)
    if head is None:
        return None
    (size,) = _FRAME.unpack(head)
    if size > MAX_FRAME:
        raise PinflowError(f"message of {size} bytes refused")
    body = _read_exactly(sock, size)
    if body is None:
        return None
    message = json.loads(body)
    if not isinstance(message, dict):
        raise PinflowError("message is not an object")
    return message


def send_fds(sock: socket.socket, fds: list[int]) -> None:
    socket.send_fds(sock, [b"F"], fds)


def receive_fds(sock: socket.socket, count: int) -> list[int]:
    """The descriptors sent with `send_fds` (what arrives beyond `count` is closed)."""
    import os

    data, fds, _, _ = socket.recv_fds(sock, 1, count)
    if not data:
        raise PinflowError("the other process has gone")
    if len(fds) != count:
        for fd in fds:
            os.close(fd)
        raise PinflowError(f"expected {count} file descriptors, got {len(fds)}")
    return fds


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    parts, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)
