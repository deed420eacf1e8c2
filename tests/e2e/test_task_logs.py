"""A task's log, as `pinflow logs` shows it (issue 29, items 2 and 3).

It holds what the task printed and logged, pinflow's short header, and one pinflow line at
its end saying how the try ended: succeeded, failed (with the error), timed out, canceled (by
whom) or lost. pinflow's own HTTP client (one request per heartbeat) never writes into it.
`pinflow logs --follow` says on stderr why it stops, and stops for a task that will never run.
Real server, scheduler and forking workers on both backends, the CLI as a subprocess.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cluster_for
from tests.e2e.test_operate import cli_env
from tests.support.cluster import Cluster
from tests.support.server import PINFLOW

HEARTBEAT_TIMEOUT = 6.0  # a heartbeat every second

CHATTY = """
import logging, time
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task(retries=1, retry_delay=0)
    def chatty(context):
        print("printed by the task")
        logging.info("logged by the task")
        logging.getLogger("httpx").info("logged by the task through httpx's logger")
        time.sleep(3.5)  # three heartbeats or more, each an HTTP request of the worker
        if context["try_number"] == 1:
            raise ValueError("first try fails")
        return 1

    @task(timeout=1)
    def slow():
        time.sleep(30)

    chatty()
    slow()
"""

WAITER = """
import os, time
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def waits():
        print("waiting", flush=True)
        deadline = time.time() + 120
        while not os.path.exists({marker!r}) and time.time() < deadline:
            time.sleep(0.1)

    @task
    def later():
        return 1

    waits() >> later()
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    yield from cluster_for(
        request, tmp_path_factory, PINFLOW_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT)
    )


def cli(cluster: Cluster, *args: str, scope: str = "admin") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PINFLOW, *args], env=cli_env(cluster, scope), capture_output=True, text=True, timeout=120
    )


def follow(cluster: Cluster, run_id: str, task_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PINFLOW, "logs", run_id, task_id, "--follow"],
        env=cli_env(cluster, "read"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(follower: subprocess.Popen[str], text: str) -> None:
    assert follower.stdout is not None
    while text not in (line := follower.stdout.readline()):
        if not line:  # stderr is read only then: reading it waits for the follower to end
            why = follower.stderr.read() if follower.stderr else ""
            raise AssertionError(f"the follower ended early: {why}")


def ended(follower: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = follower.communicate(timeout=90)
    finally:
        if follower.poll() is None:
            follower.kill()
    return follower.returncode, out, err


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def pinflow_endings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("pinflow: try ")]


def test_a_tasks_log_holds_what_it_wrote_and_ends_with_how_each_try_ended(
    cluster: Cluster, tmp_path: Path, uid: str
):
    dag_id = f"chatty_{uid}"
    work = cluster.repo(f"c{uid}", tmp_path / "w")
    cluster.push(work, "chatty", **{"dags/c.py": CHATTY.format(dag_id=dag_id)})
    run_id = cluster.trigger(dag_id)["run_id"]
    assert cluster.wait(run_id)["state"] == "failed"

    first = cli(cluster, "logs", run_id, "chatty", "--try", "1", scope="read")
    assert first.returncode == 0, first.stderr
    log = first.stdout
    for line in ("printed by the task", "logged by the task",
                 "INFO httpx: logged by the task through httpx's logger"):  # fmt: skip
        assert line in log, log
    assert "HTTP Request" not in log and "heartbeat" not in log, log
    assert "ValueError: first try fails" in log  # the traceback, then the ending
    assert pinflow_endings(log) == [last_line(log)]
    assert last_line(log) == (
        "pinflow: try 1 failed: ValueError: first try fails; try 2 of 2 starts in 0 s"
    )

    second = cli(cluster, "logs", run_id, "chatty", scope="read").stdout
    assert re.fullmatch(r"pinflow: try 2 succeeded in \d+\.\d{3} s", last_line(second)), second
    assert pinflow_endings(second) == [last_line(second)]
    assert "HTTP Request" not in second

    slow = cli(cluster, "logs", run_id, "slow", scope="read").stdout
    assert last_line(slow) == "pinflow: try 1 timed out after 1 s", slow


def test_a_canceled_try_ends_its_log_saying_by_whom_and_follow_says_why_it_stops(
    cluster: Cluster, tmp_path: Path, uid: str
):
    dag_id = f"waiter_{uid}"
    marker = tmp_path / "never"
    work = cluster.repo(f"w{uid}", tmp_path / "w")
    cluster.push(work, "waiter", **{"dags/w.py": WAITER.format(dag_id=dag_id, marker=str(marker))})
    run_id = cluster.trigger(dag_id)["run_id"]
    cluster.wait_task(run_id, "waits", "running")
    follower = follow(cluster, run_id, "waits")
    wait_for_line(follower, "waiting")
    later = follow(cluster, run_id, "later")  # a task that will never run

    canceled = cli(cluster, "cancel", run_id, scope="trigger")
    assert canceled.returncode == 0, canceled.stderr

    code, out, err = ended(follower)
    assert code == 1
    assert last_line(out) == "pinflow: try 1 canceled by test-trigger", out
    assert "stopped following: try 1 of waits ended (canceled)" in err, err
    log = cli(cluster, "logs", run_id, "waits").stdout
    assert pinflow_endings(log) == ["pinflow: try 1 canceled by test-trigger"], log

    code, out, err = ended(later)
    assert code == 4 and not out
    assert f"task 'later' of run '{run_id}' never ran (canceled)" in err, err


def test_a_lost_try_ends_its_log_saying_so(cluster: Cluster, tmp_path: Path, uid: str):
    dag_id = f"lost_{uid}"
    marker = tmp_path / "never"
    work = cluster.repo(f"l{uid}", tmp_path / "w")
    cluster.push(work, "lost", **{"dags/l.py": WAITER.format(dag_id=dag_id, marker=str(marker))})
    run_id = cluster.trigger(dag_id)["run_id"]
    task = cluster.wait_task(run_id, "waits", "running")
    follower = follow(cluster, run_id, "waits")
    wait_for_line(follower, "waiting")
    victim = next(w for w in cluster.workers if w.name == f"worker-{task['worker']}")
    victim.kill9()
    try:
        code, out, err = ended(follower)
    finally:
        cluster.workers.remove(victim)
        cluster.add_worker(victim.name.removeprefix("worker-") + "b")
    assert code == 1
    assert last_line(out) == (
        f"pinflow: try 1 lost: no heartbeat for {HEARTBEAT_TIMEOUT:g} s from worker "
        f"{task['worker']} (killed or cut off?)"
    ), out
    assert "stopped following: try 1 of waits ended (failed)" in err, err
