"""Worker endpoints of an owed on_failure callback (`scheduler.callback_tries`): claim,
heartbeat, finish, as a try's, under `/task-instances/{id}/callbacks/{number}/`.

`number` is the attempt the worker's job names; `try_number` in the bodies is the failed try
whose callback it is. The claim needs the worker's token and answers a `TaskSpec` with a
credential bound to that try and valid while this callback runs (`scheduler.grants`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from dagstore.access.grants import issue_grant
from dagstore.api.auth import StoreDep, WorkerOrTry, WorkerToken
from dagstore.core.db import db_time
from dagstore.core.protocol import MAX_DB_INT, ClaimRequest, FinishRequest, Heartbeat, TaskSpec
from scheduler import shapes
from scheduler.api import STALE_TRY, TaskInstanceId
from scheduler.callback_tries import claim_callback, finish_callback, heartbeat_callback
from scheduler.grants import try_digest
from scheduler.tryspec import spec_of

router = APIRouter()
Number = Annotated[int, Path(ge=1, le=MAX_DB_INT, description="the callback's attempt")]
PREFIX = "/task-instances/{ti_id}/callbacks/{number}"


@router.post(f"{PREFIX}/claim", tags=["workers"], responses=STALE_TRY)
def post_callback_claim(
    ti_id: TaskInstanceId, number: Number, body: ClaimRequest, store: StoreDep, _: WorkerToken
) -> TaskSpec:
    """due → running for this attempt; 409 when another worker has it or it moved on."""
    credential, grant_hash = issue_grant(ti_id, body.try_number)
    with store.db.write() as session:
        now = db_time(session)
        row, error = claim_callback(
            session, ti_id, body.try_number, number, body.worker, now, body.attempt, grant_hash
        )
        return spec_of(
            row,
            ti_id,
            body.try_number,
            credential,
            store.settings.heartbeat_timeout,
            timeout=None,  # a callback has its own limit (`runner.execute`)
            callback=number,
            callback_error=error,
            log_max_bytes=store.settings.task_log_max_bytes,
        )


@router.post(
    f"{PREFIX}/heartbeat",
    tags=["workers"],
    response_model=shapes.HeartbeatAnswer,
    response_model_exclude_unset=True,
    responses=STALE_TRY,
)
def post_callback_heartbeat(
    ti_id: TaskInstanceId, number: Number, body: Heartbeat, store: StoreDep, who: WorkerOrTry
) -> dict[str, Any]:
    """The callback is alive; optionally the next piece of its log."""
    digest = try_digest(who, ti_id, body.try_number)
    with store.db.write() as session:
        held = heartbeat_callback(
            session, ti_id, body.try_number, number, db_time(session), digest,
            body.log_offset, body.log,
        )  # fmt: skip
    return {"state": "running"} if held is None else {"state": "running", "log_bytes": held}


@router.post(
    f"{PREFIX}/finish",
    tags=["workers"],
    response_model=shapes.FinishAnswer,
    responses=STALE_TRY,
)
def post_callback_finish(
    ti_id: TaskInstanceId, number: Number, body: FinishRequest, store: StoreDep, who: WorkerOrTry
) -> dict[str, str]:
    """The callback ran: its log goes into the failed try's; the task stays failed."""
    digest = try_digest(who, ti_id, body.try_number)
    with store.db.write() as session:
        finish_callback(session, ti_id, body.try_number, number, db_time(session), digest, body)
    return {"state": "failed"}
