"""Routes of the runs API and the worker endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select, update

from dagstore.access.grants import issue_grant
from dagstore.api.auth import ReadToken, StoreDep, TriggerToken, WorkerOrTry, WorkerToken
from dagstore.authoring.mapping import map_call
from dagstore.core.db import as_utc, db_time
from dagstore.core.errors import NotFound
from dagstore.core.logtail import HeadTail
from dagstore.core.models import Dag
from dagstore.core.protocol import (
    MAX_DB_INT,
    ClaimRequest,
    FinishRequest,
    Heartbeat,
    JobPayload,
    TaskSpec,
)
from dagstore.parsing.dags import get_dag
from scheduler import shapes
from scheduler.backfill import backfill_json, create_backfill, release_held
from scheduler.cancel import cancel
from scheduler.clear import ClearRequest, clear
from scheduler.enqueue import Enqueuer
from scheduler.grants import try_digest
from scheduler.metrics import DISPATCH_SECONDS, TASK_SECONDS, TRIES_FINISHED
from scheduler.models import Backfill, DagRun, TaskInstance, TaskTry
from scheduler.runs import RUN_STATES
from scheduler.taskstate import queue_ready
from scheduler.tries import TryLog, append_log, claim, finish, heartbeat, upstream_results
from scheduler.trigger import pinned_dag, resolve_target, trigger
from scheduler.tryspec import spec_of
from scheduler.views import get_run, newest_first, run_json, tasks_json

router = APIRouter()
MIN_YEAR, MAX_YEAR = 1900, 9000  # backfill ranges: far from datetime's ends
# The worker calls' 409: the try is stale, someone else's, or no longer running.
STALE_TRY: dict[int | str, dict[str, str]] = {
    409: {"description": "The try is stale, another worker's, or no longer running"}
}


def get_enqueuer(request: Request) -> Enqueuer | None:
    return getattr(request.app.state, "enqueuer", None)


EnqueuerDep = Annotated[Enqueuer | None, Depends(get_enqueuer)]
TaskInstanceId = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="task instance id")]


class TriggerRequest(BaseModel):
    ref: str | None = Field(default=None, max_length=255)
    sha: str | None = Field(default=None, max_length=40)
    conf: dict[str, Any] = Field(default_factory=dict)


def _enqueue(enqueuer: Enqueuer | None, payloads: list[JobPayload]) -> None:
    """After the commit; without Redis here, the scheduler's loop enqueues them."""
    if enqueuer is not None and payloads:
        enqueuer.enqueue(payloads)


@router.post(
    "/dags/{dag_id}/runs",
    status_code=201,
    tags=["runs"],
    response_model=shapes.Run,
    responses={409: {"description": "The DAG has no version that parsed cleanly"}},
)
def post_run(
    dag_id: str, body: TriggerRequest, store: StoreDep, enqueuer: EnqueuerDep, token: TriggerToken
) -> dict[str, Any]:
    """A manual run pinned to `sha`, to what `ref` names now, or to the current version."""
    repo, sha = resolve_target(store, dag_id, body.ref, body.sha)
    with store.db.write() as session:
        run = trigger(session, repo, dag_id, sha, body.conf, f"manual:{token.name or token.id}")
        payloads = queue_ready(session, db_time(session), run_pk=run.id) if enqueuer else []
        body_out = run_json(run, tasks_json(session, run))
    _enqueue(enqueuer, payloads)
    return body_out


@router.get(
    "/runs",
    tags=["runs"],
    response_model=shapes.RunList,
    responses={404: {"description": "No DAG has that dag_id"}},
)
def get_runs(
    store: StoreDep,
    _: ReadToken,
    dag_id: str | None = None,
    state: Annotated[str | None, Query(pattern=f"^({'|'.join(RUN_STATES)})$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Runs, newest first; by DAG and state."""
    # Through the index of the filters (`newest_first`): a page, whatever the history.
    filters = [(c, v) for c, v in ((DagRun.dag_id, dag_id), (DagRun.state, state)) if v]
    query = newest_first(select(DagRun), *filters).limit(limit)
    with store.db.read() as session:
        if dag_id:
            get_dag(session, dag_id)  # 404 for a DAG that never existed, not an empty list
        return {"items": [run_json(r) for r in session.scalars(query)]}


@router.get("/runs/{run_id}", tags=["runs"], response_model=shapes.Run)
def get_one_run(run_id: str, store: StoreDep, _: ReadToken) -> dict[str, Any]:
    """One run with its pinned sha, its state, and every task with its tries."""
    with store.db.read() as session:
        run = get_run(session, run_id)
        return run_json(run, tasks_json(session, run))


class BackfillBody(BaseModel):
    start: datetime
    end: datetime
    ref: str | None = Field(default=None, max_length=255)
    sha: str | None = Field(default=None, max_length=40)
    max_active_runs: int | None = Field(default=None, ge=1, le=1000)

    @field_validator("start", "end")
    @classmethod
    def _in_range(cls, value: datetime) -> datetime:
        """Cron arithmetic and UTC conversion overflow at the ends of the calendar (year 1 or
        9999): a clear 400, not a 500."""
        try:
            utc = as_utc(value)
        except OverflowError:
            utc = None
        if utc is None or not MIN_YEAR <= utc.year <= MAX_YEAR:
            raise ValueError(f"must be a time between the years {MIN_YEAR} and {MAX_YEAR}")
        return utc


@router.post(
    "/dags/{dag_id}/backfill",
    status_code=201,
    tags=["runs"],
    response_model=shapes.BackfillCreated,
    responses={409: {"description": "The DAG has no version that parsed cleanly"}},
)
def post_backfill(
    dag_id: str, body: BackfillBody, store: StoreDep, enqueuer: EnqueuerDep, token: TriggerToken
) -> dict[str, Any]:
    """One run per schedule tick in [start, end], pinned to `sha`, `ref` or the current
    version; ticks that have a run already are skipped and listed."""
    repo, sha = resolve_target(store, dag_id, body.ref, body.sha)
    with store.db.write() as session:
        vd = pinned_dag(session, repo, dag_id, sha)
        made = create_backfill(
            session,
            dag_id,
            sha,
            vd.fileloc,
            vd.structure,
            as_utc(body.start),
            as_utc(body.end),
            body.max_active_runs,
            f"backfill:{token.name or token.id}",
        )
        now = db_time(session)
        release_held(session, now, made.backfill.id)
        payloads = queue_ready(session, now) if enqueuer else []
        out = backfill_json(session, made.backfill)
    _enqueue(enqueuer, payloads)
    return {**out, "created": made.created, "skipped": made.skipped}


@router.get("/backfills/{backfill_id}", tags=["runs"], response_model=shapes.Backfill)
def get_backfill(backfill_id: TaskInstanceId, store: StoreDep, _: ReadToken) -> dict[str, Any]:
    """A backfill's range, pinned sha and progress."""
    with store.db.read() as session:
        backfill = session.get(Backfill, backfill_id)
        if backfill is None:
            raise NotFound(f"backfill {backfill_id} does not exist")
        return backfill_json(session, backfill)


class ClearBody(BaseModel):
    task_ids: list[Annotated[str, Field(min_length=1, max_length=270)]] | None = Field(
        default=None, max_length=10_000
    )
    failed_only: bool = False
    downstream: bool = False
    on_latest: bool = False


@router.post(
    "/runs/{run_id}/clear",
    tags=["runs"],
    response_model=shapes.Cleared,
    responses={409: {"description": "A task is queued or running, or latest lacks it"}},
)
def post_clear(
    run_id: str, body: ClearBody, store: StoreDep, enqueuer: EnqueuerDep, _: TriggerToken
) -> dict[str, Any]:
    """Run tasks again (a new try each), on the run's own sha unless `on_latest`; 409 for a
    queued or running task (cancel first) or a current version that lacks a cleared task."""
    request = ClearRequest(body.task_ids, body.failed_only, body.downstream, body.on_latest)
    with store.db.write() as session:
        now = db_time(session)
        cleared = clear(session, run_id, request, now)
        run = get_run(session, run_id)
        payloads = queue_ready(session, now, run_pk=run.id) if enqueuer else []
        out = run_json(run, tasks_json(session, run))
    _enqueue(enqueuer, payloads)
    return {**out, "cleared": cleared}


@router.post(
    "/runs/{run_id}/cancel",
    tags=["runs"],
    response_model=shapes.Canceled,
    responses={409: {"description": "The run has ended already"}},
)
def post_cancel(run_id: str, store: StoreDep, token: TriggerToken) -> dict[str, Any]:
    """Cancel the run: queued and scheduled tasks never start, running ones are stopped by
    their worker at its next heartbeat, and the run ends `canceled`. 409 when it has ended."""
    by = token.name or f"token {token.id}"
    with store.db.write() as session:
        stopped = cancel(session, run_id, db_time(session), by)
        run = get_run(session, run_id)
        return {**run_json(run, tasks_json(session, run)), "canceled_tasks": stopped}


@router.get("/runs/{run_id}/tasks/{task_id}/logs", tags=["runs"], response_class=PlainTextResponse)
def get_logs(
    run_id: str,
    task_id: str,
    store: StoreDep,
    _: ReadToken,
    try_number: Annotated[int | None, Query(alias="try", ge=1, le=MAX_DB_INT)] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INT, description="from this byte on")] = 0,
    map_index: Annotated[
        int, Query(ge=-1, le=MAX_DB_INT, description="a mapped task's instance; -1: not mapped")
    ] = -1,
) -> PlainTextResponse:
    """The try's log (the latest try by default) from byte `offset`: what it printed so far
    while it runs. Headers say whether it has ended (`X-Pinflow-Try-Ended`), its state, and
    how many bytes it printed, where a follower asks next (`X-Pinflow-Log-Bytes`). A long log
    keeps its head and tail (PINFLOW_TASK_LOG_MAX_BYTES) and says where it cut between them;
    a follower whose offset fell in the cut gets that marker, then the tail."""
    with store.db.read() as session:
        run = get_run(session, run_id)
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.run_pk == run.id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index == map_index,
            )
        )
        if ti is None:
            raise NotFound(_no_such_instance(session, run, task_id, map_index))
        wanted = try_number or ti.try_number
        entry = session.scalar(
            select(TaskTry).where(TaskTry.ti_id == ti.id, TaskTry.try_number == wanted)
        )
        if entry is None:
            raise NotFound(_no_such_try(run_id, ti, wanted))
        log = HeadTail.restore(store.settings.task_log_max_bytes, entry.log, entry.log_tail,
                               entry.log_bytes)  # fmt: skip
        headers = {
            "X-Pinflow-Try": str(wanted),
            "X-Pinflow-Try-State": entry.state,
            "X-Pinflow-Try-Ended": "false" if entry.state == "running" else "true",
            "X-Pinflow-Log-Bytes": str(log.total),
        }
        text = log.since(offset).decode("utf-8", "replace")
        return PlainTextResponse(text, headers=headers)


def _no_such_instance(session: Any, run: DagRun, task_id: str, map_index: int) -> str:
    """Why there is no such task instance: no such task, or a mapped one asked wrongly."""
    indexes = sorted(session.scalars(select(TaskInstance.map_index).where(
        TaskInstance.run_pk == run.id, TaskInstance.task_id == task_id)))  # fmt: skip
    if not indexes:
        return f"run {run.run_id!r} has no task {task_id!r}"
    if map_index < 0:
        return f"task {task_id!r} is mapped ({len(indexes)} instances): pass map_index"
    return f"task {task_id!r} has no map_index {map_index} (it has {indexes[0]}..{indexes[-1]})"


def _no_such_try(run_id: str, ti: TaskInstance, wanted: int) -> str:
    """Why try `wanted` has no log: the task never ran, its try is queued and not started yet,
    or it never had that many tries."""
    task = f"task {ti.task_id!r} of run {run_id!r}"
    if wanted == ti.try_number == 1 or not ti.try_number:
        return f"{task} never ran ({ti.state})"
    if wanted == ti.try_number:
        return f"{task}: try {wanted} has not started ({ti.state})"
    return f"{task} has no try {wanted} (its latest is {ti.try_number})"


def _set_paused(store: StoreDep, dag_id: str, paused: bool) -> dict[str, Any]:
    with store.db.write() as session:
        get_dag(session, dag_id)
        session.execute(update(Dag).where(Dag.dag_id == dag_id).values(is_paused=paused))
    return {"dag_id": dag_id, "is_paused": paused}


@router.post("/dags/{dag_id}/pause", tags=["dags"], response_model=shapes.Paused)
def pause(dag_id: str, store: StoreDep, _: TriggerToken) -> dict[str, Any]:
    """Stop creating scheduled runs of the DAG."""
    return _set_paused(store, dag_id, True)


@router.post("/dags/{dag_id}/unpause", tags=["dags"], response_model=shapes.Paused)
def unpause(dag_id: str, store: StoreDep, _: TriggerToken) -> dict[str, Any]:
    """Resume creating scheduled runs of the DAG."""
    return _set_paused(store, dag_id, False)


@router.post("/task-instances/{ti_id}/claim", tags=["workers"], responses=STALE_TRY)
def post_claim(
    ti_id: TaskInstanceId, body: ClaimRequest, store: StoreDep, _: WorkerToken
) -> TaskSpec:
    """queued → running for this try; 409 when the try is stale or someone else has it.

    The same attempt asking again gets the same answer (its first one was lost), with a new
    credential for the try: the one of the answer that arrives is the one that works."""
    credential, grant_hash = issue_grant(ti_id, body.try_number)
    with store.db.write() as session:
        now = db_time(session)
        row = claim(
            session,
            ti_id,
            body.try_number,
            body.worker,
            now,
            attempt=body.attempt,
            grant_hash=grant_hash,
        )
        upstream = upstream_results(session, row.run_pk, row.upstream or [])
        map_values, map_positions = map_call(row.map_spec, row.map_index, upstream)
        queued = as_utc(row.queued_at)
        if queued is not None:
            DISPATCH_SECONDS.observe(max((now - queued).total_seconds(), 0.0))
        return spec_of(
            row,
            ti_id,
            body.try_number,
            credential,
            store.settings.heartbeat_timeout,
            upstream_results=upstream,
            map_values=map_values,
            map_positions=map_positions,
            log_max_bytes=store.settings.task_log_max_bytes,
        )


@router.post(
    "/task-instances/{ti_id}/heartbeat",
    tags=["workers"],
    response_model=shapes.HeartbeatAnswer,
    response_model_exclude_unset=True,
    responses=STALE_TRY,
)
def post_heartbeat(
    ti_id: TaskInstanceId, body: Heartbeat, store: StoreDep, who: WorkerOrTry
) -> dict[str, Any]:
    """The try is alive; optionally the next piece of its log."""
    digest = try_digest(who, ti_id, body.try_number)
    with store.db.write() as session:
        heartbeat(session, ti_id, body.try_number, db_time(session), digest)
        if not body.log:
            return {"state": "running"}  # nothing to add: the log is not even read
        cap = store.settings.task_log_max_bytes
        held = append_log(session, ti_id, body.try_number, body.log_offset, body.log, cap)
    return {"state": "running", "log_bytes": held}


@router.post(
    "/task-instances/{ti_id}/finish",
    tags=["workers"],
    response_model=shapes.FinishAnswer,
    responses=STALE_TRY,
)
def post_finish(
    ti_id: TaskInstanceId,
    body: FinishRequest,
    store: StoreDep,
    enqueuer: EnqueuerDep,
    who: WorkerOrTry,
) -> dict[str, str]:
    """Record the outcome; downstream tasks are enqueued now, not at the next scheduler tick."""
    digest = try_digest(who, ti_id, body.try_number)
    with store.db.write() as session:
        now = db_time(session)
        finished = finish(
            session,
            ti_id,
            body.try_number,
            body.state == "success",
            now,
            result=body.result,
            error=body.error,
            log=TryLog(body.log, body.log_tail, body.log_bytes),
            digest=digest,
            log_cap=store.settings.task_log_max_bytes,
            timed_out=body.timed_out,
        )
        # Scheduled tasks of the run that this finish did not make ready (a fan-out past
        # queue_ready's batch) are left to the scheduler's loop, which queues them within a tick.
        ready = enqueuer is not None and finished.may_queue
        payloads = queue_ready(session, now, run_pk=finished.run.id) if ready else []
    _enqueue(enqueuer, payloads)
    TRIES_FINISHED.labels(finished.state).inc()
    if finished.seconds is not None:
        TASK_SECONDS.observe(max(finished.seconds, 0.0))
    return {"state": finished.state}
