"""`pinflow dags test` decides as a real run does (issue 28): trigger rules, branches, mapped
instances, on_failure; a skipped task is no failure of the test run, a failed one is."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

PINFLOW = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "pinflow")

DAG_FILE = """
from pinflow import DAG, task

def alert(context):
    print("ALERT for", context["task_id"], "map", context["map_index"])

with DAG("local_authoring", schedule=None, on_failure=alert):
    @task
    def parts():
        return [1, 2, 3]

    @task
    def double(n):
        if n == {fail_on}:
            raise ValueError("no")
        return n * 2

    @task
    def total(values):
        return sum(values)

    @task.branch
    def pick():
        return ["yes"]

    @task
    def yes():
        return "y"

    @task
    def no():
        return "n"

    @task(trigger_rule="all_done")
    def cleanup():
        return "clean"

    t = total(double.expand(n=parts()))
    pick() >> [yes(), no()]
    t >> cleanup()
"""


def run(tmp_path: Path, fail_on: int) -> subprocess.CompletedProcess:
    (tmp_path / "dags").mkdir(exist_ok=True)
    (tmp_path / "dags" / "d.py").write_text(DAG_FILE.format(fail_on=fail_on))
    env = {**os.environ, "PINFLOW_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [PINFLOW, "dags", "test", "local_authoring", "--path", str(tmp_path), "--output", "json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_mapping_branches_and_rules_in_a_test_run(tmp_path: Path):
    done = run(tmp_path, fail_on=0)
    assert done.returncode == 0, done.stderr
    reports = {(r["task_id"], r["map_index"]): r for r in json.loads(done.stdout)}
    assert [reports[("double", i)]["result"] for i in range(3)] == [2, 4, 6]
    assert reports[("total", -1)]["result"] == 12
    assert reports[("no", -1)]["state"] == "skipped"
    assert reports[("yes", -1)]["state"] == "success"


def test_a_failed_instance_fails_the_test_run_and_calls_on_failure(tmp_path: Path):
    done = run(tmp_path, fail_on=2)
    assert done.returncode == 1
    reports = {(r["task_id"], r["map_index"]): r for r in json.loads(done.stdout)}
    assert reports[("double", 1)]["state"] == "failed"
    assert "ALERT for double map 1" in reports[("double", 1)]["log"]
    assert reports[("total", -1)]["state"] == "upstream_failed"
    assert reports[("cleanup", -1)]["state"] == "success"  # all_done runs after a failure


RAISING_CALLBACK = """
from pinflow import DAG, task

def broken_alert(context):
    raise RuntimeError("the pager is down too")

with DAG("raising_callback", schedule=None):
    @task(on_failure=broken_alert)
    def fails():
        raise ValueError("task broke")

    @task(trigger_rule="all_done")
    def after():
        return "ran"

    fails() >> after()
"""


def test_a_callback_that_raises_is_logged_and_changes_nothing(tmp_path: Path):
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "r.py").write_text(RAISING_CALLBACK)
    env = {**os.environ, "PINFLOW_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [PINFLOW, "dags", "test", "raising_callback", "--path", str(tmp_path), "--output", "json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    reports = {r["task_id"]: r for r in json.loads(done.stdout)}
    assert reports["fails"]["state"] == "failed"
    assert "task broke" in reports["fails"]["error"]  # the task's own error, unchanged
    assert "on_failure callback raised" in reports["fails"]["log"]
    assert "the pager is down too" in reports["fails"]["log"]
    assert reports["after"]["state"] == "success"
