"""Issue 28 end to end on real workers: branches and skips, trigger rules, on_failure, mapped
tasks with their retries and logs, pools and max_active_tasks under two schedulers (a ledger
of each task's start and end, from the tasks' own results), `pinflow pool`, `pinflow dags test`."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, cluster_for
from tests.support.cluster import Cluster

PINFLOW = [str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "pinflow")]


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    yield from cluster_for(request, tmp_path_factory, schedulers=2, workers=3)


BRANCHY = """
from pinflow import DAG, task

def alert(context):
    print("ALERT", context["task_id"], "try", context["try_number"], "says", context["error"][-40:])

with DAG("{dag_id}", schedule=None, on_failure=alert):
    @task.branch
    def choose():
        return "publish"

    @task
    def publish():
        return "published"

    @task
    def hold():
        return "held"

    @task
    def after_hold():
        return "never"

    @task
    def boom():
        raise RuntimeError("the warehouse is on fire")

    @task(trigger_rule="all_done")
    def cleanup():
        return "cleaned"

    @task(trigger_rule="one_failed")
    def page_someone():
        return "paged"

    @task(trigger_rule="none_failed")
    def join():
        return "joined"

    c = choose()
    p, h = publish(), hold()
    c >> [p, h]
    h >> after_hold()
    [p, h] >> join()
    b = boom()
    [p, b] >> cleanup()
    b >> page_someone()
"""


def tasks_of(run: dict) -> dict[str, dict]:
    return {
        t["task_id"] if t["map_index"] < 0 else f"{t['task_id']}[{t['map_index']}]": t
        for t in run["tasks"]
    }


def test_branch_skips_rules_decide_and_the_failure_callback_runs(cluster: Cluster, tmp_path, uid):
    dag_id = f"branchy_{uid}"
    work = cluster.repo(f"branchy{uid}", tmp_path / "w")
    cluster.push(work, "branchy", **{"dags/b.py": BRANCHY.format(dag_id=dag_id)})
    run = cluster.wait(cluster.trigger(dag_id)["run_id"])
    got = {task_id: t["state"] for task_id, t in tasks_of(run).items()}
    assert got == {
        "choose": "success", "publish": "success", "hold": "skipped",
        "after_hold": "skipped", "join": "success", "boom": "failed",
        "cleanup": "success", "page_someone": "success",
    }, cluster.logs()  # fmt: skip
    assert run["state"] == "failed"  # boom failed: cleanup's success never hides it
    log = cluster.task_log(run["run_id"], "boom")
    assert "ALERT boom try 1 says" in log and "the warehouse is on fire" in log
    assert "ALERT" not in cluster.task_log(run["run_id"], "publish")


MAPPED = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def parts():
        return ["a", "b", "c"]

    @task(retries=1)
    def load(part, prefix, context):
        print("loading", part, "as instance", context["map_index"])
        if part == "b" and context["try_number"] == 1:
            raise RuntimeError("flaky")
        return prefix + part

    @task
    def combine(loaded):
        return "+".join(loaded)

    combine(load.partial(prefix="x-").expand(part=parts()))
"""


def test_mapped_instances_run_retry_alone_and_pass_a_list_on(cluster: Cluster, tmp_path, uid):
    dag_id = f"mapped_{uid}"
    work = cluster.repo(f"mapped{uid}", tmp_path / "w")
    cluster.push(work, "mapped", **{"dags/m.py": MAPPED.format(dag_id=dag_id)})
    run = cluster.wait(cluster.trigger(dag_id)["run_id"])
    assert run["state"] == "success", cluster.logs()
    tasks = tasks_of(run)
    assert [tasks[f"load[{i}]"]["result"] for i in range(3)] == ["x-a", "x-b", "x-c"]
    assert {i: tasks[f"load[{i}]"]["try_number"] for i in range(3)} == {0: 1, 1: 2, 2: 1}
    assert tasks["combine"]["result"] == "x-a+x-b+x-c"
    assert tasks["parts"]["map_index"] == -1
    with cluster.api("read") as api:
        log = api.get(f"/runs/{run['run_id']}/tasks/load/logs", params={"map_index": 2})
        assert log.status_code == 200 and "loading c as instance 2" in log.text
        unmapped = api.get(f"/runs/{run['run_id']}/tasks/load/logs")
        assert unmapped.status_code == 404 and "pass map_index" in unmapped.text
    # clear one instance: only it runs again
    with cluster.api("trigger") as api:
        cleared = api.post(f"/runs/{run['run_id']}/clear", json={"task_ids": ["load[0]"]})
    assert cleared.status_code == 200 and cleared.json()["cleared"] == ["load[0]"]
    again = tasks_of(cluster.wait(run["run_id"]))
    assert again["load[0]"]["try_number"] == 2 and again["load[2]"]["try_number"] == 1


POOLED = """
import time
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None{extra}):
    @task
    def parts():
        return list(range(4))

    @task(pool="{pool}")
    def load(part):
        start = time.time()
        time.sleep(0.6)
        return [start, time.time()]

    load.expand(part=parts())
"""


def most_at_once(spans: list[list[float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_a_pool_bounds_tasks_across_dags_and_schedulers(cluster: Cluster, tmp_path, uid):
    pool = f"wh{uid}"
    with cluster.api("admin") as api:
        made = api.put(f"/pools/{pool}", json={"slots": 2, "description": "warehouse"})
        assert made.status_code == 200 and made.json()["open"] == 2
        assert api.put("/pools/bad name", json={"slots": 1}).status_code == 400
        assert api.put(f"/pools/{pool}x", json={"slots": -1}).status_code == 400
    with cluster.api("read") as api:
        assert api.put(f"/pools/{pool}", json={"slots": 9}).status_code == 403
    work = cluster.repo(f"pooled{uid}", tmp_path / "w")
    dags = [f"pooled_{uid}_{n}" for n in range(2)]
    cluster.push(work, "pooled", **{
        f"dags/p{n}.py": POOLED.format(dag_id=d, pool=pool, extra="") for n, d in enumerate(dags)
    })  # fmt: skip
    runs = [cluster.trigger(d)["run_id"] for d in dags]
    done = [cluster.wait(r, timeout=120) for r in runs]
    assert all(r["state"] == "success" for r in done), cluster.logs()
    spans = [t["result"] for r in done for t in r["tasks"] if t["task_id"] == "load"]
    assert len(spans) == 8
    assert most_at_once(spans) <= 2, spans  # never more than the pool's slots
    assert most_at_once(spans) == 2  # and the pool was used to the full


def test_max_active_tasks_bounds_one_dag(cluster: Cluster, tmp_path, uid):
    with cluster.api("admin") as api:
        assert api.put(f"/pools/big{uid}", json={"slots": 100}).status_code == 200
    dag_id = f"narrow_{uid}"
    work = cluster.repo(f"narrow{uid}", tmp_path / "w")
    source = POOLED.format(dag_id=dag_id, pool=f"big{uid}", extra=", max_active_tasks=1")
    cluster.push(work, "narrow", **{"dags/n.py": source})
    run = cluster.wait(cluster.trigger(dag_id)["run_id"], timeout=120)
    spans = [t["result"] for t in run["tasks"] if t["task_id"] == "load"]
    assert run["state"] == "success" and len(spans) == 4
    assert most_at_once(spans) == 1, spans


def test_pool_cli(cluster: Cluster, uid):
    import os

    assert cluster.server is not None
    env = {**os.environ, **cluster.process_env(cluster.tokens["admin"])}

    def pinflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*PINFLOW, *args], env=env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    made = pinflow("pool", "set", f"cli{uid}", "3", "--description", "from the CLI")
    assert made.returncode == 0 and "3 slots" in made.stdout, made.stderr
    listed = json.loads(pinflow("pool", "list", "--output", "json").stdout)
    assert {"name": f"cli{uid}", "slots": 3, "description": "from the CLI", "queued": 0,
            "running": 0, "open": 3} in listed  # fmt: skip
    assert pinflow("pool", "delete", f"cli{uid}").returncode == 0
    gone = pinflow("pool", "delete", f"cli{uid}")
    assert gone.returncode != 0 and "no pool" in gone.stderr and "Traceback" not in gone.stderr
    bad = pinflow("pool", "set", f"cli{uid}", "-2")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def ui_page(cluster: Cluster, path: str) -> str:
    import httpx

    assert cluster.server is not None
    with httpx.Client(base_url=cluster.server.url, follow_redirects=True) as web:
        assert web.post("/login", data={"token": cluster.tokens["read"], "next": "/"}).is_success
        page = web.get(path)
        assert page.status_code == 200, page.text
        return page.text


def test_the_ui_shows_skipped_and_mapped_instances(cluster: Cluster, tmp_path, uid):
    dag_id = f"shown_{uid}"
    work = cluster.repo(f"shown{uid}", tmp_path / "w")
    source = MAPPED.format(dag_id=dag_id).replace("@task(retries=1)", "@task(retries=0)")
    source += '''
    @task.branch
    def pick():
        return None

    @task
    def never():
        return 1

    pick() >> never()
'''
    cluster.push(work, "shown", **{"dags/s.py": source})
    run = cluster.wait(cluster.trigger(dag_id)["run_id"])
    from urllib.parse import quote

    page = ui_page(cluster, f"/runs/{quote(run['run_id'], safe='')}?task=load%5B2%5D")
    assert 'class="state s-skipped"' in page  # `never`, skipped by the branch
    assert ">load[0]<" in page and ">load[2]<" in page  # each instance on its row
    assert "Log of load[2], try 1" in page
    log = ui_page(cluster, f"/runs/{quote(run['run_id'], safe='')}/tasks/load%5B2%5D/log?try=1")
    assert "loading c as instance 2" in log
    grid = ui_page(cluster, f"/dags/{dag_id}")
    assert "s-skipped" in grid and "s-failed" in grid  # load[1] failed: its cell says so


BAD_DAGS = {
    "timezone": ('with DAG("{d}", schedule="@daily", start_date="2026-01-01", '
                 'timezone="Mars/Olympus"):\n    pass\n', "unknown timezone 'Mars/Olympus'"),
    "rule": ('with DAG("{d}"):\n    @task(trigger_rule="all_good")\n    def t(): pass\n    t()\n',
             "unknown trigger_rule 'all_good'"),
    "branch": ('with DAG("{d}"):\n    @task.branch\n    def b(): return "nope"\n'
               '    @task\n    def a(): pass\n    b() >> a()\n', "returns 'nope', which is not"),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(BAD_DAGS))
def test_a_bad_authoring_choice_fails_the_push(cluster: Cluster, tmp_path, uid, kind):
    """A strict repo refuses the push, naming what is wrong; a plain one records it as the
    file's import error."""
    from tests.support.git import Git

    assert cluster.server is not None
    name = f"bad{kind}{uid}"
    cluster.server.create_repo(name, strict=True)
    work = Git(tmp_path / "w").init()
    body, message = BAD_DAGS[kind]
    work.write("dags/bad.py", "from pinflow import DAG, task\n" + body.format(d=f"bad_{uid}"))
    work.commit("bad")
    pushed = work.run("push", cluster.server.git_url(name, cluster.tokens["push"]), "main",
                      check=False)  # fmt: skip
    assert pushed.returncode != 0, pushed.stderr
    assert message in pushed.stderr


def test_a_zoned_schedule_runs_at_local_ticks_with_utc_dates(cluster: Cluster, tmp_path, uid):
    """The scheduler creates the newest local tick's run and says when the next is due, both
    as aware UTC instants, from the zone's wall clock."""
    import time
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from croniter import croniter

    dag_id = f"zoned_{uid}"
    work = cluster.repo(f"zoned{uid}", tmp_path / "w")
    source = (
        "from pinflow import DAG, task\n"
        f'with DAG("{dag_id}", schedule="15 3 * * *", start_date="2026-01-01", '
        'timezone="America/New_York", catchup=False):\n'
        "    @task\n    def t():\n        return 1\n    t()\n"
    )
    cluster.push(work, "zoned", **{"dags/z.py": source})
    deadline = time.monotonic() + 60
    dag: dict = {}
    while time.monotonic() < deadline:
        with cluster.api("read") as api:
            dag = api.get(f"/dags/{dag_id}").json()
            runs = api.get("/runs", params={"dag_id": dag_id}).json()["items"]
        if dag.get("next_due_at") and runs:
            break
        time.sleep(0.2)
    assert dag["timezone"] == "America/New_York"
    now = datetime.now(ZoneInfo("America/New_York"))
    ticks = croniter("15 3 * * *", now)
    expected_next = ticks.get_next(datetime).astimezone(UTC)
    latest = croniter("15 3 * * *", now).get_prev(datetime).astimezone(UTC)
    assert datetime.fromisoformat(dag["next_due_at"].replace("Z", "+00:00")) == expected_next
    logical = datetime.fromisoformat(runs[0]["logical_date"].replace("Z", "+00:00"))
    assert logical == latest and logical.utcoffset().total_seconds() == 0
