"""An owed on_failure callback as a worker lives it: claim, heartbeat, finish; lost, retried
or given up; enqueued. What is owed and why: `scheduler.callbacks`."""

from __future__ import annotations

import hmac
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.orm import Session

from dagstore.core.errors import Conflict, Forbidden, NotFound
from dagstore.core.models import Repo
from dagstore.core.protocol import CALLBACK_TIMEOUT, FinishRequest, JobPayload
from scheduler.callbacks import MARK, append_line
from scheduler.enqueue import Enqueuer
from scheduler.models import DagRun, TaskCallback, TaskInstance
from scheduler.taskstate import payload
from scheduler.tries import _CLAIM_READ, append_log
from scheduler.trylog import held_log, store_log

log = logging.getLogger("pinflow.scheduler")

MAX_ATTEMPTS = 3  # a callback whose worker dies is run again this many times in all


def _where(ti_id: int, try_number: int, number: int) -> list[Any]:
    return [
        TaskCallback.ti_id == ti_id,
        TaskCallback.try_number == try_number,
        TaskCallback.number == number,
    ]


def claim_callback(
    session: Session,
    ti_id: int,
    try_number: int,
    number: int,
    worker: str,
    now: datetime,
    attempt: str | None,
    grant_hash: str,
) -> tuple[Row[Any], str]:
    """due → running for attempt `number`; returns what the worker needs (as a try's claim
    reads it) and the task's error. The same `attempt` asking again is answered again."""
    row = session.execute(_CLAIM_READ, {"ti_id": ti_id}).one_or_none()  # the run, locked first
    if row is None:
        raise NotFound(f"task instance {ti_id} does not exist")
    won = session.execute(
        update(TaskCallback)
        .where(*_where(ti_id, try_number, number), TaskCallback.state == "due")
        .values(state="running", worker=worker, attempt=attempt, grant_hash=grant_hash,
                heartbeat_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount == 1  # fmt: skip
    if won:
        header = f"\n{MARK} on_failure callback (attempt {number}) on worker {worker} {MARK}\n"
        base = append_line(session, ti_id, try_number, header)
        session.execute(
            update(TaskCallback)
            .where(*_where(ti_id, try_number, number))
            .values(log_base=base)
            .execution_options(synchronize_session=False)
        )
    elif attempt is None or session.execute(
        update(TaskCallback)
        .where(*_where(ti_id, try_number, number), TaskCallback.state == "running",
               TaskCallback.attempt == attempt)
        .values(heartbeat_at=now, grant_hash=grant_hash)
        .execution_options(synchronize_session=False)
    ).rowcount != 1:  # fmt: skip
        raise Conflict(
            f"the on_failure callback of task instance {ti_id} try {try_number} "
            f"(attempt {number}) cannot be claimed: it is {_state(session, ti_id, try_number)}"
        )
    error = session.scalar(select(TaskCallback.error).where(*_where(ti_id, try_number, number)))
    return row, error or "failed"


def _state(session: Session, ti_id: int, try_number: int) -> str:
    found = session.execute(
        select(TaskCallback.state, TaskCallback.number).where(
            TaskCallback.ti_id == ti_id, TaskCallback.try_number == try_number
        )
    ).one_or_none()
    return "not owed" if found is None else f"{found.state} at attempt {found.number}"


def _fenced(
    session: Session, ti_id: int, try_number: int, number: int, digest: str | None, **values: Any
) -> int:
    """running → `values` for this attempt under this credential; its log_base. 409 when the
    callback is no longer this attempt's, 403 when the credential is not the claim's."""
    guards = [*_where(ti_id, try_number, number), TaskCallback.state == "running"]
    if digest is not None:
        guards.append(TaskCallback.grant_hash == digest)
    if session.execute(
        update(TaskCallback).where(*guards).values(**values)
        .execution_options(synchronize_session=False)
    ).rowcount != 1:  # fmt: skip
        current = session.execute(
            select(TaskCallback.grant_hash).where(
                *_where(ti_id, try_number, number), TaskCallback.state == "running"
            )
        ).one_or_none()
        if (
            digest is not None
            and current is not None
            and not hmac.compare_digest(current.grant_hash or "", digest)
        ):
            raise Forbidden("this credential was never issued for this callback or was replaced")
        raise Conflict(
            f"the on_failure callback of task instance {ti_id} try {try_number} (attempt "
            f"{number}) is no longer running: it is {_state(session, ti_id, try_number)}"
        )
    return session.scalar(select(TaskCallback.log_base).where(*_where(ti_id, try_number, number)))


def heartbeat_callback(
    session: Session,
    ti_id: int,
    try_number: int,
    number: int,
    now: datetime,
    digest: str | None,
    offset: int = 0,
    piece: str | None = None,
) -> int | None:
    """The callback is alive; its next piece of log goes into the try's log after its
    header. Returns the bytes of the callback's log held (None without a piece)."""
    base = _fenced(session, ti_id, try_number, number, digest, heartbeat_at=now)
    if not piece:
        return None
    return append_log(session, ti_id, try_number, base + offset, piece) - base


def finish_callback(
    session: Session,
    ti_id: int,
    try_number: int,
    number: int,
    now: datetime,
    digest: str | None,
    report: FinishRequest,
) -> str:
    """running → done (failed when the worker could not even run it: the version would not
    come); the callback's whole log replaces its pieces in the try's log, then the closing
    marker."""
    state = "done" if report.state == "success" else "failed"
    base = _fenced(session, ti_id, try_number, number, digest, state=state, ended_at=now)
    text = report.log.encode("utf-8")
    log = held_log(session, ti_id, try_number, len(text) + 200)
    if log is not None:
        # The callback's stream starts at `base`: what its pieces already brought is skipped.
        log.write_at(base, text)
        log.add_line(f"{MARK} end of on_failure callback ({state}) {MARK}\n")
        store_log(session, ti_id, try_number, log)
    return state


def recover_callbacks(session: Session, now: datetime, heartbeat_timeout: float) -> list[int]:
    """Running callbacks whose worker went silent: due again (a new attempt number, so the
    dead attempt's job and credential are worth nothing), or given up after MAX_ATTEMPTS;
    either way a line in the try's log says so. Returns the task instance ids."""
    cutoff = now - timedelta(seconds=heartbeat_timeout)
    rows = session.execute(
        select(TaskCallback.ti_id, TaskCallback.try_number, TaskCallback.number,
               TaskCallback.worker)
        .where(TaskCallback.state == "running", TaskCallback.heartbeat_at < cutoff)
        .order_by(TaskCallback.id)
    ).all()  # fmt: skip
    moved = []
    for ti_id, try_number, number, worker in rows:
        again = number < MAX_ATTEMPTS
        values: dict[str, Any] = (
            {"state": "due", "number": number + 1, "worker": None, "attempt": None,
             "grant_hash": None, "heartbeat_at": None, "due_at": now}
            if again else {"state": "given_up", "ended_at": now}
        )  # fmt: skip
        if session.execute(
            update(TaskCallback)
            .where(*_where(ti_id, try_number, number), TaskCallback.state == "running",
                   TaskCallback.heartbeat_at < cutoff)
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount != 1:  # fmt: skip
            continue  # it heartbeated or finished meanwhile
        what = (f"running it again (attempt {number + 1} of {MAX_ATTEMPTS})" if again
                else f"given up after {MAX_ATTEMPTS} attempts")  # fmt: skip
        line = (f"pinflow: on_failure callback attempt {number} lost: no heartbeat for "
                f"{heartbeat_timeout:g} s from worker {worker or '?'}; {what}\n")  # fmt: skip
        append_line(session, ti_id, try_number, line)
        log.warning("task instance %s try %s: %s", ti_id, try_number, line.strip())
        moved.append(ti_id)
    return moved


def requeue_callbacks(session: Session, enqueuer: Enqueuer, now: datetime, grace: float) -> int:
    """Enqueue every due callback whose job Redis does not hold (a new one, or one Redis
    lost or a worker dropped): its task's queue, its try's commit."""
    rows = session.execute(
        select(TaskCallback, TaskInstance, DagRun, Repo.name)
        .join(TaskInstance, TaskInstance.id == TaskCallback.ti_id)
        .join(DagRun, DagRun.id == TaskInstance.run_pk)
        .join(Repo, Repo.id == DagRun.repo_id)
        .where(TaskCallback.state == "due")
        .order_by(TaskCallback.id)
        .limit(1000)
    ).all()
    if not rows:
        return 0
    payloads = [callback_payload(cb, ti, run, repo) for cb, ti, run, repo in rows]
    due_at = {cb.ti_id: cb.due_at for cb, _, _, _ in rows}
    lost = enqueuer.missing(payloads, now - timedelta(seconds=grace), due_at)
    return enqueuer.enqueue(lost)


def callback_payload(cb: TaskCallback, ti: TaskInstance, run: DagRun, repo: str) -> JobPayload:
    return payload(ti, run, repo, cb.try_number).model_copy(
        update={"callback": cb.number, "timeout": CALLBACK_TIMEOUT}
    )
