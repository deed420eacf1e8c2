"""When a DAG's runs are due: one small value type shared by authoring and the scheduler.

The database stores a schedule as the string `Schedule.to_json()` returns, so the scheduler can
rebuild it (`schedule_from_json`) without importing the DAG file. All times are tz-aware UTC.
croniter is imported only when a cron schedule is actually built or evaluated, so `import
pinflow` in a DAG file stays cheap.

A cron schedule (and a preset) ticks in its DAG's `timezone` (IANA; the structure keeps it
beside the schedule string, default UTC): its expression is matched against that zone's wall
clock (`dagstore.authoring.wallclock`), so `30 2 * * *` in Europe/Berlin is 02:30 Berlin time
summer and winter (a 02:30 that does not exist runs at 03:00; one that exists twice runs
once). An expression that fires every hour keeps its period in real time instead. Interval
schedules and `@once` are instants and ignore the zone.

Interval schedules (`timedelta`) and `@once` need a point in time to count from: the DAG's
start_date. It is not part of the stored string (that stays "timedelta:<seconds>"), so pass it
as `anchor=` when rebuilding; without it an interval counts from the Unix epoch and `@once`
never fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from dagstore.authoring.wallclock import UTC_NAME, check_timezone, to_instant, wall_clock, zone
from dagstore.core.errors import DagDefinitionError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PRESETS: dict[str, str | None] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@once": None,
}
_TIMEDELTA_PREFIX = "timedelta:"
LONGEST_INTERVAL = timedelta(days=100 * 366)  # its ticks stay within what a datetime holds


def as_utc(dt: datetime) -> datetime:
    """Naive datetimes are UTC by convention; aware ones are converted, so comparisons never mix."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class Schedule:
    """Base of every schedule kind; `kind` lets callers branch without isinstance chains."""

    kind: ClassVar[str] = "manual"

    def next_after(self, dt: datetime) -> datetime | None:
        """The next logical time strictly after `dt` (tz-aware UTC), or None: no more runs."""
        return None

    def to_json(self) -> str | None:
        """The stable string the database keeps; `schedule_from_json` reverses it."""
        return None

    def latest_at_or_before(self, dt: datetime) -> datetime | None:
        """The newest tick at or before `dt`: a DAG without catchup jumps straight to it
        instead of walking every tick it missed."""
        return None

    @property
    def is_manual(self) -> bool:
        return self.kind == "manual"


@dataclass(frozen=True)
class ManualSchedule(Schedule):
    """`schedule=None`: runs only when triggered."""

    kind: ClassVar[str] = "manual"


@dataclass(frozen=True)
class CronSchedule(Schedule):
    """A 5-field cron expression, or a preset that stands for one (`text` keeps the preset so the
    stored form is what the author wrote), ticking in `timezone`'s wall clock."""

    text: str
    expression: str
    timezone: str = UTC_NAME
    kind: ClassVar[str] = "cron"

    def next_after(self, dt: datetime) -> datetime | None:
        from croniter import croniter

        start = as_utc(dt)
        if self.timezone == UTC_NAME or self.every_hour:
            tick = as_utc(croniter(self.expression, self._aware(start)).get_next(datetime))
            while tick <= start:  # defensive: croniter works in whole seconds
                tick = as_utc(croniter(self.expression, tick).get_next(datetime))
            return tick
        # croniter walks the naive wall clock (no DST arithmetic of its own); each wall time
        # becomes one instant. A wall time already passed (the second run through an hour
        # that exists twice) or one that fell into a gap with an earlier tick is skipped.
        ticks = croniter(self.expression, wall_clock(start, self.timezone))
        while True:
            tick = to_instant(ticks.get_next(datetime), self.timezone)
            if tick > start:
                return tick

    def latest_at_or_before(self, dt: datetime) -> datetime | None:
        from croniter import croniter

        end = as_utc(dt)
        if self.timezone == UTC_NAME or self.every_hour:
            # croniter works in whole seconds: step from just past `end` back to the tick.
            after = self._aware(end + timedelta(seconds=1))
            tick = as_utc(croniter(self.expression, after).get_prev(datetime))
            while tick > end:
                tick = as_utc(croniter(self.expression, tick).get_prev(datetime))
            return tick.replace(fold=0)
        ticks = croniter(self.expression, wall_clock(end, self.timezone) + timedelta(seconds=1))
        while True:
            tick = to_instant(ticks.get_prev(datetime), self.timezone)
            if tick <= end:
                return tick

    @property
    def every_hour(self) -> bool:
        """An expression that fires in every hour (`*/30 * * * *`) keeps its period in real
        time through DST, as Airflow does: croniter's own zone-aware walk gives that (it runs
        in both occurrences of a repeated hour). The wall-clock rule is for the others."""
        return self.expression.split()[1] == "*"

    def _aware(self, instant: datetime) -> datetime:
        return instant if self.timezone == UTC_NAME else instant.astimezone(zone(self.timezone))

    def to_json(self) -> str:
        return self.text


@dataclass(frozen=True)
class IntervalSchedule(Schedule):
    """Every `interval`, counted from `anchor` (the start_date): ticks are anchor + k * interval."""

    interval: timedelta
    anchor: datetime = EPOCH
    kind: ClassVar[str] = "timedelta"

    def next_after(self, dt: datetime) -> datetime | None:
        dt = as_utc(dt)
        if dt < self.anchor:
            return self.anchor
        steps = (dt - self.anchor) // self.interval + 1  # exact: timedelta // is integer math
        return self.anchor + steps * self.interval

    def latest_at_or_before(self, dt: datetime) -> datetime | None:
        dt = as_utc(dt)
        if dt < self.anchor:
            return None
        return self.anchor + ((dt - self.anchor) // self.interval) * self.interval

    def to_json(self) -> str:
        seconds = self.interval.total_seconds()
        text = str(int(seconds)) if seconds.is_integer() else repr(seconds)
        return f"{_TIMEDELTA_PREFIX}{text}"


@dataclass(frozen=True)
class OnceSchedule(Schedule):
    """`@once`: exactly one run, at the anchor (start_date)."""

    anchor: datetime | None = None
    kind: ClassVar[str] = "once"

    def next_after(self, dt: datetime) -> datetime | None:
        if self.anchor is None or self.anchor <= as_utc(dt):
            return None
        return self.anchor

    def latest_at_or_before(self, dt: datetime) -> datetime | None:
        return self.anchor if self.anchor is not None and self.anchor <= as_utc(dt) else None

    def to_json(self) -> str:
        return "@once"


def parse_schedule(
    value: Any, anchor: datetime | None = None, timezone: str = UTC_NAME
) -> Schedule:
    """Build a Schedule from what an author may write: None, a preset, 5-field cron, timedelta;
    cron and presets tick in `timezone` (an IANA name).

    Raises DagDefinitionError (without a DAG name; the DAG adds it) for anything else.
    """
    check_timezone(timezone)
    anchor = as_utc(anchor) if anchor is not None else None
    if value is None:
        return ManualSchedule()
    if isinstance(value, timedelta):
        if not timedelta(0) < value <= LONGEST_INTERVAL:
            raise DagDefinitionError(
                f"schedule must be a positive timedelta of at most {LONGEST_INTERVAL.days} days, "
                f"got {value!r}"
            )
        return IntervalSchedule(value, anchor if anchor is not None else EPOCH)
    if not isinstance(value, str):
        raise DagDefinitionError(
            f"schedule must be a cron string, a preset, a timedelta or None, got {value!r}"
        )
    text = " ".join(value.split())
    if text.startswith("@"):
        if text not in PRESETS:
            raise DagDefinitionError(
                f"unknown schedule preset {value!r} (known: {', '.join(PRESETS)})"
            )
        expression = PRESETS[text]
        if expression is None:
            return OnceSchedule(anchor)
        return CronSchedule(text, expression, timezone)
    return CronSchedule(text, _checked_cron(value, text), timezone)


def _checked_cron(value: str, text: str) -> str:
    from croniter import croniter

    fields = len(text.split())
    if fields != 5:
        raise DagDefinitionError(
            f"invalid cron schedule {value!r}: expected 5 fields "
            f"(minute hour day month weekday), got {fields}"
        )
    if not croniter.is_valid(text):
        raise DagDefinitionError(f"invalid cron schedule {value!r}")
    try:  # valid syntax can still never fire (e.g. "0 0 31 2 *")
        croniter(text, EPOCH).get_next(datetime)
    except (ValueError, KeyError) as exc:
        raise DagDefinitionError(f"invalid cron schedule {value!r}: {exc}") from None
    return text


def schedule_from_json(
    text: str | None, anchor: datetime | None = None, timezone: str | None = None
) -> Schedule:
    """Rebuild a schedule from its stored string; pass the DAG's start_date as `anchor` and
    its timezone (the structure's `timezone`; absent means UTC)."""
    if text is not None and text.startswith(_TIMEDELTA_PREFIX):
        try:
            interval = timedelta(seconds=float(text.removeprefix(_TIMEDELTA_PREFIX)))
        except (ValueError, OverflowError):  # not a number, inf, nan, or too long
            raise DagDefinitionError(f"invalid stored schedule {text!r}") from None
        return parse_schedule(interval, anchor, timezone or UTC_NAME)
    return parse_schedule(text, anchor, timezone or UTC_NAME)
