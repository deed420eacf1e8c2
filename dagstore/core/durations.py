"""Ages written the way operators write them: `90d`, `12h`, `2w`, `1d12h`, `30m`, `45s`.

`pinflow db clean --older-than` and PINFLOW_CLEAN_OLDER_THAN take one; a bad one is a
BadRequest naming what was wrong, never a traceback.
"""

from __future__ import annotations

import re
from datetime import timedelta

from dagstore.core.errors import BadRequest

UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)([wdhms])")
_WHOLE = re.compile(r"(?:\d+[wdhms])+")
MAX_DAYS = 100 * 366  # a century: past it a cutoff date is meaningless (and overflows)


def parse_age(text: str, what: str = "--older-than") -> timedelta:
    """`90d` → 90 days. Units w, d, h, m, s; parts add up (`1d12h`)."""
    raw = text.strip().lower()
    if not _WHOLE.fullmatch(raw):
        raise BadRequest(
            f"{what} {text!r} is not an age: a number and a unit (w, d, h, m, s), e.g. 90d, "
            "12h or 1d12h"
        )
    seconds = sum(int(n) * UNITS[unit] for n, unit in _PART.findall(raw))
    if seconds > MAX_DAYS * 86400:
        raise BadRequest(f"{what} {text!r} is more than {MAX_DAYS // 366} years")
    return timedelta(seconds=seconds)


def say_age(age: timedelta) -> str:
    """An age as `parse_age` reads it, largest units first (`1d12h`)."""
    seconds, parts = int(age.total_seconds()), []
    for unit, size in UNITS.items():
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"
