"""What DAG files write for issue 28 (trigger rules, branches, mapping, pools, callbacks,
limits) and what is refused while the file is imported, so a bad push fails at `git push`."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dagstore.authoring.dag import DAG
from dagstore.authoring.mapping import MapCall
from dagstore.authoring.task import task
from dagstore.core.errors import DagDefinitionError
from dagstore.parsing.results import InvalidDag, check_dag


def alert(context: dict) -> None:
    print("failed:", context["task_id"])


def tasks_of(dag: DAG) -> dict[str, dict]:
    return {t["task_id"]: t for t in check_dag(dag.to_structure())["tasks"]}


def test_every_option_reaches_the_stored_structure():
    @task
    def parts() -> list:
        return [1, 2]

    @task(pool="warehouse", trigger_rule="all_done", on_failure=alert)
    def load(part: int, db: str) -> int:
        return part

    @task.branch
    def choose() -> str:
        return "publish"

    @task
    def publish() -> None: ...

    @task
    def hold() -> None: ...

    with DAG("nightly", schedule="30 2 * * *", start_date="2026-03-01",
             timezone="Europe/Berlin", on_failure=alert, dagrun_timeout=timedelta(hours=2),
             max_active_tasks=8) as dag:  # fmt: skip
        load.partial(db="x").expand(part=parts())
        choose() >> [publish(), hold()]
    stored = check_dag(dag.to_structure())
    assert stored["timezone"] == "Europe/Berlin"
    assert stored["dagrun_timeout"] == 7200.0
    assert stored["max_active_tasks"] == 8
    assert stored["on_failure"] == "alert"
    got = tasks_of(dag)
    assert got["load"]["pool"] == "warehouse"
    assert got["load"]["trigger_rule"] == "all_done"
    assert got["load"]["on_failure"] == "alert"
    assert got["load"]["mapped"] == [{"arg": "part", "task": "parts"}]
    assert got["choose"]["branch"] is True
    assert stored["structure_hash"] == dag.structure_hash()


def test_a_dag_without_the_new_options_keeps_its_structure():
    @task
    def only() -> None: ...

    with DAG("plain") as dag:
        only()
    assert set(dag.to_structure()["tasks"][0]) == {
        "task_id", "upstream", "retries", "retry_delay", "timeout", "queue", "function"
    }  # fmt: skip
    assert "timezone" not in dag.to_structure()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trigger_rule": "all_good"}, "unknown trigger_rule 'all_good'"),
        ({"pool": "no spaces"}, "pool must be a pool name"),
        ({"on_failure": "alert"}, "on_failure must be a function"),
    ],
)
def test_bad_task_options_fail_at_the_decorator(options, message):
    with pytest.raises(DagDefinitionError, match=message):

        @task(**options)
        def broken() -> None: ...


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dagrun_timeout": -1}, "dagrun_timeout must be > 0"),
        ({"max_active_tasks": 0}, "max_active_tasks must be an int"),
        ({"on_failure": 3}, "on_failure must be a function"),
    ],
)
def test_bad_dag_options_fail(options, message):
    with pytest.raises(DagDefinitionError, match=message):
        DAG("bad", **options)


def test_a_branch_to_a_task_that_is_not_downstream_fails_the_import():
    @task.branch
    def choose() -> str:
        return "publsh"  # a typo

    @task
    def publish() -> None: ...

    with (
        pytest.raises(DagDefinitionError, match="returns 'publsh', which is not one of"),
        DAG("typo"),
    ):
        choose() >> publish()


def test_a_branch_without_downstream_fails():
    @task.branch
    def choose() -> None:
        return None

    with pytest.raises(DagDefinitionError, match="has no downstream task"), DAG("lonely"):
        choose()


def test_the_store_refuses_forged_rules_and_branches():
    @task.branch
    def choose() -> str:
        return "a"

    @task
    def a() -> None: ...

    with DAG("fine") as dag:
        choose() >> a()
    structure = dag.to_structure()
    structure["tasks"][1]["trigger_rule"] = "sometimes"
    with pytest.raises(InvalidDag, match="trigger_rule"):
        check_dag(structure)
    structure = dag.to_structure()
    structure["tasks"][1]["mapped"] = [{"arg": "x", "task": "elsewhere"}]
    with pytest.raises(InvalidDag, match="not upstream"):
        check_dag(structure)


def test_mapping_calls_each_instance_with_its_element_and_partial_arguments():
    @task
    def parts() -> list:
        return ["a", "b"]

    @task
    def load(part: str, db: str, n: int) -> str:
        return f"{db}:{part}:{n}"

    with DAG("mapped") as dag:
        load.partial(db="wh").expand(part=parts(), n=[1, 2, 3])
    loader = dag.get_task("load")
    assert loader.upstream_task_ids == {"parts"}
    # instance 4 of 2 x 3: part index 1, n index 1 (the last argument varies fastest)
    assert loader.call({}, {}, MapCall({"part": "b"}, {"part": 1, "n": 1})) == "wh:b:2"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda f, up: f.expand(), "at least one keyword argument"),
        (lambda f, up: f.expand(part=5), "maps over an upstream task's result or a list"),
        (lambda f, up: f.partial(part=1).expand(part=up()), "given to both partial"),
    ],
)
def test_bad_expand_calls_fail(build, message):
    @task
    def parts() -> list:
        return []

    @task
    def load(part: int) -> None: ...

    with pytest.raises(DagDefinitionError, match=message), DAG("bad_map"):
        build(load, parts)
