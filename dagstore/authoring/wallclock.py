"""A timezone's wall clock and the instants it stands for, through daylight saving time.

A cron schedule in a timezone matches the zone's wall clock, and a wall time becomes a run's
instant (UTC) by the rules DESIGN.md fixes:
- a wall time that does not exist that day (spring forward: 02:30 in Europe/Berlin on the
  last Sunday of March) stands for the first minute after the gap (03:00 local, 01:00Z);
- a wall time that exists twice (fall back: 02:30 on the last Sunday of October) stands for
  its first occurrence only, so the schedule runs once.

Stdlib only (zoneinfo, loaded only for a zone other than UTC): every DAG file imports the
authoring model. Zones come from the system's tz database or the `tzdata` package.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache

from dagstore.core.errors import DagDefinitionError

UTC_NAME = "UTC"
# An IANA key: `Europe/Berlin`, `America/Argentina/Buenos_Aires`, `Etc/GMT+5`, `UTC`.
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,3}")
_UNKNOWN = "unknown timezone {!r} (an IANA name such as 'Europe/Berlin')"
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})  # files of the database, or host's


@lru_cache(maxsize=256)
def zone(name: str) -> tzinfo:
    """The zone named `name`; DagDefinitionError for anything that is not an IANA zone."""
    if name == UTC_NAME:
        return UTC
    if not isinstance(name, str) or not _KEY.fullmatch(name) or name in _NOT_ZONES:
        raise DagDefinitionError(
            f"unknown timezone {name!r} (an IANA name such as 'Europe/Berlin')"
        )
    from zoneinfo import ZoneInfo

    try:
        return ZoneInfo(name)
    except (ValueError, OSError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        raise DagDefinitionError(
            f"unknown timezone {name!r} (an IANA name such as 'Europe/Berlin')"
        ) from None


def check_timezone(name: object) -> str:
    if not isinstance(name, str):
        raise DagDefinitionError(
            f"timezone must be an IANA name such as 'Europe/Berlin', got {name!r}"
        )
    zone(name)
    return name


def wall_clock(instant: datetime, name: str) -> datetime:
    """The zone's naive wall time at `instant` (an aware datetime)."""
    return instant.astimezone(zone(name)).replace(tzinfo=None)


def to_instant(wall: datetime, name: str) -> datetime:
    """The UTC instant a naive wall time of the zone stands for (see the module's rules)."""
    tz = zone(name)
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first  # it exists; fold=0 is its first occurrence when it exists twice
    # In a gap: PEP 495 maps it with the offset before the transition (fold=0, later) and
    # after it (fold=1, earlier); the transition lies between. Its instant is the first
    # after the gap, found by halving (a gap is an hour, rarely a day: ~17 steps).
    low = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    high = max(first, low)
    low = min(first, low)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).replace(tzinfo=None) > wall:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)
