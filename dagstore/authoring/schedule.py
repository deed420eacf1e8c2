"""When a DAG's runs are due: one small value type shared by authoring and the scheduler.

The database stores a schedule as the string `Schedule.to_json()` returns, so the scheduler can
rebuild it (`schedule_from_json`) without importing the DAG file. All times are tz-aware UTC.
croniter is imported only when a cron schedule is actually built or evaluated, so `import
pinflow` in a DAG file stays cheap.

Interval schedules (`timedelta`) and `@once` need a point in time to count from: the DAG's
start_date. It is not part of the stored string (that stays "timedelta:<seconds>"), so pass it
as `anchor=` when rebuilding; without it an interval counts from the Unix epoch and `@once`
never fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

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
    stored form is what the author wrote)."""

    text: str
    expression: str
    kind: ClassVar[str] = "cron"

    def next_after(self, dt: datetime) -> datetime | None:
        from croniter import croniter

        start = as_utc(dt)
        tick = as_utc(croniter(self.expression, start).get_next(datetime))
        while tick <= start:  # defensive: croniter works in whole seconds
            tick = as_utc(croniter(self.expression, tick).get_next(datetime))
        return tick

    def latest_at_or_before(self, dt: datetime) -> datetime | None:
        from croniter import croniter

        end = as_utc(dt)
        # croniter works in whole seconds: step from just past `end` back to the tick.
        tick = as_utc(croniter(self.expression, end + timedelta(seconds=1)).get_prev(datetime))
        while tick > end:
            tick = as_utc(croniter(self.expression, tick).get_prev(datetime))
        return tick.replace(fold=0)

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


def parse_schedule(value: Any, anchor: datetime | None = None) -> Schedule:
    """Build a Schedule from what an author may write: None, a preset, 5-field cron, timedelta.

    Raises DagDefinitionError (without a DAG name; the DAG adds it) for anything else.
    """
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
        return OnceSchedule(anchor) if expression is None else CronSchedule(text, expression)
    return CronSchedule(text, _checked_cron(value, text))


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


def schedule_from_json(text: str | None, anchor: datetime | None = None) -> Schedule:
    """Rebuild a schedule from its stored string; pass the DAG's start_date as `anchor`."""
    if text is not None and text.startswith(_TIMEDELTA_PREFIX):
        try:
            interval = timedelta(seconds=float(text.removeprefix(_TIMEDELTA_PREFIX)))
        except (ValueError, OverflowError):  # not a number, inf, nan, or too long
            raise DagDefinitionError(f"invalid stored schedule {text!r}") from None
        return parse_schedule(interval, anchor)
    return parse_schedule(text, anchor)
