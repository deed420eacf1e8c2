"""A unified patch read into rows with line numbers, for the diff page's two views.

Lines before the first hunk (`diff --git`, `index`, `--- /dev/null`, `+++ b/x`) are the
patch's header: shown plain, never coloured as a deletion or an addition. Inside a hunk a
line's first character alone says what it is, so a removed line that reads `-- x` is still
a removed line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


@dataclass(frozen=True)
class Line:
    kind: str  # meta | hunk | same | del | add
    old: int | None
    new: int | None
    text: str


def unified(patch: str) -> list[Line]:
    """One row per patch line, with its number in the old file, the new file, or both."""
    rows: list[Line] = []
    old = new = 0
    in_hunk = False
    for line in patch.splitlines():
        match = HUNK.match(line)
        if match:
            old, new, in_hunk = int(match[1]), int(match[2]), True
            rows.append(Line("hunk", None, None, line))
        elif not in_hunk or line.startswith("\\"):
            rows.append(Line("meta", None, None, line))
        elif line.startswith("-"):
            rows.append(Line("del", old, None, line[1:]))
            old += 1
        elif line.startswith("+"):
            rows.append(Line("add", None, new, line[1:]))
            new += 1
        else:
            rows.append(Line("same", old, new, line[1:]))
            old, new = old + 1, new + 1
    return rows


def side_by_side(patch: str) -> list[tuple[str, Line | None, Line | None]]:
    """(kind, left, right) rows: removed lines beside the added lines that replace them."""
    rows: list[tuple[str, Line | None, Line | None]] = []
    removed: list[Line] = []
    added: list[Line] = []

    def flush() -> None:
        for i in range(max(len(removed), len(added))):
            left = removed[i] if i < len(removed) else None
            right = added[i] if i < len(added) else None
            rows.append(("change", left, right))
        removed.clear()
        added.clear()

    for line in unified(patch):
        if line.kind == "del":
            removed.append(line)
        elif line.kind == "add":
            added.append(line)
        else:
            flush()
            if line.kind != "meta":
                rows.append((line.kind, line, line))
    flush()
    return rows
