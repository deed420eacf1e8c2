"""When scheduled runs are due: catchup on and off, presets, intervals, end dates, @once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from scheduler.timetable import due_runs

NOW = datetime(2026, 11, 23, 21, 40, tzinfo=UTC)


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def dag(schedule: str, catchup: bool, start="2026-11-20T00:00:00+00:00", end=None) -> dict:
    return {"schedule": schedule, "catchup": catchup, "start_date": start, "end_date": end}


def test_catchup_creates_every_missed_tick_oldest_first():
    due = due_runs(dag("@daily", True), None, NOW)
    assert due.logical_dates == [at(20), at(21), at(22), at(23)]
    assert due.next_due_at == at(24)


def test_without_catchup_only_the_newest_tick():
    due = due_runs(dag("@daily", False), None, NOW)
    assert due.logical_dates == [at(23)]
    assert due.next_due_at == at(24)


def test_without_catchup_a_busy_cron_jumps_instead_of_walking():
    due = due_runs(dag("* * * * *", False, start="2000-01-01T00:00:00+00:00"), None, NOW)
    assert due.logical_dates == [at(23, 21, 40)]
    assert due.next_due_at == at(23, 21, 41)


def test_after_the_last_scheduled_date():
    due = due_runs(dag("@daily", True), at(22), NOW)
    assert due.logical_dates == [at(23)]
    assert due_runs(dag("@daily", True), at(23), NOW).logical_dates == []


def test_interval_counts_from_start_date():
    due = due_runs(dag("timedelta:7200", True, start="2026-11-23T17:00:00+00:00"), None, NOW)
    assert due.logical_dates == [at(23, 17), at(23, 19), at(23, 21)]
    assert due.next_due_at == at(23, 23)


def test_end_date_stops_the_schedule():
    due = due_runs(dag("@daily", True, end="2026-11-21T12:00:00+00:00"), None, NOW)
    assert due.logical_dates == [at(20), at(21)]
    assert due.next_due_at is None


def test_once():
    assert due_runs(dag("@once", False), None, NOW).logical_dates == [at(20)]
    assert due_runs(dag("@once", False), at(20), NOW).logical_dates == []
    future = due_runs(dag("@once", False, start="2026-12-01T00:00:00+00:00"), None, NOW)
    assert future.logical_dates == [] and future.next_due_at == datetime(2026, 12, 1, tzinfo=UTC)


def test_not_started_yet():
    due = due_runs(dag("@daily", True, start="2026-12-01T00:00:00+00:00"), None, NOW)
    assert due.logical_dates == [] and due.next_due_at == datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize("limit", [1, 2])
def test_limit_keeps_the_rest_for_later(limit):
    due = due_runs(dag("@daily", True), None, NOW, limit=limit)
    assert due.logical_dates == [at(20), at(21)][:limit]
    assert due.next_due_at == at(20 + limit)


def test_manual_dags_are_never_due():
    assert due_runs(dag(None, False), None, NOW).logical_dates == []
