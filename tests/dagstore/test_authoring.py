"""The DAG authoring API: what DAG files can write, what it becomes, and what it refuses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dagstore.authoring.dag import DAG, collecting
from dagstore.authoring.schedule import parse_schedule, schedule_from_json
from dagstore.authoring.task import MissingUpstreamResult, TaskOutput, task
from dagstore.core.errors import DagDefinitionError

ROOT = Path(__file__).resolve().parents[2]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def structure_tasks(dag: DAG) -> dict[str, dict]:
    return {t["task_id"]: t for t in dag.to_structure()["tasks"]}


# --- good definitions ---------------------------------------------------------------------------


def test_taskflow_wires_dependency_and_value() -> None:
    with collecting() as found, DAG("etl", schedule="*/5 * * * *", start_date="2026-01-01") as dag:

        @task(retries=2, retry_delay=5, timeout=600)
        def extract() -> dict:
            return {"rows": 3}

        @task
        def load(data: dict, factor: int = 1) -> int:
            return data["rows"] * factor

        out = load(extract(), factor=2)

    assert found == [dag]
    assert isinstance(out, TaskOutput) and out.task_id == "load"
    assert dag.task_ids == ["extract", "load"]
    assert dag.get_task("load").upstream_task_ids == {"extract"}
    assert dag.get_task("extract").call({}, {}) == {"rows": 3}
    assert dag.get_task("load").call({"extract": {"rows": 4}}, {}) == 8


def test_decorating_alone_adds_no_task_and_repeated_calls_get_suffixes() -> None:
    with DAG("repeat") as dag:

        @task
        def step(n: int) -> int:
            return n

        assert dag.tasks == {}
        first = step(1)
        second = step(2)
        third = step(3)

    assert [first.task_id, second.task_id, third.task_id] == ["step", "step__1", "step__2"]
    assert dag.get_task("step__2").call({}, {}) == 3  # literal arguments are bound at definition


def test_outputs_nested_in_lists_and_dicts_and_keyword_arguments() -> None:
    with DAG("nested") as dag:

        @task
        def number(n: int) -> int:
            return n

        @task
        def combine(values: list, named: dict, extra: int) -> list:
            return [values, named, extra]

        a, b, c = number(1), number(2), number(3)
        combine([a, 10], {"b": b}, extra=c)

    combined = dag.get_task("combine")
    assert combined.upstream_task_ids == {"number", "number__1", "number__2"}
    results = {"number": 1, "number__1": 2, "number__2": 3}
    assert combined.call(results, {}) == [[1, 10], {"b": 2}, 3]


def test_shift_operators_and_lists_return_the_right_hand_side() -> None:
    with DAG("shifts") as dag:

        @task
        def t() -> None:
            return None

        a, b, c, d, e = t(), t(), t(), t(), t()
        assert (a >> b) is b
        assert ([a, b] >> c) is c
        assert (c >> [d, e]) == [d, e]
        assert (e << d) is d

    ups = {tid: t["upstream"] for tid, t in structure_tasks(dag).items()}
    assert ups["t__1"] == ["t"]
    assert ups["t__2"] == ["t", "t__1"]
    assert ups["t__3"] == ["t__2"]
    assert ups["t__4"] == ["t__2", "t__3"]


def test_list_lshift_means_list_depends_on_right_hand_side() -> None:
    with DAG("lshift") as dag:

        @task
        def t() -> None:
            return None

        a, b, c = t(), t(), t()
        [a, b] << c

    assert dag.get_task("t").upstream_task_ids == {"t__2"}
    assert dag.get_task("t__1").upstream_task_ids == {"t__2"}


def test_shift_only_wires_order_not_values() -> None:
    with DAG("order_only") as dag:

        @task
        def first() -> int:
            return 1

        @task
        def second() -> str:
            return "no inputs"

        first() >> second()

    assert dag.get_task("second").call({"first": 1}, {}) == "no inputs"


def test_context_parameter_is_given_at_run_time_only() -> None:
    with DAG("ctx") as dag:

        @task
        def produce() -> int:
            return 7

        @task
        def report(value: int, context: dict) -> dict:
            return {"value": value, **context}

        report(produce())

    context = {
        "run_id": "r1",
        "logical_date": "2026-01-01T00:00:00+00:00",
        "sha": "a" * 40,
        "conf": {"x": 1},
        "try_number": 2,
    }
    got = dag.get_task("report").call({"produce": 7}, context)
    assert got == {"value": 7, "dag_id": "ctx", "task_id": "report", **context}


def test_missing_upstream_result_is_a_clear_error() -> None:
    with DAG("missing") as dag:

        @task
        def a() -> int:
            return 1

        @task
        def b(x: int) -> int:
            return x

        b(a())

    with pytest.raises(MissingUpstreamResult, match="'b'.*'a'"):
        dag.get_task("b").call({}, {})


def test_default_args_apply_unless_the_decorator_overrides() -> None:
    default_args = {"retries": 3, "retry_delay": timedelta(minutes=1), "timeout": 30, "queue": "q"}
    with DAG("defaults", default_args=default_args) as dag:

        @task
        def plain() -> None:
            return None

        @task(retries=0, timeout=None, queue="fast", retry_delay=1.5)
        def custom() -> None:
            return None

        plain()
        custom()

    tasks = structure_tasks(dag)
    assert tasks["plain"] | {"upstream": []} == {
        "task_id": "plain",
        "upstream": [],
        "retries": 3,
        "retry_delay": 60.0,
        "timeout": 30.0,
        "queue": "q",
        "function": "test_default_args_apply_unless_the_decorator_overrides.<locals>.plain",
    }
    assert (tasks["custom"]["retries"], tasks["custom"]["timeout"]) == (0, None)
    assert (tasks["custom"]["queue"], tasks["custom"]["retry_delay"]) == ("fast", 1.5)


def test_builtin_defaults_and_override() -> None:
    @task
    def shared() -> None:
        return None

    with DAG("override") as dag:
        shared()
        shared.override(task_id="shared_eu", retries=4)()

    tasks = structure_tasks(dag)
    assert tasks["shared"]["retries"] == 0
    assert tasks["shared"]["retry_delay"] == 0.0
    assert tasks["shared"]["timeout"] is None
    assert tasks["shared"]["queue"] == "default"
    assert tasks["shared_eu"]["retries"] == 4


def test_one_function_in_two_dags() -> None:
    @task
    def shared() -> int:
        return 1

    with DAG("one") as one:
        shared()
    with DAG("two") as two:
        shared() >> shared()

    assert one.task_ids == ["shared"]
    assert two.task_ids == ["shared", "shared__1"]


def test_dates_are_stored_as_utc() -> None:
    cases = [
        ("2026-01-01", utc(2026, 1, 1)),
        (date(2026, 1, 1), utc(2026, 1, 1)),
        (datetime(2026, 1, 1, 12), utc(2026, 1, 1, 12)),
        (datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))), utc(2026, 1, 1, 10)),
        ("2026-01-01T12:00:00+02:00", utc(2026, 1, 1, 10)),
    ]
    for value, expected in cases:
        dag = DAG("dates", schedule="@daily", start_date=value, end_date="2027-01-01")
        assert dag.start_date == expected
        assert dag.start_date.tzinfo is UTC
        assert dag.end_date == utc(2027, 1, 1)


def test_collecting_captures_only_finished_dags_and_nested_ones() -> None:
    with collecting() as found:
        with DAG("outer") as outer, DAG("inner") as inner:
            pass
        with pytest.raises(RuntimeError), DAG("broken"):
            raise RuntimeError("boom")
        DAG("never_entered")
    assert found == [inner, outer]
    with DAG("outside"):
        pass
    assert [d.dag_id for d in found] == ["inner", "outer"]


# --- schedules ----------------------------------------------------------------------------------


def test_cron_schedule_next_after_is_strictly_after() -> None:
    s = parse_schedule("*/5 * * * *")
    assert s.next_after(utc(2026, 1, 1, 0, 0)) == utc(2026, 1, 1, 0, 5)
    assert s.next_after(utc(2026, 1, 1, 0, 3)) == utc(2026, 1, 1, 0, 5)
    assert s.next_after(datetime(2026, 1, 1, 0, 5, 0, 500)) == utc(2026, 1, 1, 0, 10)
    assert s.to_json() == "*/5 * * * *"
    assert parse_schedule("  */5  *  * * *").to_json() == "*/5 * * * *"


@pytest.mark.parametrize(
    ("preset", "after", "expected"),
    [
        ("@hourly", utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 1, 0)),
        ("@daily", utc(2026, 1, 1, 0, 0), utc(2026, 1, 2)),
        ("@weekly", utc(2026, 1, 1), utc(2026, 1, 4)),  # Sunday midnight
        ("@monthly", utc(2026, 1, 1), utc(2026, 2, 1)),
        ("@yearly", utc(2026, 1, 1), utc(2027, 1, 1)),
    ],
)
def test_presets(preset: str, after: datetime, expected: datetime) -> None:
    s = parse_schedule(preset)
    assert s.next_after(after) == expected
    assert s.to_json() == preset
    assert schedule_from_json(preset).next_after(after) == expected


def test_timedelta_schedule_counts_from_start_date() -> None:
    dag = DAG("every_90_min", schedule=timedelta(minutes=90), start_date="2026-01-01T00:10")
    s = dag.schedule
    assert s.to_json() == "timedelta:5400"
    assert s.next_after(utc(2025, 12, 1)) == utc(2026, 1, 1, 0, 10)
    assert s.next_after(utc(2026, 1, 1, 0, 10)) == utc(2026, 1, 1, 1, 40)
    assert s.next_after(utc(2026, 1, 1, 1, 0)) == utc(2026, 1, 1, 1, 40)
    rebuilt = schedule_from_json(s.to_json(), anchor=dag.start_date)
    assert rebuilt == s
    assert schedule_from_json("timedelta:0.5").to_json() == "timedelta:0.5"
    # without an anchor an interval counts from the epoch
    assert schedule_from_json("timedelta:3600").next_after(utc(2026, 1, 1, 0, 30)) == utc(
        2026, 1, 1, 1
    )


def test_once_yields_exactly_one_run_at_start_date() -> None:
    dag = DAG("once", schedule="@once", start_date="2026-03-01")
    s = dag.schedule
    assert s.to_json() == "@once"
    assert s.next_after(utc(2026, 1, 1)) == utc(2026, 3, 1)
    assert s.next_after(utc(2026, 3, 1)) is None
    assert schedule_from_json("@once", anchor=utc(2026, 3, 1)).next_after(utc(2020, 1, 1)) == utc(
        2026, 3, 1
    )


def test_manual_schedule() -> None:
    dag = DAG("manual")
    assert dag.schedule.is_manual
    assert dag.schedule.to_json() is None
    assert dag.schedule.next_after(utc(2026, 1, 1)) is None
    assert schedule_from_json(None).is_manual
    assert dag.to_structure()["schedule"] is None


def test_schedule_json_round_trip() -> None:
    for value in ["0 3 * * 1-5", "@daily", "@once", timedelta(hours=1), None]:
        s = parse_schedule(value, anchor=utc(2026, 1, 1))
        assert schedule_from_json(s.to_json(), anchor=utc(2026, 1, 1)) == s


# --- structure ----------------------------------------------------------------------------------


def build_diamond(dag_id: str = "diamond", reverse: bool = False) -> DAG:
    with DAG(
        dag_id,
        schedule="@daily",
        start_date="2026-01-01",
        end_date=date(2026, 12, 31),
        catchup=True,
        max_active_runs=2,
        tags=["b", "a"],
        description="four tasks",
    ) as dag:

        @task
        def start() -> int:
            return 1

        @task
        def left(x: int) -> int:
            return x

        @task
        def right(x: int) -> int:
            return x

        @task
        def end(a: int, b: int) -> int:
            return a + b

        s = start()
        branches = (right(s), left(s)) if reverse else (left(s), right(s))
        end(*branches)
    return dag


def test_to_structure_is_json_and_topological() -> None:
    structure = build_diamond().to_structure()
    assert json.loads(json.dumps(structure)) == structure
    assert {k: v for k, v in structure.items() if k != "tasks"} == {
        "dag_id": "diamond",
        "schedule": "@daily",
        "start_date": "2026-01-01T00:00:00+00:00",
        "end_date": "2026-12-31T00:00:00+00:00",
        "catchup": True,
        "max_active_runs": 2,
        "tags": ["a", "b"],
        "description": "four tasks",
    }
    assert [t["task_id"] for t in structure["tasks"]] == ["start", "left", "right", "end"]
    assert structure["tasks"][3]["upstream"] == ["left", "right"]
    assert structure["tasks"][3]["function"].endswith("build_diamond.<locals>.end")


def test_structure_hash_is_stable_and_sensitive() -> None:
    first = build_diamond().structure_hash()
    assert len(first) == 64
    assert build_diamond().structure_hash() == first
    assert build_diamond(reverse=True).structure_hash() == first  # definition order is irrelevant
    assert build_diamond("other").structure_hash() != first


# --- bad definitions ----------------------------------------------------------------------------


def raises(*fragments: str) -> pytest.RaisesContext:
    pattern = ".*".join(re.escape(f) for f in fragments)
    return pytest.raises(DagDefinitionError, match=pattern)


def test_cycle_names_the_tasks() -> None:
    with raises("'loop'", "cycle", "a -> b -> c -> a"), DAG("loop"):

        @task
        def a() -> None:
            return None

        @task
        def b() -> None:
            return None

        @task
        def c() -> None:
            return None

        ta, tb, tc = a(), b(), c()
        ta >> tb >> tc >> ta


def test_self_dependency_is_a_cycle() -> None:
    with raises("'selfish'", "cycle", "a -> a"), DAG("selfish"):

        @task
        def a() -> None:
            return None

        x = a()
        x >> x


def test_cycle_fails_collecting_too() -> None:
    with collecting() as found, pytest.raises(DagDefinitionError), DAG("loop2"):

        @task
        def a() -> None:
            return None

        x, y = a(), a()
        x >> y >> x
    assert found == []


def test_duplicate_task_ids() -> None:
    with raises("'dupes'", "duplicate task_id 'load'"), DAG("dupes"):

        @task(task_id="load")
        def one() -> None:
            return None

        @task(task_id="load")
        def two() -> None:
            return None

        one()
        two()


def test_duplicate_explicit_id_from_same_function() -> None:
    with raises("'dupes2'", "duplicate task_id 'x'"), DAG("dupes2"):

        @task(task_id="x")
        def one() -> None:
            return None

        one()
        one()


def test_duplicate_dag_ids_in_one_collection() -> None:
    with collecting(), raises("'twice'", "more than once"):
        with DAG("twice"):
            pass
        with DAG("twice"):
            pass


@pytest.mark.parametrize("dag_id", ["", "-x", ".x", "has space", "slash/no", "x" * 251, "a\n"])
def test_invalid_dag_id(dag_id: str) -> None:
    with raises("invalid dag_id"):
        DAG(dag_id)


def test_valid_ids_at_the_edges() -> None:
    DAG("_a.b-c9")
    DAG("x" * 250)


def test_invalid_task_id() -> None:
    with raises("'bad_task'", "invalid task_id 'no way'"), DAG("bad_task"):

        @task(task_id="no way")
        def t() -> None:
            return None

        t()


@pytest.mark.parametrize(
    "cron", ["not a cron", "61 * * * *", "* * * *", "0 0 * * * *", "0 0 31 2 *", "@fortnightly"]
)
def test_bad_cron(cron: str) -> None:
    with raises("'bad_cron'", "schedule", cron.split()[0]):
        DAG("bad_cron", schedule=cron, start_date="2026-01-01")


def test_bad_schedule_types() -> None:
    with raises("'bad_sched'", "positive timedelta"):
        DAG("bad_sched", schedule=timedelta(0), start_date="2026-01-01")
    with raises("'bad_sched'", "schedule must be"):
        DAG("bad_sched", schedule=5, start_date="2026-01-01")


def test_scheduled_dag_needs_start_date() -> None:
    with raises("'no_start'", "start_date is required"):
        DAG("no_start", schedule="@daily")
    DAG("no_start_manual")  # a manual DAG does not


def test_end_before_start() -> None:
    with raises("'backwards'", "end_date", "before", "start_date"):
        DAG("backwards", schedule="@daily", start_date="2026-02-01", end_date="2026-01-01")


def test_unparseable_date() -> None:
    with raises("'bad_date'", "start_date 'tomorrow'"):
        DAG("bad_date", schedule="@daily", start_date="tomorrow")


@pytest.mark.parametrize("value", [0, -1])
def test_max_active_runs_below_one(value: int) -> None:
    with raises("'runs'", "max_active_runs must be >= 1"):
        DAG("runs", max_active_runs=value)


def test_task_called_outside_a_dag() -> None:
    @task
    def lonely() -> None:
        return None

    with raises("'lonely'", "outside"):
        lonely()


def test_dependency_across_dags_by_shift() -> None:
    @task
    def t() -> None:
        return None

    with DAG("first"):
        a = t()
    with raises("'second'", "another DAG", "'first'"), DAG("second"):
        b = t()
        a >> b


def test_dependency_across_dags_by_argument() -> None:
    @task
    def t(x: object = None) -> None:
        return None

    with DAG("outer_dag"):
        a = t()
        with raises("'inner_dag'", "another DAG", "'outer_dag'"), DAG("inner_dag"):
            t(a)


def test_negative_retries() -> None:
    with raises("'neg'", "task 'r'", "negative retries"), DAG("neg"):

        @task(retries=-1)
        def r() -> None:
            return None


def test_negative_retries_in_default_args() -> None:
    with raises("'neg_defaults'", "default_args", "negative retries"):
        DAG("neg_defaults", default_args={"retries": -2})


def test_unknown_default_arg() -> None:
    with raises("'typo'", "unknown task option", "'retires'"):
        DAG("typo", default_args={"retires": 1})


def test_bad_arguments_to_a_task_call() -> None:
    with raises("'args'", "task 'f'", "bad arguments"), DAG("args"):

        @task
        def f(x: int) -> int:
            return x

        f()


def test_context_may_not_be_bound() -> None:
    with raises("'ctx_bound'", "context"), DAG("ctx_bound"):

        @task
        def f(context: dict) -> None:
            return None

        f(context={})


def test_shift_with_an_uncalled_task_function() -> None:
    with raises("'uncalled'", "call g"), DAG("uncalled"):

        @task
        def f() -> None:
            return None

        @task
        def g() -> None:
            return None

        f() >> g


def test_wiring_after_the_block_is_refused() -> None:
    with DAG("closed") as dag:

        @task
        def f() -> None:
            return None

        a, b = f(), f()
    with raises("'closed'", "outside its `with` block"):
        a >> b
    assert dag.get_task("f__1").upstream_task_ids == set()


# --- import cost --------------------------------------------------------------------------------


def test_importing_the_authoring_api_stays_cheap() -> None:
    code = (
        "import sys, dagstore.authoring.dag, dagstore.authoring.task, dagstore.authoring.schedule\n"
        "heavy = [m for m in ('fastapi', 'sqlalchemy', 'dulwich', 'croniter')\n"
        "         if any(n == m or n.startswith(m + '.') for n in sys.modules)]\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == ""
