"""Linux process attributes set through prctl(2); a no-op where they do not exist."""

from __future__ import annotations

import contextlib
import ctypes
import signal

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_NAME = 15


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def die_with_parent() -> None:
    """SIGTERM this process when its parent dies, even by `kill -9` (survives exec)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def make_undumpable() -> None:
    """Nobody but root may read this process's memory, /proc files or file descriptors, nor
    those of the processes it forks (they inherit it; exec resets it)."""
    _prctl(_PR_SET_DUMPABLE, 0)


def set_name(name: str) -> None:
    """The process's name as `ps`, `top` and /proc/PID/comm show it (at most 15 bytes)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def name() -> str:
    try:
        with open("/proc/self/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""
