"""`timezone=`: cron schedules tick in a zone's wall clock through DST (issue 28, point 1).

The answers are checked against croniter's own zone-aware walk: where a wall time does not
exist (spring forward) both run at the first minute after the gap; where a wall time exists
twice (fall back) croniter runs a daily job twice and pinflow once, as DESIGN.md fixes. An
expression that fires every hour keeps its period in real time, as croniter (and Airflow) do.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from dagstore.authoring.dag import DAG
from dagstore.authoring.schedule import parse_schedule, schedule_from_json
from dagstore.core.errors import DagDefinitionError
from dagstore.parsing.results import InvalidDag, check_dag
from scheduler.timetable import due_runs

# (zone, expression, local start of the walk): the spring and autumn transitions of 2026.
SPRING = [
    ("Europe/Berlin", "30 2 * * *", datetime(2026, 3, 26)),
    ("Europe/Berlin", "0 2 * * *", datetime(2026, 3, 26)),
    ("America/New_York", "30 2 * * *", datetime(2026, 3, 5)),
    ("America/New_York", "45 2 * * 0", datetime(2026, 2, 25)),
]
AUTUMN = [
    ("Europe/Berlin", "30 2 * * *", datetime(2026, 10, 22)),
    ("America/New_York", "30 1 * * *", datetime(2026, 10, 29)),
]
HOURLY = [
    ("Europe/Berlin", "*/30 * * * *", datetime(2026, 10, 24, 23)),
    ("Europe/Berlin", "15 * * * *", datetime(2026, 3, 28, 23)),
    ("America/New_York", "0 * * * *", datetime(2026, 11, 1, 0)),
    ("America/New_York", "0 * * * *", datetime(2026, 3, 8, 0)),
]


def walk_ours(zone: str, expression: str, start: datetime, n: int) -> list[datetime]:
    schedule = parse_schedule(expression, timezone=zone)
    tick = start.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)
    out = []
    for _ in range(n):
        tick = schedule.next_after(tick)
        out.append(tick)
    return out


def walk_croniter(zone: str, expression: str, start: datetime, n: int) -> list[datetime]:
    ticks = croniter(expression, start.replace(tzinfo=ZoneInfo(zone)))
    return [ticks.get_next(datetime).astimezone(UTC) for _ in range(n)]


@pytest.mark.parametrize(("zone", "expression", "start"), SPRING + HOURLY)
def test_spring_forward_and_hourly_agree_with_croniter(zone, expression, start):
    assert walk_ours(zone, expression, start, 8) == walk_croniter(zone, expression, start, 8)


@pytest.mark.parametrize(("zone", "expression", "start"), AUTUMN)
def test_fall_back_runs_a_repeated_wall_time_once(zone, expression, start):
    ours = walk_ours(zone, expression, start, 6)
    theirs = walk_croniter(zone, expression, start, 7)
    local = [t.astimezone(ZoneInfo(zone)).replace(tzinfo=None) for t in theirs]
    # croniter runs the repeated wall time twice; dropping its second run gives ours
    repeated = [i for i in range(1, len(local)) if local[i] == local[i - 1]]
    assert len(repeated) == 1
    del theirs[repeated[0]]
    assert ours == theirs[:6]
    assert len({t.astimezone(ZoneInfo(zone)).date() for t in ours}) == 6  # once a day


def test_spring_gap_runs_at_the_first_minute_after_it():
    berlin = ZoneInfo("Europe/Berlin")
    ours = walk_ours("Europe/Berlin", "30 2 * * *", datetime(2026, 3, 28, 12), 2)
    assert [t.astimezone(berlin).strftime("%d %H:%M") for t in ours] == ["29 03:00", "30 02:30"]
    assert ours[0] == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


@pytest.mark.parametrize(("zone", "expression", "start"), SPRING + AUTUMN + HOURLY)
def test_latest_at_or_before_is_the_tick_walked_to(zone, expression, start):
    schedule = parse_schedule(expression, timezone=zone)
    for tick in walk_ours(zone, expression, start, 6):
        assert schedule.latest_at_or_before(tick) == tick
        assert schedule.latest_at_or_before(tick + timedelta(seconds=59)) == tick
        before = schedule.latest_at_or_before(tick - timedelta(seconds=1))
        assert before is not None and before < tick
        assert schedule.next_after(before) == tick


def test_a_preset_ticks_in_the_zone_and_the_structure_keeps_it():
    with DAG("berlin", schedule="@daily", start_date="2026-01-01", timezone="Europe/Berlin") as dag:
        pass
    structure = dag.to_structure()
    assert structure["timezone"] == "Europe/Berlin"
    assert check_dag(structure)["timezone"] == "Europe/Berlin"
    schedule = schedule_from_json(structure["schedule"], timezone=structure["timezone"])
    tick = schedule.next_after(datetime(2026, 7, 1, 12, tzinfo=UTC))
    assert tick == datetime(2026, 7, 1, 22, tzinfo=UTC)  # midnight in Berlin, summer time
    with DAG("utc", schedule="@daily", start_date="2026-01-01") as plain:
        pass
    assert "timezone" not in plain.to_structure()  # old structures keep their hash


def test_the_scheduler_creates_runs_at_local_ticks_with_utc_logical_dates():
    with DAG("ny", schedule="0 9 * * *", start_date="2026-03-06", timezone="America/New_York",
             catchup=True) as dag:  # fmt: skip
        pass
    structure = check_dag(dag.to_structure())
    due = due_runs(structure, None, datetime(2026, 3, 10, tzinfo=UTC))
    assert due.logical_dates == [
        datetime(2026, 3, 6, 14, tzinfo=UTC),  # EST: UTC-5
        datetime(2026, 3, 7, 14, tzinfo=UTC),
        datetime(2026, 3, 8, 13, tzinfo=UTC),  # EDT from March 8: UTC-4
        datetime(2026, 3, 9, 13, tzinfo=UTC),
    ]
    assert all(d.tzinfo is not None and d.utcoffset() == timedelta(0) for d in due.logical_dates)
    assert due.next_due_at == datetime(2026, 3, 10, 13, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["Mars/Olympus", "Europe/../etc/passwd", "", "localtime", 5])
def test_an_unknown_timezone_fails_the_dag(bad):
    with pytest.raises(DagDefinitionError, match="timezone"):
        DAG("bad", schedule="@daily", start_date="2026-01-01", timezone=bad)


def test_the_store_refuses_an_unknown_timezone_in_a_reported_structure():
    with DAG("fine", schedule="@daily", start_date="2026-01-01", timezone="Europe/Berlin") as dag:
        pass
    forged = dag.to_structure() | {"timezone": "Nowhere/Special"}
    with pytest.raises(InvalidDag, match="unknown timezone"):
        check_dag(forged)
