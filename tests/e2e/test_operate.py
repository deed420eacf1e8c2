"""Operating runs on their pinned commit (issue 15): clear and re-run, cancel.

Real server, scheduler and forking workers on both backends. Each try records the commit it
ran, and a clear reruns the run's own commit unless asked for the latest.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import cluster_for
from tests.support.cluster import Cluster
from tests.support.git import Git
from tests.support.server import PINFLOW, pinflow_env

HEARTBEAT_TIMEOUT = 6.0  # the heartbeat interval is a sixth: 1 s

VERSIONED = """
import os
from pinflow import DAG, task

VERSION = "{version}"

with DAG("{dag_id}", schedule=None):
    @task
    def work():
        if not os.path.exists({marker!r}):
            raise RuntimeError("no marker yet")
        print("running", VERSION)
        return VERSION

    @task
    def after(value):
        return value + "!"

    {extra}after(work())
"""

SLEEPER = """
import os, time
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def sleeper():
        deadline = time.time() + 60
        while not os.path.exists({marker!r}) and time.time() < deadline:
            time.sleep(0.1)
        return "woke"

    @task
    def later(value):
        return value

    later(sleeper())
"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    yield from cluster_for(
        request,
        tmp_path_factory,
        schedulers=1,
        workers=2,
        PINFLOW_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT),
    )


def cli_env(cluster: Cluster, scope: str = "admin") -> dict[str, str]:
    """The environment of a `pinflow` command talking to the cluster's API with `scope`."""
    assert cluster.server is not None
    return pinflow_env(
        cluster.home,
        cluster.database_url,
        PINFLOW_API_URL=cluster.server.url,
        PINFLOW_TOKEN=cluster.tokens[scope],
    )


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = cli_env(cluster)
    return subprocess.run([PINFLOW, *args], env=env, capture_output=True, text=True, timeout=120)


def post(cluster: Cluster, path: str, body: dict | None = None, scope: str = "trigger"):
    with cluster.api(scope) as api:
        return api.post(path, json=body or {})


def running_sleeper(cluster: Cluster, tmp_path: Path, dag_id: str) -> tuple[str, Path, Git]:
    """A run of SLEEPER as `dag_id` in a repo of its own, its task running; the marker that
    wakes it, and the repo's work tree."""
    marker = tmp_path / "marker"
    work = cluster.repo(dag_id.replace("_", ""), tmp_path / "w")
    cluster.push(work, "s", **{"dags/s.py": SLEEPER.format(dag_id=dag_id, marker=str(marker))})
    run_id = cluster.trigger(dag_id)["run_id"]
    cluster.wait_task(run_id, "sleeper", "running")
    return run_id, marker, work


def by_task(run: dict) -> dict[str, dict]:
    return {t["task_id"]: t for t in run["tasks"]}


def test_clear_reruns_the_runs_own_sha_and_on_latest_the_new_one(
    cluster: Cluster, tmp_path: Path, uid: str
):
    marker = tmp_path / "marker"
    dag_id = f"versioned_{uid}"
    work = cluster.repo(f"v{uid}", tmp_path / "w")
    fill = {"dag_id": dag_id, "marker": str(marker), "extra": ""}
    old = cluster.push(work, "v1", **{"dags/v.py": VERSIONED.format(version="v1", **fill)})
    failed = cluster.wait(cluster.trigger(dag_id)["run_id"])
    run_id = failed["run_id"]
    assert failed["state"] == "failed"
    assert by_task(failed)["after"]["state"] == "upstream_failed"

    new = cluster.push(work, "v2", **{"dags/v.py": VERSIONED.format(version="v2", **fill)})
    marker.write_text("")
    cleared = cli(cluster, "clear", run_id, "--failed", "--wait")
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    assert f"cleared after, work of {run_id}; they run {old}" in cleared.stdout
    done = cluster.run(run_id)
    tasks = by_task(done)
    assert done["state"] == "success" and done["sha"] == old
    assert tasks["work"]["result"] == "v1" and tasks["after"]["result"] == "v1!"
    assert [t["sha"] for t in tasks["work"]["tries"]] == [old, old]
    assert [t["state"] for t in tasks["work"]["tries"]] == ["failed", "success"]
    assert "running v1" in cluster.task_log(run_id, "work", 2)
    assert done["shas"] == [old]

    # On latest, with downstream: both run v2; the run says it ran two commits.
    latest = cli(
        cluster, "clear", run_id, "--task", "work", "--downstream", "--on-latest", "--wait"
    )
    assert latest.returncode == 0, latest.stdout + latest.stderr
    assert f"cleared after, work of {run_id}; they run {new}" in latest.stdout
    done = cluster.wait(run_id)
    tasks = by_task(done)
    assert done["state"] == "success" and done["sha"] == old  # the run's pin is unchanged
    assert tasks["work"]["result"] == "v2" and tasks["after"]["result"] == "v2!"
    assert tasks["work"]["tries"][-1]["sha"] == new and tasks["work"]["try_number"] == 3
    assert done["shas"] == [old, new]

    # Without downstream only the named task reruns; the other keeps its try.
    after_try = tasks["after"]["try_number"]
    response = post(cluster, f"/runs/{run_id}/clear", {"task_ids": ["work"]})
    assert response.status_code == 200, response.text
    done = cluster.wait(run_id)
    assert by_task(done)["work"]["try_number"] == 4
    assert by_task(done)["after"]["try_number"] == after_try
    assert by_task(done)["work"]["result"] == "v2"  # it stays on the sha it was cleared onto


def test_cancel_stops_a_running_task_and_nothing_starts_after(
    cluster: Cluster, tmp_path: Path, uid: str
):
    run_id, marker, _ = running_sleeper(cluster, tmp_path, f"sleeper_{uid}")
    busy = [w for w in cluster.workers if w.horses()]
    assert len(busy) == 1
    canceled = cli(cluster, "cancel", run_id)
    assert canceled.returncode == 0, canceled.stderr
    canceled_at = time.monotonic()
    while busy[0].horses():
        assert time.monotonic() - canceled_at < 1.0 + 2.0, "the task still runs"
        time.sleep(0.05)
    gone_after = time.monotonic() - canceled_at
    time.sleep(2)
    run = cluster.run(run_id)
    tasks = by_task(run)
    assert run["state"] == "canceled"
    assert tasks["sleeper"]["state"] == "canceled" and tasks["later"]["state"] == "canceled"
    assert [t["state"] for t in tasks["sleeper"]["tries"]] == ["canceled"]
    assert tasks["later"]["tries"] == [], "a task of the canceled run started"
    assert gone_after < 3.0

    # A canceled run can be cleared: it runs again and succeeds.
    marker.write_text("")
    again = cli(cluster, "clear", run_id, "--wait")
    assert again.returncode == 0, again.stdout + again.stderr
    run = cluster.run(run_id)
    assert run["state"] == "success" and by_task(run)["later"]["result"] == "woke"


def test_bad_clear_and_cancel_requests_change_nothing(cluster: Cluster, tmp_path: Path, uid: str):
    dag_id = f"bad_{uid}"
    run_id, marker, work = running_sleeper(cluster, tmp_path, dag_id)
    before = cluster.run(run_id)

    assert post(cluster, "/runs/nosuchrun/clear").status_code == 404
    assert post(cluster, "/runs/nosuchrun/cancel").status_code == 404
    unknown = post(cluster, f"/runs/{run_id}/clear", {"task_ids": ["nope"]})
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    running = post(cluster, f"/runs/{run_id}/clear", {"task_ids": ["sleeper"]})
    assert running.status_code == 409 and "cancel the run first" in running.json()["detail"]
    assert post(cluster, f"/runs/{run_id}/clear", {"task_ids": "sleeper"}).status_code == 400
    assert post(cluster, f"/runs/{run_id}/cancel", scope="read").status_code == 403
    assert post(cluster, f"/runs/{run_id}/clear", scope="read").status_code == 403
    after = cluster.run(run_id)
    assert by_task(after)["sleeper"]["tries"] == by_task(before)["sleeper"]["tries"]
    assert after["state"] == "running"

    # The current version lacks the task: on_latest is refused, nothing changes.
    marker.write_text("")
    cluster.wait(run_id)
    cluster.push(
        work,
        "renamed",
        **{
            "dags/s.py": SLEEPER.format(dag_id=dag_id, marker=str(marker)).replace("later", "other")
        },
    )
    lacking = post(cluster, f"/runs/{run_id}/clear", {"task_ids": ["later"], "on_latest": True})
    assert lacking.status_code == 409 and "has no task 'later'" in lacking.json()["detail"]
    assert cluster.run(run_id)["state"] == "success"

    ended = cli(cluster, "cancel", run_id)
    assert ended.returncode != 0 and "has ended (success)" in ended.stderr
    assert "Traceback" not in ended.stderr and len(ended.stderr.strip().splitlines()) == 1
    nothing = cli(cluster, "clear", run_id, "--failed")
    assert nothing.returncode != 0 and "nothing to clear" in nothing.stderr
    assert cluster.run(run_id)["state"] == "success"


DAILY = """
import time
from pinflow import DAG, task

with DAG("{dag_id}", schedule="@daily", start_date="{start}", catchup=False):
    @task
    def day(context):
        time.sleep(0.3)
        return ["{label}", context["logical_date"]]

    day()
"""


def test_backfill_runs_each_tick_once_pinned_and_throttled(
    cluster: Cluster, tmp_path: Path, uid: str
):
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first_day = today - timedelta(days=9)
    dag_id = f"daily_{uid}"
    work = cluster.repo(f"d{uid}", tmp_path / "w")
    fill = {"dag_id": dag_id, "start": first_day.date().isoformat()}
    old = cluster.push(work, "v1", **{"dags/d.py": DAILY.format(label="v1", **fill)})
    # catchup=False: the scheduler runs today's tick only.
    deadline = time.monotonic() + 30
    while not (scheduled := _runs(cluster, dag_id)):
        assert time.monotonic() < deadline, "no scheduled run"
        time.sleep(0.2)
    cluster.push(work, "v2", **{"dags/d.py": DAILY.format(label="v2", **fill)})

    result = cli(
        cluster,
        "backfill",
        dag_id,
        "--start",
        first_day.date().isoformat(),
        "--end",
        today.isoformat(),
        "--sha",
        old[:10],
        "--max-active-runs",
        "2",
        "--wait",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"9 run(s) of {dag_id} pinned to {old}, 2 at a time" in result.stdout
    assert f"it has run {scheduled[0]['run_id']}" in result.stdout
    runs = [r for r in _runs(cluster, dag_id) if r["run_type"] == "backfill"]
    assert len(runs) == 9 and {r["sha"] for r in runs} == {old}
    assert {r["state"] for r in runs} == {"success"}
    days = sorted(r["logical_date"] for r in runs)
    assert days[0].startswith(first_day.date().isoformat()) and len(set(days)) == 9
    starts = sorted((cluster.run(r["run_id"])["started_at"], r["ended_at"]) for r in runs)
    overlap = max(sum(1 for s, e in starts if s <= t < e) for t, _ in starts)
    assert overlap <= 2, f"{overlap} backfill runs ran at once"
    result = cluster.run(runs[0]["run_id"])["tasks"][0]["result"]
    assert result[0] == "v1"

    # Every tick has a run now: a second backfill creates none and says why.
    again = post(
        cluster,
        f"/dags/{dag_id}/backfill",
        {"start": first_day.isoformat(), "end": today.isoformat()},
    )
    assert again.status_code == 201 and again.json()["created"] == []
    assert len(again.json()["skipped"]) == 10


GATED = """
import os, time
from pinflow import DAG, task

with DAG("{dag_id}", schedule="@daily", start_date="2026-01-01", catchup=False):
    @task
    def day():
        deadline = time.time() + 60
        while not os.path.exists({marker!r}) and time.time() < deadline:
            time.sleep(0.05)
        return "done"

    day()
"""


def test_clear_and_cancel_keep_a_backfill_within_max_active_runs(
    cluster: Cluster, tmp_path: Path, uid: str
):
    """Issue 24, part 3: clearing a run that waits for its backfill's slot does not start it
    (it waits on, and says so); a canceled waiting run leaves the line, and a clear puts it
    back. The runs then run one at a time, oldest first."""
    dag_id = f"gated_{uid}"
    marker = tmp_path / "marker"
    work = cluster.repo(f"g{uid}", tmp_path / "w")
    cluster.push(work, "v1", **{"dags/g.py": GATED.format(dag_id=dag_id, marker=str(marker))})
    made = post(
        cluster,
        f"/dags/{dag_id}/backfill",
        {"start": "2026-01-02", "end": "2026-01-04", "max_active_runs": 1},
    )
    assert made.status_code == 201, made.text
    first, second, third = made.json()["created"]
    cluster.wait_task(first, "day", "running")

    cleared = cli(cluster, "clear", third)
    assert cleared.returncode == 0, cleared.stderr
    assert "waits for a slot of its backfill" in cleared.stdout
    canceled = cli(cluster, "cancel", second)
    assert canceled.returncode == 0, canceled.stderr
    assert "queued (held)" in cli(cluster, "run", third).stdout
    for run_id, state, held in ((second, "canceled", False), (third, "queued", True)):
        run = cluster.run(run_id)
        assert (run["state"], run["held"], by_task(run)["day"]["state"]) == (
            state, held, "none" if held else "canceled"
        ), run  # fmt: skip
    again = post(cluster, f"/runs/{second}/clear", {})
    assert again.status_code == 200 and again.json()["held"], again.text
    with cluster.api("read") as api:
        progress = api.get(f"/backfills/{made.json()['id']}").json()
    assert progress["held"] == 2 and progress["states"] == {"queued": 2, "running": 1}

    marker.write_text("")
    spans = []
    for run_id in (first, second, third):
        run = cluster.wait(run_id)
        assert run["state"] == "success", run
        spans.append((run["started_at"], run["ended_at"]))
    assert spans == sorted(spans), "oldest tick first"
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2)), f"ran at once: {spans}"


def test_bad_backfills_are_refused(cluster: Cluster, tmp_path: Path, uid: str):
    dag_id = f"badfill_{uid}"
    work = cluster.repo(f"bf{uid}", tmp_path / "w")
    fill = {"dag_id": dag_id, "start": "2026-01-01"}
    cluster.push(
        work,
        "v1",
        **{
            "dags/d.py": DAILY.format(label="v1", **fill).replace("@daily", "@hourly"),
            "dags/m.py": SLEEPER.format(dag_id=f"manual_{uid}", marker="/nonexistent"),
        },
    )
    cases = [
        (dag_id, {"start": "2026-02-01", "end": "2026-01-01"}, 400, "is before start"),
        (dag_id, {"start": "2024-01-01", "end": "2026-01-01"}, 400, "17,545 ticks"),
        (f"manual_{uid}", {"start": "2026-01-01", "end": "2026-01-02"}, 400, "no schedule"),
        ("nosuchdag", {"start": "2026-01-01", "end": "2026-01-02"}, 404, "does not exist"),
        (dag_id, {"start": "yesterday", "end": "2026-01-02"}, 400, "start"),
        (dag_id, {"start": "9999-12-31", "end": "9999-12-31"}, 400, "between the years"),
        (dag_id, {"start": "0001-01-01", "end": "2026-01-02"}, 400, "between the years"),
        (dag_id, {"start": "2026-01-01", "end": "9999-12-31T23:59:59-12:00"}, 400, "between"),
        (
            dag_id,
            {"start": "2026-01-01", "end": "2026-01-02", "sha": "f" * 40},
            404,
            "no branch, tag or commit",
        ),
    ]
    for target, body, status, words in cases:
        response = post(cluster, f"/dags/{target}/backfill", body)
        assert response.status_code == status and words in response.json()["detail"], (
            body,
            response.text,
        )
    assert _runs(cluster, dag_id) == [] or all(
        r["run_type"] == "scheduled" for r in _runs(cluster, dag_id)
    )
    refused = cli(cluster, "backfill", dag_id, "--start", "2026-02-01", "--end", "2026-01-01")
    assert refused.returncode != 0 and "is before start" in refused.stderr
    assert "Traceback" not in refused.stderr


def _runs(cluster: Cluster, dag_id: str) -> list[dict]:
    with cluster.api("read") as api:
        return api.get("/runs", params={"dag_id": dag_id, "limit": 1000}).json()["items"]


TALKER = """
import os, time
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def talk():
        print("first line")
        deadline = time.time() + 60
        while not os.path.exists({marker!r}) and time.time() < deadline:
            time.sleep(0.05)
        print("second line")
        return "said"

    talk()
"""


def test_logs_of_a_task_that_never_ran_say_so(cluster: Cluster, tmp_path: Path, uid: str):
    """`pinflow logs` for a try that has no log names why, and exits non-zero (issue 18)."""
    dag_id = f"stops_{uid}"
    work = cluster.repo(f"n{uid}", tmp_path / "w")
    flow = (
        f"from pinflow import DAG, task\nwith DAG({dag_id!r}):\n"
        "    @task\n    def boom():\n        raise ValueError('nope')\n"
        "    @task\n    def after():\n        return 1\n    boom() >> after()\n"
    )
    cluster.push(work, "n", **{"dags/n.py": flow})
    run_id = cluster.trigger(dag_id)["run_id"]
    assert cluster.wait(run_id)["state"] == "failed"
    never = cli(cluster, "logs", run_id, "after")
    assert never.returncode == 4, never
    assert f"task 'after' of run '{run_id}' never ran (upstream_failed)" in never.stderr
    assert "Traceback" not in never.stderr
    beyond = cli(cluster, "logs", run_id, "boom", "--try", "5")
    assert beyond.returncode == 4 and "has no try 5 (its latest is 1)" in beyond.stderr
    assert "ValueError: nope" in cli(cluster, "logs", run_id, "boom").stdout


def test_logs_follow_shows_lines_while_the_task_runs(cluster: Cluster, tmp_path: Path, uid: str):
    marker = tmp_path / "marker"
    dag_id = f"talker_{uid}"
    work = cluster.repo(f"t{uid}", tmp_path / "w")
    cluster.push(work, "t", **{"dags/t.py": TALKER.format(dag_id=dag_id, marker=str(marker))})
    run_id = cluster.trigger(dag_id)["run_id"]
    follower = subprocess.Popen(
        [PINFLOW, "logs", run_id, "talk", "--follow"],
        env=cli_env(cluster, "read"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = ""
        assert follower.stdout is not None
        while "first line" not in seen:
            line = follower.stdout.readline()
            assert line, (
                f"the follower ended early: {follower.stderr.read() if follower.stderr else ''}"
            )
            seen += line
        assert by_task(cluster.run(run_id))["talk"]["state"] == "running"  # not ended yet
        with cluster.api("read") as api:
            part = api.get(f"/runs/{run_id}/tasks/talk/logs", params={"offset": 0})
            assert part.headers["X-Pinflow-Try-Ended"] == "false"
            size = int(part.headers["X-Pinflow-Log-Bytes"])
            assert "first line" in part.text and len(part.text.encode()) == size
            tail = api.get(f"/runs/{run_id}/tasks/talk/logs", params={"offset": size})
            assert tail.text == ""
        marker.write_text("")
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert "second line" in out and "first line" not in out  # each line once
    assert cluster.wait(run_id)["state"] == "success"
    never = cli(cluster, "logs", run_id, "nosuchtask", "--follow")
    assert never.returncode != 0 and "has no task 'nosuchtask'" in never.stderr
    zero = cli(cluster, "logs", run_id, "talk", "--try", "0")
    assert zero.returncode != 0
