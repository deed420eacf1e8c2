"""Text that may reach someone's terminal: control characters shown, never obeyed.

Much of what pinflow prints was written by whoever pushed: file names, commit messages, import
errors, task errors and logs. A raw ESC or BEL in it is an instruction to the reader's terminal
(colours, a window title, a cursor moved over earlier lines, OSC 52 writing the clipboard), so
every such text goes through `printable` on its way to a terminal: the pusher's `remote:` lines
and the CLI's output. Bidirectional overrides (Trojan Source) are shown too.

Import-cheap (`re` only): the CLI imports it.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls (0x9b is CSI to many terminals), bidi embeddings/isolates.
_OTHERS = "\x7f-\x9f\u202a-\u202e\u2066-\u2069"
_ANY = re.compile(f"[\x00-\x1f{_OTHERS}]")
_BUT_LINES = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHERS}]")  # tab and line feed kept


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def has_controls(text: str, lines: bool = False) -> bool:
    """Whether `printable` would change `text`."""
    return (_BUT_LINES if lines else _ANY).search(text) is not None


def printable(text: str, lines: bool = False) -> str:
    """`text` with every control character written out (`\\x1b`); with `lines`, line breaks
    and tabs stay (a traceback, a log), else they are written out too (one line)."""
    pattern = _BUT_LINES if lines else _ANY
    if pattern.search(text) is None:  # the usual case: nothing to copy
        return text
    return pattern.sub(_shown, text)
