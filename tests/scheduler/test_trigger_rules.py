"""Trigger rules, branches and the run's state, as the scheduler decides them (issue 28,
points 2, 3 and 7), on SQLite and PostgreSQL: every rule against upstreams that succeeded,
failed or were skipped by a branch, driven through the real claim and finish."""

from __future__ import annotations

import pytest

from dagstore.core.db import Database
from tests.support.authoring import drive, make_run, states, task

# Upstream kinds: "ok" succeeds, "bad" fails, "skip" is skipped by the branch `br`.
KINDS = {"ok": "ok", "bad": "bad", "skip": "skip_me"}


def rule_run(db: Database, rule: str, kinds: list[str]) -> tuple[str, dict[str, str]]:
    tasks = [
        task("br", branch=True),
        task("chosen", "br"),
        task("skip_me", "br"),
        task("ok"),
        task("bad"),
        task("t", *sorted({KINDS[k] for k in kinds}), trigger_rule=rule),
    ]
    pk = make_run(db, tasks)
    drive(db, pk, lambda t, i, _: (t != "bad", "chosen" if t == "br" else None))
    return states(db, pk)


# (rule, upstream kinds, the state of t): Airflow's meaning of each rule.
CASES = [
    ("all_success", ["ok"], "success"),
    ("all_success", ["ok", "bad"], "upstream_failed"),
    ("all_success", ["ok", "skip"], "skipped"),
    ("all_failed", ["bad"], "success"),
    ("all_failed", ["ok", "bad"], "skipped"),
    ("all_done", ["ok", "bad", "skip"], "success"),
    ("one_success", ["ok", "bad"], "success"),
    ("one_success", ["bad"], "upstream_failed"),
    ("one_success", ["skip"], "skipped"),
    ("one_failed", ["ok", "bad"], "success"),
    ("one_failed", ["ok"], "skipped"),
    ("none_failed", ["ok", "skip"], "success"),
    ("none_failed", ["ok", "bad"], "upstream_failed"),
    ("none_skipped", ["ok", "bad"], "success"),
    ("none_skipped", ["ok", "skip"], "skipped"),
    ("always", ["bad"], "success"),
    ("always", ["skip"], "success"),
]


@pytest.mark.parametrize(("rule", "kinds", "expected"), CASES)
def test_each_trigger_rule(db: Database, rule, kinds, expected):
    _, got = rule_run(db, rule, kinds)
    assert got["t"] == expected
    assert got["skip_me"] == "skipped" and got["chosen"] == "success"


def test_a_cleanup_task_never_hides_a_failure(db: Database):
    pk = make_run(db, [task("work"), task("cleanup", "work", trigger_rule="all_done")])
    drive(db, pk, lambda t, i, _: t != "work")
    run_state, got = states(db, pk)
    assert got == {"work": "failed", "cleanup": "success"}
    assert run_state == "failed"


def test_a_run_of_successes_and_skips_succeeds(db: Database):
    tasks = [task("br", branch=True), task("a", "br"), task("b", "br"), task("after_b", "b")]
    pk = make_run(db, tasks)
    drive(db, pk, lambda t, i, _: (True, ["a"] if t == "br" else None))
    run_state, got = states(db, pk)
    assert got == {"br": "success", "a": "success", "b": "skipped", "after_b": "skipped"}
    assert run_state == "success"


def test_a_branch_skip_spreads_only_to_tasks_whose_rule_needs_success(db: Database):
    tasks = [
        task("br", branch=True),
        task("a", "br"),
        task("b", "br"),
        task("needs_b", "b"),
        task("join", "a", "b", trigger_rule="none_failed"),
        task("report", "needs_b", trigger_rule="all_done"),
    ]
    pk = make_run(db, tasks)
    ran = drive(db, pk, lambda t, i, _: (True, "a" if t == "br" else None))
    _, got = states(db, pk)
    assert got["b"] == got["needs_b"] == "skipped"
    assert got["join"] == "success"  # joins after the chosen side
    assert got["report"] == "success"  # all_done runs after a skipped upstream too
    assert ("b", -1) not in ran and ("needs_b", -1) not in ran


def test_a_join_that_the_chosen_task_leads_to_is_not_skipped(db: Database):
    """br → a → join and br → join: choosing `a` keeps `join` (reached through it)."""
    tasks = [task("br", branch=True), task("a", "br"), task("join", "br", "a")]
    pk = make_run(db, tasks)
    drive(db, pk, lambda t, i, _: (True, "a" if t == "br" else None))
    assert states(db, pk)[1] == {"br": "success", "a": "success", "join": "success"}


def test_a_branch_returning_none_skips_every_direct_downstream(db: Database):
    tasks = [task("br", branch=True), task("a", "br"), task("b", "br")]
    pk = make_run(db, tasks)
    drive(db, pk, lambda t, i, _: (True, None))
    assert states(db, pk) == ("success", {"br": "success", "a": "skipped", "b": "skipped"})


def test_dagrun_timeout_fails_the_run_and_stops_its_tasks(db: Database):
    from datetime import timedelta

    from sqlalchemy import update

    from dagstore.core.db import db_time
    from scheduler.models import DagRun
    from scheduler.taskstate import queue_ready
    from scheduler.timeouts import fail_timed_out
    from scheduler.tries import claim

    pk = make_run(db, [task("slow"), task("after", "slow")], dagrun_timeout=60.0)
    with db.write() as session:
        now = db_time(session)
        for job in queue_ready(session, now, run_pk=pk):
            claim(session, job.ti_id, job.try_number, "w", now)
        assert fail_timed_out(session, now + timedelta(seconds=30)) == []  # within its time
        session.execute(
            update(DagRun).where(DagRun.id == pk).values(started_at=now - timedelta(seconds=61))
        )
    with db.write() as session:
        assert len(fail_timed_out(session, db_time(session))) == 1
    run_state, got = states(db, pk)
    assert run_state == "failed"
    assert got == {"slow": "canceled", "after": "canceled"}


def test_a_new_scheduled_run_starts_its_always_tasks_at_once():
    """The batch's first states are those `schedule_ready` would give: `always` runs at once."""
    from scheduler.batch import initial_state

    ids = {"a", "t"}
    assert initial_state({"upstream": ["a"], "trigger_rule": "always", "map_spec": None}, ids) == (
        "scheduled"
    )
    assert initial_state({"upstream": ["a"], "trigger_rule": None, "map_spec": None}, ids) == "none"
    mapped = {"upstream": [], "trigger_rule": "always", "map_spec": [{"arg": "x", "length": 2}]}
    assert initial_state(mapped, ids) == "none"  # expanded by schedule_ready
