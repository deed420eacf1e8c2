"""Runs from push to finish on real processes: every task executes the run's pinned commit."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import BACKENDS, cluster_for
from tests.support.cluster import Cluster
from tests.support.dags import sleeps_on_first_try


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    yield from cluster_for(
        request, tmp_path_factory, schedulers=1, workers=2, PINFLOW_HEARTBEAT_TIMEOUT="4"
    )


PIPELINE = """
import time
from pinflow import DAG, task
from helpers import VERSION

with DAG("{dag_id}", schedule=None):
    @task
    def first(context):
        time.sleep({sleep})
        print("first sees", VERSION)
        return {{"version": VERSION, "sha": context["sha"]}}

    @task
    def second(upstream):
        return {{"upstream": upstream, "version": VERSION}}

    second(first())
"""


def push_pipeline(cluster: Cluster, tmp_path, dag_id: str) -> str:
    """A repo of its own holding PIPELINE (no pause) as `dag_id`; returns the dag id."""
    work = cluster.repo(dag_id.replace("_", ""), tmp_path / "w")
    cluster.push(
        work,
        "p",
        **{
            "dags/helpers.py": "VERSION = 1\n",
            "dags/pipe.py": PIPELINE.format(dag_id=dag_id, sleep=0),
        },
    )
    return dag_id


def test_run_executes_its_pinned_commit_while_a_push_lands(cluster: Cluster, tmp_path, uid):
    work = cluster.repo(f"pin{uid}", tmp_path / "w")
    dag_id = f"pin_{uid}"
    old = cluster.push(
        work,
        "v1",
        **{
            "dags/helpers.py": "VERSION = 'old'\n",
            "dags/pipe.py": PIPELINE.format(dag_id=dag_id, sleep=3),
        },
    )
    run = cluster.trigger(dag_id)
    assert run["sha"] == old
    time.sleep(1)  # `first` is running on the old commit now
    new = cluster.push(work, "v2", **{"dags/helpers.py": "VERSION = 'new'\n"})
    done = cluster.wait(run["run_id"])
    assert done["state"] == "success", cluster.logs()
    assert done["sha"] == old
    tasks = {t["task_id"]: t for t in done["tasks"]}
    assert tasks["first"]["result"] == {"version": "old", "sha": old}
    assert tasks["second"]["result"] == {
        "upstream": {"version": "old", "sha": old},
        "version": "old",
    }
    assert "first sees old" in cluster.task_log(run["run_id"], "first")

    later = cluster.wait(cluster.trigger(dag_id)["run_id"])
    assert later["sha"] == new
    assert {t["task_id"]: t["result"] for t in later["tasks"]}["second"]["version"] == "new"
    # The second task at a sha finds the version cached by the first (on either worker).
    logs = cluster.task_log(later["run_id"], "first") + cluster.task_log(later["run_id"], "second")
    assert "cache hit" in logs


def test_manual_run_on_an_old_sha(cluster: Cluster, tmp_path, uid):
    work = cluster.repo(f"old{uid}", tmp_path / "w")
    dag_id = f"old_{uid}"
    old = cluster.push(
        work,
        "v1",
        **{
            "dags/helpers.py": "VERSION = 'one'\n",
            "dags/pipe.py": PIPELINE.format(dag_id=dag_id, sleep=0),
        },
    )
    cluster.push(work, "v2", **{"dags/helpers.py": "VERSION = 'two'\n"})
    run = cluster.wait(cluster.trigger(dag_id, sha=old[:10])["run_id"])
    assert run["sha"] == old and run["state"] == "success"
    assert run["tasks"][-1]["result"]["version"] == "one"
    by_ref = cluster.trigger(dag_id, ref="main")
    assert by_ref["sha"] != old


def test_trigger_bad_targets(cluster: Cluster, tmp_path, uid):
    work = cluster.repo(f"bad{uid}", tmp_path / "w")
    dag_id = f"bad_{uid}"
    first = cluster.push(work, "helpers only", **{"dags/helpers.py": "VERSION = 1\n"})
    cluster.push(work, "pipe", **{"dags/pipe.py": PIPELINE.format(dag_id=dag_id, sleep=0)})
    with cluster.api("trigger") as api:
        absent = api.post(f"/dags/{dag_id}/runs", json={"sha": first})
        assert absent.status_code == 400 and "does not exist or failed to parse" in absent.text
        assert api.post("/dags/nope_dag/runs", json={}).status_code == 404
        assert api.post(f"/dags/{dag_id}/runs", json={"sha": "f" * 40}).status_code == 404
        assert api.post(f"/dags/{dag_id}/runs", json={"ref": "nobranch"}).status_code == 404
        both = api.post(f"/dags/{dag_id}/runs", json={"ref": "main", "sha": first})
        assert both.status_code == 400
        assert api.post(f"/dags/{dag_id}/runs", json={"conf": "x"}).status_code == 400
    with cluster.api("read") as api:
        assert api.post(f"/dags/{dag_id}/runs", json={}).status_code == 403


FLAKY = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task(retries=2, retry_delay=1)
    def flaky(context):
        if context["try_number"] == 1:
            raise RuntimeError("first try fails")
        return context["try_number"]

    @task(timeout=1)
    def slow():
        import time
        time.sleep(30)

    @task
    def after_slow():
        return "never"

    @task
    def not_json():
        return object()

    flaky()
    slow() >> after_slow()
    not_json()
"""


def test_retries_timeouts_upstream_failed_and_bad_results(cluster: Cluster, tmp_path, uid):
    work = cluster.repo(f"fl{uid}", tmp_path / "w")
    dag_id = f"flaky_{uid}"
    cluster.push(work, "flaky", **{"dags/flaky.py": FLAKY.format(dag_id=dag_id)})
    run = cluster.wait(cluster.trigger(dag_id)["run_id"])
    tasks = {t["task_id"]: t for t in run["tasks"]}
    assert run["state"] == "failed"
    assert tasks["flaky"]["state"] == "success" and tasks["flaky"]["result"] == 2
    assert [t["state"] for t in tasks["flaky"]["tries"]] == ["failed", "success"]
    assert "first try fails" in cluster.task_log(run["run_id"], "flaky", 1)
    assert tasks["slow"]["state"] == "failed" and "timed out after 1 s" in tasks["slow"]["error"]
    assert tasks["after_slow"]["state"] == "upstream_failed"
    assert tasks["not_json"]["state"] == "failed"
    assert "result is not JSON" in tasks["not_json"]["error"]


def test_worker_killed_mid_task_is_retried(cluster: Cluster, tmp_path, uid):
    work = cluster.repo(f"k{uid}", tmp_path / "w")
    dag_id = f"kill_{uid}"
    cluster.push(work, "sleepy", **{"dags/sleepy.py": sleeps_on_first_try(dag_id, 60)})
    run = cluster.trigger(dag_id)
    task = cluster.wait_task(run["run_id"], "sleepy", "running")
    victim = next(w for w in cluster.workers if w.name == f"worker-{task['worker']}")
    victim.kill9()
    try:
        done = cluster.wait(run["run_id"], timeout=60)
        task = done["tasks"][0]
        assert done["state"] == "success", cluster.logs()
        assert [t["state"] for t in task["tries"]] == ["failed", "success"]
        assert "no heartbeat" in task["tries"][0]["error"]
        lost = sum(
            metric(httpx.get(url).text, "pinflow_task_tries_finished_total", state="lost")
            for url in cluster.scheduler_metrics.values()
        )
        assert lost >= 1, "no scheduler counted the try it declared lost"
    finally:
        cluster.workers.remove(victim)
        cluster.add_worker(victim.name.removeprefix("worker-") + "b")


def test_lost_queue_is_recovered_after_flushall(cluster: Cluster, tmp_path, uid):
    import redis

    dag_id = push_pipeline(cluster, tmp_path, f"flush_{uid}")
    for worker in cluster.workers:
        worker.stop()
    stopped = list(cluster.workers)
    cluster.workers.clear()
    run = cluster.trigger(dag_id)
    time.sleep(0.5)
    redis.Redis.from_url(cluster.redis.url).flushall()
    for w in stopped:
        cluster.add_worker(w.name.removeprefix("worker-") + "r")
    done = cluster.wait(run["run_id"], timeout=60)
    assert done["state"] == "success", cluster.logs()


def test_no_tracebacks_in_server_log(cluster: Cluster):
    assert cluster.server is not None
    assert "Traceback" not in cluster.server.server_log()


def scheduled_runs(cluster: Cluster, dag_id: str) -> list[dict]:
    with cluster.api("read") as api:
        items = api.get("/runs", params={"dag_id": dag_id}).json()["items"]
    return [r for r in items if r["run_type"] == "scheduled"]


def test_scheduled_dag_runs_by_itself_and_pause_stops_it(cluster: Cluster, tmp_path, uid):
    work = cluster.repo(f"sch{uid}", tmp_path / "w")
    dag_id = f"every2s_{uid}"
    sha = cluster.push(
        work,
        "sched",
        **{
            "dags/tick.py": f'''
from datetime import timedelta
from pinflow import DAG, task

with DAG("{dag_id}", schedule=timedelta(seconds=2), start_date="2026-01-01", catchup=False):
    @task
    def tick(context):
        return context["logical_date"]

    tick()
'''
        },
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = [r for r in scheduled_runs(cluster, dag_id) if r["state"] == "success"]
        if len(done) >= 2:
            break
        time.sleep(0.2)
    assert len(done) >= 2, cluster.logs()
    assert {r["sha"] for r in done} == {sha}
    dates = sorted(r["logical_date"] for r in done)
    assert len(set(dates)) == len(dates)
    with cluster.api("trigger") as api:
        assert api.post(f"/dags/{dag_id}/pause").json()["is_paused"] is True
    time.sleep(1)
    count = len(scheduled_runs(cluster, dag_id))
    time.sleep(3)
    assert len(scheduled_runs(cluster, dag_id)) == count, "a paused DAG got new runs"
    with cluster.api("trigger") as api:
        api.post(f"/dags/{dag_id}/unpause")
    time.sleep(3)
    assert len(scheduled_runs(cluster, dag_id)) > count


def test_cli_trigger_wait_exit_codes(cluster: Cluster, tmp_path, uid):
    import subprocess

    from tests.support.server import PINFLOW, pinflow_env

    work = cluster.repo(f"cli{uid}", tmp_path / "w")
    ok_id, bad_id = f"ok_{uid}", f"bad_{uid}"
    sha = cluster.push(
        work,
        "two",
        **{
            "dags/ok.py": f"from pinflow import DAG, task\nwith DAG('{ok_id}'):\n"
            "    @task\n    def hi():\n        print('hello log')\n        return 1\n    hi()\n",
            "dags/bad.py": f"from pinflow import DAG, task\nwith DAG('{bad_id}'):\n"
            "    @task\n    def boom():\n        raise ValueError('nope')\n    boom()\n",
        },
    )
    assert cluster.server is not None
    env = pinflow_env(
        tmp_path,
        "sqlite:///unused",
        PINFLOW_API_URL=cluster.server.url,
        PINFLOW_TOKEN=cluster.tokens["admin"],
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PINFLOW, *args], env=env, capture_output=True, text=True, timeout=120
        )

    ok = cli("trigger", ok_id, "--wait", "--conf", '{"a": 1}')
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"pinned to {sha}" in ok.stdout and "success" in ok.stdout
    run_id = ok.stdout.split()[0]
    assert "hello log" in cli("logs", run_id, "hi").stdout
    shown = cli("run", run_id)
    assert sha[:12] in shown.stdout and "hi" in shown.stdout
    assert run_id in cli("runs", ok_id).stdout

    bad = cli("trigger", bad_id, "--wait")
    assert bad.returncode == 1 and "failed" in bad.stdout
    assert "ValueError: nope" in cli("logs", bad.stdout.split()[0], "boom").stdout

    for args, message in [
        (("trigger", "no_such_dag"), "does not exist"),
        (("trigger", ok_id, "--conf", "{bad"), "not valid JSON"),
        (("trigger", ok_id, "--sha", "0" * 40), "no branch, tag or commit"),
        (("run", "nope"), "does not exist"),
        (("logs", run_id, "no_task"), "has no task"),
        (("pause", "no_such_dag"), "does not exist"),
        (("runs", "no_such_dag"), "does not exist"),
        (("trigger", ok_id, "--sha", "main"), "--ref main"),
    ]:
        result = cli(*args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_worker_endpoints_refuse_stale_and_foreign_claims(cluster: Cluster, tmp_path, uid):
    """A late worker, a stale try or a finished task gets 409; other scopes get 403."""
    dag_id = push_pipeline(cluster, tmp_path, f"we_{uid}")
    run = cluster.wait(cluster.trigger(dag_id)["run_id"])
    assert run["state"] == "success"
    from sqlalchemy import select

    from dagstore.core.db import Database
    from scheduler.models import DagRun, TaskInstance

    db = Database(cluster.database_url)
    with db.read() as session:
        ti_id = session.scalar(
            select(TaskInstance.id).join(DagRun).where(DagRun.run_id == run["run_id"]).limit(1)
        )
    db.dispose()
    with cluster.api("worker") as api:
        claim = api.post(f"/task-instances/{ti_id}/claim", json={"try_number": 1, "worker": "late"})
        assert claim.status_code == 409 and "cannot be claimed" in claim.json()["detail"]
        assert (
            api.post(f"/task-instances/{ti_id}/heartbeat", json={"try_number": 1}).status_code
            == 409
        )
        finish = api.post(
            f"/task-instances/{ti_id}/finish", json={"try_number": 1, "state": "success"}
        )
        assert finish.status_code == 409
        assert (
            api.post(
                "/task-instances/999999/claim", json={"try_number": 1, "worker": "x"}
            ).status_code
            == 404
        )
        assert (
            api.post(
                f"/task-instances/{ti_id}/claim", json={"try_number": 0, "worker": "x"}
            ).status_code
            == 400
        )
        assert (
            api.post(
                f"/task-instances/{ti_id}/finish", json={"try_number": 1, "state": "meh"}
            ).status_code
            == 400
        )
        # Found by schemathesis: numbers past the database's INTEGER were a 500.
        huge = {"try_number": 3077078000000, "worker": "x"}
        assert api.post(f"/task-instances/{ti_id}/claim", json=huge).status_code == 400
        assert (
            api.post(
                "/task-instances/374388114433793064960/claim", json={"try_number": 1, "worker": "x"}
            ).status_code
            == 400
        )
    for scope in ("read", "trigger"):
        with cluster.api(scope) as api:
            denied = api.post(
                f"/task-instances/{ti_id}/claim", json={"try_number": 1, "worker": "x"}
            )
            assert denied.status_code == 403
    assert cluster.run(run["run_id"])["state"] == "success", "refused calls changed nothing"


def test_cli_output_for_people_and_scripts(cluster: Cluster, tmp_path, uid):
    """Piped, listings are plain columns with nothing cut; `--output json` is the API's items;
    `--wait` ends with the tasks and their results; `--timeout` has its own exit code; a reader
    that stops reading (`| head -1`) does not turn a run that succeeded into a failure."""
    import json
    import subprocess

    from tests.support.server import PINFLOW, pinflow_env

    dag_id, slow_id = f"out_{uid}_with_a_rather_long_name", f"slow_{uid}"
    work = cluster.repo(f"out{uid}", tmp_path / "w")
    cluster.push(
        work,
        "two",
        **{
            "dags/out.py": f"from pinflow import DAG, task\nwith DAG('{dag_id}'):\n"
            "    @task\n    def answer():\n        return {'answer': 42}\n    answer()\n",
            "dags/slow.py": f"from pinflow import DAG, task\nwith DAG('{slow_id}'):\n"
            "    @task\n    def nap():\n        import time\n        time.sleep(4)\n    nap()\n",
        },
    )
    assert cluster.server is not None
    env = pinflow_env(tmp_path, "sqlite:///unused", PINFLOW_API_URL=cluster.server.url,
                      PINFLOW_TOKEN=cluster.tokens["admin"])  # fmt: skip
    env["COLUMNS"] = "60"  # a narrow terminal's width, and stdout is a pipe

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PINFLOW, *args], env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip

    waited = cli("trigger", dag_id, "--wait")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    first, *rest = waited.stdout.splitlines()
    run_id = first.split()[0]
    assert first.endswith(f"pinned to {cluster.run(run_id)['sha']}")  # the heading comes first
    assert rest[-1].startswith(f"run {run_id}") and rest[-1].endswith("state success")
    assert any('{"answer": 42}' in line for line in rest), rest  # the task's result

    listed = cli("runs", dag_id).stdout.splitlines()  # a 60-column "terminal", piped
    assert listed[0].split()[:3] == ["run_id", "dag", "sha"]
    assert any(run_id in line and dag_id in line and "success" in line for line in listed)
    assert "…" not in "".join(listed)
    items = json.loads(cli("runs", dag_id, "--output", "json").stdout)
    assert [r["run_id"] for r in items] == [run_id] and items[0]["state"] == "success"
    shown = json.loads(cli("run", run_id, "-o", "json").stdout)
    assert shown["tasks"][0]["result"] == {"answer": 42}
    dags = json.loads(cli("dags", "-o", "json").stdout)
    assert dag_id in {d["dag_id"] for d in dags}

    timed = cli("trigger", slow_id, "--wait", "--timeout", "1")
    assert timed.returncode == 8, timed.stdout + timed.stderr
    assert "still" in timed.stderr and "after 1 s" in timed.stderr

    headed = subprocess.run(f"'{PINFLOW}' trigger {dag_id} --wait | head -1", shell=True,
                            env=env, capture_output=True, text=True, timeout=120,
                            executable="/bin/bash")  # fmt: skip
    piped = subprocess.run(f"set -o pipefail; '{PINFLOW}' trigger {dag_id} --wait | head -1",
                           shell=True, env=env, capture_output=True, text=True, timeout=120,
                           executable="/bin/bash")  # fmt: skip
    assert "pinned to" in headed.stdout and len(headed.stdout.splitlines()) == 1
    assert piped.returncode == 0, piped.stderr  # pinflow's own exit code: the run succeeded
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus' text format (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    return 0.0


def test_metrics_count_what_happened(cluster: Cluster, tmp_path, uid):
    """After a push and a run: runs and tasks by state, queue depth, dispatch latency and
    task duration, tries by final state, pushes and parses, archives served. The database's
    figures read the same from every API server; event counts are this server's."""
    assert cluster.server is not None
    base = cluster.server.url
    before = httpx.get(f"{base}/metrics").text
    dag_id = push_pipeline(cluster, tmp_path, f"metrics_{uid}")
    run = cluster.wait(cluster.trigger(dag_id)["run_id"])
    assert run["state"] == "success"
    after = httpx.get(f"{base}/metrics").text
    tasks = len(run["tasks"])

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    # Gauges count the active states only (a scrape never reads the history); finished runs
    # are counted as they end, by the process that ended them (this API server: the finish).
    assert 'pinflow_dag_runs{state="running"}' in after
    assert 'pinflow_task_instances{state="queued"}' in after
    assert 'pinflow_dag_runs{state="success"}' not in after
    assert grew("pinflow_dag_runs_finished_total", state="success") >= 1
    assert "pinflow_queue_depth{" in after
    assert grew("pinflow_dispatch_latency_seconds_count") >= tasks
    assert grew("pinflow_task_duration_seconds_count") >= tasks
    assert grew("pinflow_task_tries_finished_total", state="success") >= tasks
    assert grew("pinflow_pushes_total", outcome="landed") >= 1
    assert grew("pinflow_parsed_files_total", outcome="ok") >= 1
    assert grew("pinflow_parse_duration_seconds_count") >= 1
    served = sum(grew("pinflow_archive_requests_total", source=s)
                 for s in ("memory", "cache", "built"))  # fmt: skip
    assert served >= 1 and grew("pinflow_archive_sent_bytes_total") > 0
