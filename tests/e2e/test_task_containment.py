"""Task code never sees the worker's token, and its own credential does one try's work only
(issue 14: contain tasks).

A hostile task, run by a real `pinflow worker`, looks for the token everywhere an ordinary
process can: its environment, `/proc/*/environ` and command lines, its own memory and its
parent's (the RQ worker's), byte for byte. Then it misuses the credential it does hold.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from dagstore.core.protocol import DEFAULT_QUEUE, JOB_FUNCTION, queue_name
from tests.conftest import cluster_for
from tests.e2e.test_partitions import push_quick, take_job
from tests.support.cluster import Cluster
from tests.support.dags import HELD_SOCKETS

HOSTILE_DAG = r'''
import gc, glob, os, re
import httpx
from pinflow import DAG, task

TOKEN = re.compile(rb"pf_[A-Za-z0-9_-]{43}")


def tokens_in(data):
    return {m.decode() for m in TOKEN.findall(data)}


def memory_of(pid):
    """Every readable byte of a process, as any process of its user could read it."""
    found = set()
    try:
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
    except OSError as exc:
        return found, f"unreadable: {exc.__class__.__name__}"
    with mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                found |= tokens_in(mem.read(end - start))
            except (OSError, OverflowError, ValueError):
                continue
    return found, "read"


with DAG("{dag_id}", schedule=None):
    @task
    def snoop(context):
        print("environment:", dict(os.environ))
        found = {"environ": sorted(tokens_in(repr(dict(os.environ)).encode()))}
        proc = set()
        for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
            try:
                proc |= tokens_in(open(path, "rb").read())
            except OSError:
                pass
        found["proc"] = sorted(proc)
        own, _ = memory_of("self")
        parent, how = memory_of(os.getppid())
        found["memory"] = sorted(own | parent)
        found["parent_memory"] = how

        # The credential the horse does hold: good for this try alone.
        from runner.client import WorkerClient
        client = next(o for o in gc.get_objects() if isinstance(o, WorkerClient))
        credential = client._http.headers["Authorization"].split()[1]
        ti_id = int(credential.split("_")[1])
        api = httpx.Client(
            base_url=os.environ["PINFLOW_API_URL"] + "/api/v1",
            headers={"Authorization": "Bearer " + credential},
        )
        finish = {"try_number": 1, "state": "success", "result": "forged"}
        repo, sha = context["repo"], context["sha"]
        found["status"] = {
            "finish_other": [
                api.post(f"/task-instances/{other}/finish", json=finish).status_code
                for other in (ti_id - 1, ti_id + 1) if other >= 1
            ],
            "heartbeat_own": api.post(
                f"/task-instances/{ti_id}/heartbeat", json={"try_number": 1}
            ).status_code,
            "heartbeat_other_try": api.post(
                f"/task-instances/{ti_id}/heartbeat", json={"try_number": 2}
            ).status_code,
            "claim": api.post(
                f"/task-instances/{ti_id + 1}/claim",
                json={"try_number": 1, "worker": "thief", "attempt": "a" * 32},
            ).status_code,
            "runs": api.get("/runs").status_code,
            "archive_own": api.get(f"/repos/{repo}/archive/{sha}.tar.gz").status_code,
            "archive_other": api.get(f"/repos/{repo}/archive/{'0' * 40}.tar.gz").status_code,
        }
        found["credential"] = credential
        return found

    @task
    def victim():
        import time
        time.sleep(3)
        return "mine"

    snoop()
    victim()
'''


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cluster(request, tmp_path_factory) -> Iterator[Cluster]:
    yield from cluster_for(request, tmp_path_factory, schedulers=1, workers=2)


def test_a_task_finds_no_worker_token_and_its_credential_does_one_try(
    cluster: Cluster, tmp_path: Path, uid: str
):
    work = cluster.repo(f"hostile{uid}", tmp_path / "w")
    dag_id = f"hostile_{uid}"
    cluster.push(work, "h", **{"dags/h.py": HOSTILE_DAG.replace("{dag_id}", dag_id)})
    done = cluster.wait(cluster.trigger(dag_id)["run_id"], timeout=90)
    tasks = {t["task_id"]: t for t in done["tasks"]}
    assert tasks["snoop"]["state"] == "success", tasks["snoop"]["error"]
    found = tasks["snoop"]["result"]
    token = cluster.tokens["worker"]
    assert token not in found["environ"]
    assert token not in found["proc"]
    assert token not in found["memory"], "the token is in the work horse's or RQ worker's memory"
    assert found["parent_memory"] == "read"  # the scan did look (the test runs as root)
    log = cluster.task_log(done["run_id"], "snoop")
    assert "environment:" in log and token not in log and "PINFLOW_TOKEN" not in log
    assert set(found["status"].pop("finish_other")) == {403}
    assert found["status"] == {
        "heartbeat_own": 200,
        "heartbeat_other_try": 403,
        "claim": 401,
        "runs": 401,
        "archive_own": 200,
        "archive_other": 403,
    }
    assert tasks["victim"]["state"] == "success" and tasks["victim"]["result"] == "mine"

    # The try has ended: its credential is worth nothing now.
    assert cluster.server is not None
    ti_id = int(found["credential"].split("_")[1])
    with cluster.server.api_as(found["credential"]) as api:
        beat = api.post(f"/task-instances/{ti_id}/heartbeat", json={"try_number": 1})
        archive = api.get(f"/repos/hostile{uid}/archive/{done['sha']}.tar.gz")
    assert beat.status_code == 409 and archive.status_code == 403


def test_a_credential_is_bound_to_its_try_and_ends_with_it(
    cluster: Cluster, tmp_path: Path, uid: str
):
    """Claimed by hand (this test is the worker): the credential heartbeats and downloads
    its version while its try runs; finished, the try takes it along."""
    assert cluster.server is not None
    for worker in cluster.workers:  # the job must stay on the queue for take_job
        worker.stop()
    cluster.workers.clear()
    try:
        dag_id = push_quick(cluster, tmp_path, f"bound_{uid}")
        run = cluster.trigger(dag_id)
        job = take_job(cluster, run["run_id"])
        claim = {"try_number": 1, "worker": "w", "attempt": "c" * 32}
        with cluster.api("worker") as api:
            spec = api.post(f"/task-instances/{job.ti_id}/claim", json=claim).json()
        credential = spec["credential"]
        assert credential.startswith(f"pftry_{job.ti_id}_1_")
        archive = f"/repos/{spec['repo']}/archive/{spec['sha']}.tar.gz"
        with cluster.server.api_as(credential) as api:
            assert api.get(archive).status_code == 200
            forged = credential[:-4] + ("AAAA" if not credential.endswith("AAAA") else "BBBB")
            with cluster.server.api_as(forged) as forger:
                assert forger.get(archive).status_code == 403
                beat = forger.post(f"/task-instances/{job.ti_id}/heartbeat", json={"try_number": 1})
                assert beat.status_code == 403
            finish = {"try_number": 1, "state": "success", "result": "by hand"}
            assert api.post(f"/task-instances/{job.ti_id}/finish", json=finish).status_code == 200
            assert api.get(archive).status_code == 403
            again = api.post(f"/task-instances/{job.ti_id}/finish", json=finish)
            assert again.status_code == 409
        assert cluster.wait(run["run_id"])["tasks"][0]["result"] == "by hand"
    finally:
        cluster.add_worker(f"again{uid}")
        cluster.add_worker(f"again2{uid}")


@pytest.mark.parametrize(
    ("func", "args", "kwargs"),
    [
        ("os.system", ["touch {marker}"], {}),
        ("pathlib.Path.touch", ["{marker}"], {}),
        (JOB_FUNCTION, ["{marker}"], {}),
        (JOB_FUNCTION, [], {"payload": {}, "extra": "{marker}"}),
    ],
)
def test_rq_jobs_other_than_pinflows_task_are_refused(
    cluster: Cluster, tmp_path: Path, func: str, args: list, kwargs: dict
):
    """Anyone who can write to Redis can enqueue any dotted path: a worker runs none of it."""
    marker = tmp_path / "ran"
    queue = Queue(
        queue_name(DEFAULT_QUEUE),
        connection=Redis.from_url(cluster.redis.url),
        serializer=JSONSerializer,
    )
    fill = {"marker": str(marker)}
    job = queue.enqueue(
        func,
        *[a.format(**fill) for a in args],
        **{k: v.format(**fill) if isinstance(v, str) else v for k, v in kwargs.items()},
    )
    deadline = time.monotonic() + 30
    while job.get_status(refresh=True) not in (JobStatus.FAILED, JobStatus.FINISHED):
        assert time.monotonic() < deadline, f"job still {job.get_status()}"
        time.sleep(0.1)
    assert job.get_status() == JobStatus.FAILED
    assert not marker.exists()
    fetched = Job.fetch(job.id, connection=queue.connection, serializer=JSONSerializer)
    assert "refused by pinflow" in (fetched.latest_result().exc_string or "")


# --- warming (issue 25): a DAG file's top level never runs where claims are made ------------

THIEF_DAG = r'''
import inspect, json, os, socket, struct
from pinflow import DAG, task

LEDGER = {ledger!r}
ATTACK = {attack!r}


def try_every_unix_socket():
    """Speak the token agent's protocol on every Unix socket this process holds."""
    answers = []
    for s in held_sockets():
        if s.family != socket.AF_UNIX:
            continue
        s.settimeout(0.5)
        for ti in range(1, 40):
            body = json.dumps({{"ti_id": ti, "try_number": 1, "worker": "thief",
                               "attempt": "t" * 32}}).encode()
            try:
                s.sendall(struct.pack("!I", len(body)) + body)
                head = s.recv(4)
                answers.append(s.recv(struct.unpack("!I", head)[0]).decode()[:200])
            except (OSError, struct.error) as exc:
                answers.append(type(exc).__name__)
                break
    return answers


def snoop_where_imported():
    try:
        from runner.claim import CLAIMS
    except ImportError:
        return
    stack = [f"{{os.path.basename(f.filename)[:-3]}}/{{f.function}}" for f in inspect.stack()]
    agent, claimed = CLAIMS.agent, []
    if agent is not None and ATTACK:
        for ti in range(1, 40):
            try:
                spec, _ = agent.claim(ti, 1, "thief", "u" * 32)
            except Exception:
                continue  # refused, or no way through
            claimed.append(spec.dag_id)
    with open(LEDGER, "a") as f:  # before the probe below, which may get this process killed
        f.write(json.dumps({{"stack": stack, "agent": repr(agent), "claimed": claimed}}) + "\n")
    if ATTACK:
        with open(LEDGER, "a") as f:
            f.write(json.dumps({{"sockets": try_every_unix_socket()}}) + "\n")


snoop_where_imported()

with DAG("{dag_id}", schedule=None):
    @task
    def noop():
        return "ok"

    noop()
'''

VICTIM_DAG = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task(queue="nobody_listens")
    def pay():
        return "paid"

    pay()
"""


def thief_source(ledger: Path, attack: bool, dag_id: str) -> str:
    return HELD_SOCKETS + THIEF_DAG.format(ledger=str(ledger), attack=attack, dag_id=dag_id)


def ledger_of(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_warming_runs_no_dag_code_where_tries_are_claimed(
    cluster: Cluster, tmp_path: Path, uid: str
):
    """A DAG file's top level, warmed for the next tasks of its version, runs in a fork
    server that has no way to the token agent: another repo's queued try stays queued."""
    ledger = tmp_path / "ledger"
    victim = cluster.repo(f"victim{uid}", tmp_path / "v")
    cluster.push(victim, "v", **{"dags/v.py": VICTIM_DAG.format(dag_id=f"victim_{uid}")})
    thief = cluster.repo(f"thief{uid}", tmp_path / "t")
    thief_dag = thief_source(ledger, True, f"thief_{uid}")
    cluster.push(thief, "t", **{"dags/t.py": thief_dag})
    victim_run = cluster.trigger(f"victim_{uid}")
    for _ in range(3):  # the first caches the version; later ones find it warm
        cluster.wait(cluster.trigger(f"thief_{uid}")["run_id"])

    def no_claim_anywhere() -> None:
        for record in ledger_of(ledger):
            assert record.get("claimed", []) == [], record
            assert all("spec" not in answer for answer in record.get("sockets", [])), record
        assert cluster.run(victim_run["run_id"])["tasks"][0]["state"] == "queued"

    no_claim_anywhere()
    deadline = time.monotonic() + 30  # the fork server imports alongside the task
    while not any("forkserver/_serve" in r.get("stack", []) for r in ledger_of(ledger)):
        assert time.monotonic() < deadline, f"never warmed: {ledger_of(ledger)}"
        time.sleep(0.1)
    no_claim_anywhere()


def test_warming_imports_the_claimed_version_not_the_one_the_redis_job_names(
    cluster: Cluster, tmp_path: Path, uid: str
):
    """Whoever can write to Redis can enqueue a real try's job naming another (cached)
    version's DAG file: that file is never imported for it; the claimed try runs as claimed."""
    ledger = tmp_path / "ledger"
    thief = cluster.repo(f"named{uid}", tmp_path / "t")
    named = cluster.push(thief, "t", **{"dags/t.py": thief_source(ledger, False, f"named_{uid}")})
    assert cluster.wait(cluster.trigger(f"named_{uid}")["run_id"])["state"] == "success"
    ledger.unlink()  # its version is in the workers' cache now
    for worker in list(cluster.workers):  # the job must stay on the queue for take_job
        worker.stop()
    cluster.workers.clear()
    try:
        dag_id = push_quick(cluster, tmp_path, f"claimed_{uid}")
        run = cluster.trigger(dag_id)
        job = take_job(cluster, run["run_id"])
        forged = job.model_copy(
            update={"repo": f"named{uid}", "sha": named, "fileloc": "dags/t.py"}
        ).model_dump()
        Queue(
            queue_name(DEFAULT_QUEUE),
            connection=Redis.from_url(cluster.redis.url),
            serializer=JSONSerializer,
        ).enqueue(JOB_FUNCTION, payload=forged)
        cluster.add_worker(f"forged{uid}")
        done = cluster.wait(run["run_id"])
    finally:
        if not cluster.workers:
            cluster.add_worker(f"forged{uid}")
        cluster.add_worker(f"again3{uid}")
    assert done["state"] == "success" and done["sha"] != named
    assert ledger_of(ledger) == [], "the DAG file the Redis job named was imported"
