"""The fault soak (issue 26): the backing services fail under the HA ledger soak.

PostgreSQL runs as a primary with a synchronous hot standby (`tests.support.pg_ha`), Redis as
a primary, a replica and three Sentinels (`tests.support.sentinel`); every pinflow process is
given the multi-host database URL and the `redis+sentinel://` URL. Two API servers, two
schedulers and four workers run fan-out/fan-in runs (each task writes its start and end to a
ledger outside pinflow), a DAG ticking every second, and a push every few seconds through one
API server or the other. Then, one after another, each while tasks run:

1. kill -9 of the PostgreSQL primary, and the standby promoted (what a failover manager does);
   the dead node later rejoins as the new primary's synchronous standby;
2. kill -9 of the Redis primary (the Sentinels promote the replica; the dead node rejoins);
3. FLUSHALL;
4. the Redis primary restarted without persistence (empty, faster than a failover);
5. PostgreSQL stopped for 30 s, then started again.

The plain setup (one PostgreSQL, one Redis, plain URLs) goes through the same faults, where a
killed service comes back by itself (a restart) instead of failing over. No pinflow process
is restarted. Pass: every run succeeds, no try executes twice, no two tries
of a task overlap, no pinflow process exited, every acknowledged push and every finished try
is there after, the ticking DAG ticks again after every fault. Each fault's recovery time
(fault, or the end of the outage, to the next task finished) is printed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import func, select

from dagstore.core.db import Database
from scheduler.models import DagRun, TaskInstance, TaskTry
from tests.failure.test_crashes import report
from tests.failure.test_soak import COMMON, FAN_DAG, Soak, ledger_faults
from tests.support.git import Git
from tests.support.pg import find_pg_bin
from tests.support.pg_ha import ReplicatedPostgres
from tests.support.redis import RedisServer
from tests.support.sentinel import SentinelRedis

RUNS_PER_FAULT = 4
WIDTH = 8
HEARTBEAT_TIMEOUT = 10.0
LEASE_TTL = 2.0
PG_STOP = 30.0
BOUND = 120.0  # seconds for a fault's runs to end, and for a recovery
PUSH_EVERY = 3.0

FAN = FAN_DAG.format(dag_id="fault_fan", width=WIDTH)

TICKING = """
with DAG("fault_tick", schedule=timedelta(seconds=1), start_date="2026-01-01", catchup=False,
         max_active_runs=1000):
    @task(retries=3)
    def tick(context):
        work(context)

    tick()
"""


@dataclass
class Fault:
    name: str
    inject: Callable[[], float]  # does it; returns when the outage ended (time.time())
    # recovery: from the outage's end to the first task that started after it finishing
    repair: Callable[[], None] = lambda: None  # after its runs ended: a node rejoins
    at: float = 0.0
    ended: float = 0.0
    recovered_s: float | None = None
    tick_s: float | None = None
    runs: list[str] = field(default_factory=list)


class Pusher(threading.Thread):
    """Pushes a commit every few seconds, through API server A and B in turn, and records
    what git was told: an acknowledged push must be in the store afterwards."""

    def __init__(self, soak: Soak, work: Git, token: str) -> None:
        super().__init__(daemon=True)
        self.soak, self.work, self.token = soak, work, token
        self.done = threading.Event()
        self.pushes: list[tuple[str, int, str]] = []  # (sha, returncode, stderr)

    def run(self) -> None:
        n = 0
        while not self.done.wait(PUSH_EVERY):
            n += 1
            server = self.soak.servers[n % 2]
            self.work.write("data/counter.txt", f"{n}\n")
            sha = self.work.commit(f"push {n}")
            result = self.work.run(
                "push", server.git_url("faults", self.token), "main", check=False
            )
            self.pushes.append((sha, result.returncode, result.stderr))


def finished_since(db: Database, moment: float) -> datetime | None:
    """When the first try that started after `moment` (a time.time()) ended, or None: a task
    that went through the queue and the database after the fault."""
    after = datetime.fromtimestamp(moment, UTC)
    try:
        with db.read() as session:
            return session.scalar(
                select(func.min(TaskTry.ended_at)).where(
                    TaskTry.started_at > after, TaskTry.state == "success"
                )
            )
    except Exception:  # noqa: BLE001 - the database is what is failing
        db.engine.dispose()
        return None


def first_tick_since(db: Database, moment: float) -> datetime | None:
    after = datetime.fromtimestamp(moment, UTC)
    try:
        with db.read() as session:
            return session.scalar(
                select(func.min(DagRun.created_at)).where(
                    DagRun.dag_id == "fault_tick", DagRun.created_at > after
                )
            )
    except Exception:  # noqa: BLE001
        db.engine.dispose()
        return None


def finished_tries(db: Database) -> set[tuple[str, str, int, str]]:
    with db.read() as session:
        rows = session.execute(
            select(DagRun.run_id, TaskInstance.task_id, TaskTry.try_number, TaskTry.state)
            .join(TaskInstance, TaskInstance.id == TaskTry.ti_id)
            .join(DagRun, DagRun.id == TaskInstance.run_pk)
            .where(TaskTry.state.in_(("success", "failed")))
        ).all()
    return {tuple(r) for r in rows}  # type: ignore[misc]


def wait_for(what: str, check: Callable[[], Any], timeout: float = BOUND) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


SETUPS = ("replicated", "plain")


@pytest.fixture(params=SETUPS)
def fault_soak(request, tmp_path_factory) -> Iterator[tuple[Soak, ReplicatedPostgres, Any]]:
    """The replicated setup (PostgreSQL primary + synchronous standby, Redis with Sentinel)
    and the plain one (one PostgreSQL, one Redis, plain URLs)."""
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL not installed")
    replicated = request.param == "replicated"
    pg = ReplicatedPostgres(replicated=replicated).start()
    redis_server: Any = SentinelRedis() if replicated else RedisServer()
    soak: Soak | None = None
    try:
        url = pg.create_database("pinflow")
        soak = Soak(tmp_path_factory.mktemp("faults"), url, "postgresql")
        soak.cluster.env["PINFLOW_HEARTBEAT_TIMEOUT"] = str(HEARTBEAT_TIMEOUT)
        soak.cluster.redis = redis_server  # started (and stopped) by the cluster
        soak.start()
        yield soak, pg, redis_server
    finally:
        if soak is not None:
            soak.stop()
        redis_server.cleanup()
        pg.stop()


def replicated_faults(pg: ReplicatedPostgres, sentinel: SentinelRedis) -> list[Fault]:
    victims: list[Any] = []

    def kill_redis_primary() -> float:
        killed, node = sentinel.kill_primary()
        victims.append(node)
        return killed

    def flushall() -> float:
        sentinel.primary().client().flushall()
        return time.time()

    return [
        Fault("PostgreSQL primary kill -9 + promotion", pg.fail_over, pg.rejoin_old_primary),
        Fault("Redis primary kill -9 (Sentinel failover)", kill_redis_primary,
              lambda: sentinel.rejoin(victims[-1])),  # fmt: skip
        Fault("FLUSHALL", flushall),
        Fault("Redis restart without persistence", sentinel.restart_primary_empty),
        Fault(f"PostgreSQL stopped {PG_STOP:.0f} s", lambda: stop_pg(pg)),
    ]


def plain_faults(pg: ReplicatedPostgres, redis_server: RedisServer) -> list[Fault]:
    """No standby, no Sentinel: the same faults, each ended by the service coming back."""

    def kill_pg() -> float:
        pg.primary.kill9()
        pg.primary.start()  # crash recovery
        return time.time()

    def kill_redis() -> float:
        redis_server.stop()  # kill -9
        redis_server.start()  # empty
        return time.time()

    def flushall() -> float:
        redis.Redis.from_url(redis_server.url).flushall()
        return time.time()

    def restart_redis() -> float:
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(redis_server.url).shutdown(nosave=True)
        assert redis_server.proc is not None
        redis_server.proc.wait()
        redis_server.start()
        return time.time()

    return [
        Fault("PostgreSQL kill -9 + restart", kill_pg),
        Fault("Redis kill -9 + restart", kill_redis),
        Fault("FLUSHALL", flushall),
        Fault("Redis restart without persistence", restart_redis),
        Fault(f"PostgreSQL stopped {PG_STOP:.0f} s", lambda: stop_pg(pg)),
    ]


def stop_pg(pg: ReplicatedPostgres) -> float:
    pg.primary.stop("fast")
    time.sleep(PG_STOP)
    pg.primary.start()
    return time.time()


def test_fault_soak(fault_soak, tmp_path: Path):
    soak, pg, redis_server = fault_soak
    cluster = soak.cluster
    work = cluster.repo("faults", tmp_path / "w")
    common = COMMON.format(ledger=str(soak.ledger))
    cluster.push(work, "dags", **{"dags/fan.py": common + FAN, "dags/tick.py": common + TICKING})
    db = Database(cluster.database_url)
    pusher = Pusher(soak, work, cluster.tokens["push"])
    pusher.start()
    if pg.replicated:
        faults = replicated_faults(pg, redis_server)
    else:
        faults = plain_faults(pg, redis_server)
    acknowledged: set[tuple[str, str, int, str]] = set()
    try:
        for fault in faults:
            fault.runs = [trigger(soak, i) for i in range(RUNS_PER_FAULT)]
            wait_for("tasks in flight", lambda: soak.busy_workers(0.05))
            acknowledged |= finished_tries(db)
            fault.at = time.time()
            fault.ended = fault.inject() or fault.at
            fault.ended = max(fault.ended, fault.at)
            done = wait_for(f"a task finished after {fault.name}",
                            lambda f=fault: finished_since(db, f.ended))  # fmt: skip
            fault.recovered_s = round(done.timestamp() - fault.ended, 2)
            tick = wait_for(f"a tick after {fault.name}",
                            lambda f=fault: first_tick_since(db, f.ended))  # fmt: skip
            fault.tick_s = round(tick.timestamp() - fault.ended, 2)
            wait_for(f"the runs of {fault.name} ended", lambda f=fault: runs_final(db, f.runs))
            fault.repair()
        with cluster.api("trigger") as api:
            assert api.post("/dags/fault_tick/pause").status_code == 200
        wait_for("every run ended", lambda: runs_final(db, None))
    finally:
        pusher.done.set()
        pusher.join()

    with db.read() as session:
        runs = session.execute(select(DagRun.run_id, DagRun.dag_id, DagRun.state)).all()
    final_tries = finished_tries(db)
    db.dispose()
    executions = soak.executions()
    duplicates, overlaps, unaccounted = ledger_faults(executions)
    recorded = {(r, t, n) for r, t, n, _state in final_tries}
    unknown_to_pinflow = len(set(executions) - recorded)
    lost_tries = acknowledged - final_tries
    landed = [sha for sha, code, _ in pusher.pushes if code == 0]
    refused = [err for _, code, err in pusher.pushes if code != 0]
    missing_pushes = [sha for sha in landed if not resolvable(soak, sha)]
    exited = [p.name for p in cluster.schedulers + cluster.workers if not p.alive]
    exited += [s.url for s in soak.servers if s.proc is None or s.proc.poll() is not None]
    for fault in faults:
        report(
            f"fault soak: {fault.name}",
            recovery_s=fault.recovered_s,
            next_tick_s=fault.tick_s,
            outage_s=round(fault.ended - fault.at, 1),
        )
    report(
        "fault soak",
        runs=len(runs),
        fan_runs=sum(r.dag_id == "fault_fan" for r in runs),
        tick_runs=sum(r.dag_id == "fault_tick" for r in runs),
        failed_runs=sum(r.state != "success" for r in runs),
        executions=sum(len(e) for e in executions.values()),
        duplicates=duplicates,
        overlaps=overlaps,
        unaccounted=unaccounted,
        unknown_to_pinflow=unknown_to_pinflow,
        finished_tries_lost=len(lost_tries),
        pushes_acknowledged=len(landed),
        pushes_refused=len(refused),
        refusals="; ".join(sorted({e.strip().splitlines()[-1][:60] for e in refused if e.strip()})),
        pushes_missing=len(missing_pushes),
        processes_exited=len(exited),
    )
    assert not exited, (exited, cluster.logs())
    assert all(r.state == "success" for r in runs), [r for r in runs if r.state != "success"]
    assert duplicates == 0, "a try executed twice"
    assert overlaps == 0 and unaccounted == 0, "two tries of one task ran at once"
    assert unknown_to_pinflow == 0, "an execution pinflow has no try for"
    assert not lost_tries, f"finished tries lost: {sorted(lost_tries)[:5]}"
    assert landed and not missing_pushes, f"acknowledged pushes lost: {missing_pushes}"
    assert all("rejected" in e or "error" in e.lower() or "fatal" in e for e in refused), refused
    # The branch is at the last acknowledged push, or at a later one whose answer was lost.
    shas = [sha for sha, _, _ in pusher.pushes]
    assert tip(soak) in shas and shas.index(tip(soak)) >= shas.index(landed[-1])


def trigger(soak: Soak, i: int) -> str:
    """A run through API server A or B; a 503 (the database failing over) is retried."""
    server = soak.servers[i % 2]
    headers = {"Authorization": f"Bearer {soak.cluster.tokens['trigger']}"}
    deadline = time.monotonic() + BOUND
    while True:
        try:
            response = httpx.post(
                f"{server.url}/api/v1/dags/fault_fan/runs", json={}, headers=headers, timeout=30
            )
            if response.status_code == 201:
                return response.json()["run_id"]
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "no run could be triggered"
        time.sleep(0.5)


def runs_final(db: Database, run_ids: list[str] | None) -> bool:
    try:
        with db.read() as session:
            query = select(func.count()).select_from(DagRun)
            query = query.where(DagRun.state.in_(("queued", "running")))
            if run_ids is not None:
                query = query.where(DagRun.run_id.in_(run_ids))
            return session.scalar(query) == 0
    except Exception:  # noqa: BLE001 - the database may be failing over
        db.engine.dispose()
        return False


def resolvable(soak: Soak, sha: str) -> bool:
    with soak.cluster.api("read") as api:
        return api.get(f"/repos/faults/resolve/{sha}").status_code == 200


def tip(soak: Soak) -> str:
    with soak.cluster.api("read") as api:
        return api.get("/repos/faults/refs").json()["refs"]["refs/heads/main"]

