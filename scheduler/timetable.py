"""When a DAG's scheduled runs are due.

A run's logical date is the schedule tick it stands for, and it becomes due at that tick
(`@daily` → a run with logical date 2026-01-02T00:00Z, due at that moment). With catchup
every missed tick gets a run, oldest first; without it only the newest tick does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dagstore.authoring.schedule import schedule_from_json
from dagstore.core.db import as_utc

MAX_RUNS_PER_PASS = 500  # a long catchup is created over several passes, not in one transaction
_EPSILON = timedelta(microseconds=1)


@dataclass(frozen=True)
class Due:
    logical_dates: list[datetime]
    next_due_at: datetime | None  # None: the schedule has no more ticks


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    return as_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))


def due_runs(
    structure: dict[str, Any], last: datetime | None, now: datetime, limit: int = MAX_RUNS_PER_PASS
) -> Due:
    """Logical dates to create now, after `last` (the newest already scheduled)."""
    text = structure.get("schedule")
    start = _parse_time(structure.get("start_date"))
    end = _parse_time(structure.get("end_date"))
    if text is None or start is None:
        return Due([], None)
    schedule = schedule_from_json(text, anchor=start, timezone=structure.get("timezone"))
    last = as_utc(last)  # SQLite hands back naive datetimes
    horizon = now if end is None else min(now, end)
    tick: datetime | None = None
    if not bool(structure.get("catchup", False)):
        # Only the newest missed tick runs: jump to it rather than walk every tick since then.
        # It is due when it comes after `last` (or is the start or later): the same test as
        # "at or after the tick following `last`", without working that tick out (a cron
        # evaluation costs more than the rest of a DAG's share of a batch).
        latest = schedule.latest_at_or_before(horizon)
        if latest is not None and (latest > last if last is not None else latest >= start):
            tick = latest
        limit = 1
    if tick is None:
        tick = schedule.next_after(last if last is not None else start - _EPSILON)
    dates: list[datetime] = []
    while tick is not None and tick <= horizon and len(dates) < limit:
        dates.append(tick)
        tick = schedule.next_after(tick)
    if tick is not None and end is not None and tick > end:
        tick = None
    return Due(dates, tick)


def ticks_between(
    structure: dict[str, Any], start: datetime, end: datetime, limit: int, count_to: int
) -> tuple[list[datetime], int]:
    """The schedule's ticks in [start, end] (at most `limit` of them), and how many there are
    (counted up to `count_to`, so a huge range is refused quickly with a number)."""
    schedule = schedule_from_json(
        structure.get("schedule"),
        anchor=_parse_time(structure.get("start_date")) or start,
        timezone=structure.get("timezone"),
    )
    ticks: list[datetime] = []
    count = 0
    tick = schedule.next_after(start - _EPSILON)
    while tick is not None and tick <= end and count < count_to:
        if len(ticks) < limit:
            ticks.append(tick)
        count += 1
        tick = schedule.next_after(tick)
    return ticks, count
