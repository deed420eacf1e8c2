"""Mapped tasks in the scheduler (issue 28, point 4), on SQLite and PostgreSQL: expansion into
map_index 0..n-1, results passed on as a list in order, PINFLOW_MAX_MAP, empty lists, and
retry and clear per instance."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from dagstore.core.db import Database, db_time
from dagstore.core.errors import Conflict
from scheduler.clear import ClearRequest, clear
from scheduler.models import TaskInstance
from tests.support.authoring import drive, make_run, states, task
from tests.support.seed import run_id_of

MAPPED = [
    task("parts"),
    task("load", "parts", mapped=[{"arg": "part", "task": "parts"}]),
    task("combine", "load"),
]


def results(db: Database, pk: int) -> dict[str, object]:
    with db.read() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.result).where(
                TaskInstance.run_pk == pk
            )
        )
        return {(t if i < 0 else f"{t}[{i}]"): r for t, i, r in rows}


def test_one_instance_per_element_and_the_downstream_gets_the_list_in_order(db: Database):
    pk = make_run(db, MAPPED)
    seen = {}

    def outcome(task_id, map_index, _):
        if task_id == "parts":
            return True, ["a", "b", "c"]
        if task_id == "load":
            return True, f"loaded-{map_index}"
        return True, None

    ran = drive(db, pk, outcome)
    run_state, got = states(db, pk)
    assert run_state == "success"
    assert got == {"parts": "success", "load[0]": "success", "load[1]": "success",
                   "load[2]": "success", "combine": "success"}  # fmt: skip
    assert sorted(i for t, i in ran if t == "load") == [0, 1, 2]
    from scheduler.tries import upstream_results

    with db.read() as session:
        seen = upstream_results(session, pk, ["load", "parts"])
    assert seen == {"load": ["loaded-0", "loaded-1", "loaded-2"], "parts": ["a", "b", "c"]}


def test_each_instance_is_claimed_with_its_own_element(db: Database):
    from dagstore.authoring.mapping import map_call

    pk = make_run(db, MAPPED)
    drive(db, pk, lambda t, i, _: (t == "parts", ["x", "y"] if t == "parts" else None))
    with db.read() as session:
        rows = session.execute(
            select(TaskInstance.map_index, TaskInstance.map_spec).where(
                TaskInstance.run_pk == pk, TaskInstance.task_id == "load"
            )
        ).all()
    for map_index, spec in rows:
        values, positions = map_call(spec, map_index, {"parts": ["x", "y"]})
        assert values == {"part": ["x", "y"][map_index]} and positions == {"part": map_index}


def test_an_empty_list_skips_the_mapped_task(db: Database):
    pk = make_run(db, MAPPED)
    drive(db, pk, lambda t, i, _: (True, [] if t == "parts" else None))
    assert states(db, pk) == ("success", {"parts": "success", "load": "skipped",
                                          "combine": "skipped"})  # fmt: skip


def test_more_than_max_map_fails_the_task_with_a_clear_error(db: Database, monkeypatch):
    monkeypatch.setenv("PINFLOW_MAX_MAP", "3")
    pk = make_run(db, MAPPED)
    drive(db, pk, lambda t, i, _: (True, list(range(4)) if t == "parts" else None))
    run_state, got = states(db, pk)
    assert run_state == "failed"
    assert got == {"parts": "success", "load": "failed", "combine": "upstream_failed"}
    with db.read() as session:
        error = session.scalar(
            select(TaskInstance.error).where(
                TaskInstance.task_id == "load", TaskInstance.run_pk == pk
            )
        )
    assert "4 mapped instances, more than PINFLOW_MAX_MAP (3)" in error


def test_mapping_over_a_non_list_fails(db: Database):
    pk = make_run(db, MAPPED)
    drive(db, pk, lambda t, i, _: (True, {"not": "a list"} if t == "parts" else None))
    assert states(db, pk)[1]["load"] == "failed"


def test_a_literal_list_maps_a_root_task(db: Database):
    pk = make_run(db, [task("each", mapped=[{"arg": "n", "length": 2}]), task("after", "each")])
    ran = drive(db, pk)
    assert sorted(ran) == [("after", -1), ("each", 0), ("each", 1)]
    assert states(db, pk)[0] == "success"


def test_a_mapped_instance_retries_and_clears_alone(db: Database):
    tasks = [task("parts"), task("load", "parts", retries=1,
                                 mapped=[{"arg": "part", "task": "parts"}])]  # fmt: skip
    pk = make_run(db, tasks)
    tries: dict[int, int] = {}

    def outcome(task_id, map_index, _):
        if task_id == "parts":
            return True, [1, 2, 3]
        tries[map_index] = tries.get(map_index, 0) + 1
        return map_index != 1 or tries[map_index] > 1  # instance 1 fails its first try

    drive(db, pk, outcome)
    assert tries == {0: 1, 1: 2, 2: 1}  # only instance 1 was retried
    assert states(db, pk)[0] == "success"
    run_id = run_id_of(db, pk)
    with db.write() as session:
        cleared = clear(session, run_id, ClearRequest(["load[2]"]), db_time(session))
    assert cleared == ["load[2]"]
    assert states(db, pk)[1]["load[2]"] == "scheduled"  # ready again at once
    assert states(db, pk)[1]["load[0]"] == "success"
    drive(db, pk, outcome)
    assert tries == {0: 1, 1: 2, 2: 2}
    assert states(db, pk)[0] == "success"


def test_a_clear_that_would_change_what_an_expanded_task_maps_over_is_refused(db: Database):
    """Clearing `parts` reruns it and may return another list, but `load`'s instances stay as
    they were expanded: they would run over elements of a list they were not made from (the
    final review saw such a run succeed over wrong data). Until a clear re-expands, it says so
    and changes nothing; an instance alone, or the whole mapped task, still clears."""
    pk = make_run(db, MAPPED)
    drive(db, pk, lambda task_id, map_index, _: (True, [1, 2] if task_id == "parts" else 0))
    run_id = run_id_of(db, pk)
    before = states(db, pk)[1]
    for request in (ClearRequest(["parts"]), ClearRequest(["parts"], downstream=True),
                    ClearRequest(None)):  # fmt: skip
        with db.write() as session, pytest.raises(Conflict, match="expanded over"):
            clear(session, run_id, request, db_time(session))
        assert states(db, pk)[1] == before
    with db.write() as session:
        assert clear(session, run_id, ClearRequest(["load[1]"]), db_time(session)) == ["load[1]"]
