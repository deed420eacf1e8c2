"""One try of a task, as a worker lives it: claim, heartbeat, finish; or lost when it goes silent.

Claim and finish lock the run's row first (the order of `scheduler.locks`: the run, its task,
the try), because what they change decides what the run does next; a heartbeat locks its
task, then (with a log piece) its try. A claim names
its attempt (a random id the worker picks per job): when the claim's response is lost and the
worker asks again, the same attempt gets the same answer instead of a 409 that would strand
the try.

Every try's log ends with one pinflow line saying how the try ended (`ending_line`): written
here as the try's end is recorded (its report, or declared lost) and by `scheduler.cancel`;
nothing is appended to a try's log after it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from dagstore.core.db import as_utc
from dagstore.core.errors import Conflict, NotFound
from dagstore.core.logtail import DEFAULT_CAP, HeadTail
from dagstore.core.models import Repo
from scheduler.branching import skip_unchosen
from scheduler.callbacks import owe_callback
from scheduler.expand import results_of
from scheduler.grants import explain_refusal
from scheduler.metrics import TRIES_FINISHED
from scheduler.models import DagRun, TaskInstance, TaskTry
from scheduler.taskstate import schedule_ready, start_run
from scheduler.transition import new_columns, new_values, transition
from scheduler.trylog import held_log, log_values, store_log

# The statements of the claim and finish path, built once (see `transition._transition`).
_CLAIM_READ = (
    select(
        TaskInstance.task_id,
        TaskInstance.timeout,
        TaskInstance.upstream,
        TaskInstance.queued_at,
        TaskInstance.map_index,
        TaskInstance.map_spec,
        TaskInstance.max_tries,
        DagRun.id.label("run_pk"),
        DagRun.state.label("run_state"),
        DagRun.run_id,
        DagRun.dag_id,
        func.coalesce(TaskInstance.sha, DagRun.sha).label("sha"),
        func.coalesce(TaskInstance.fileloc, DagRun.fileloc).label("fileloc"),
        DagRun.logical_date,
        DagRun.conf,
        Repo.name.label("repo"),
    )
    .join(DagRun, DagRun.id == TaskInstance.run_pk)
    .join(Repo, Repo.id == DagRun.repo_id)
    .where(TaskInstance.id == bindparam("ti_id"))
    .with_for_update(of=DagRun)
)
_FINISH_LOCK = (
    select(
        DagRun.id,
        DagRun.state,
        TaskInstance.max_tries,
        TaskInstance.retry_delay,
        TaskInstance.started_at,
        TaskInstance.task_id,
        TaskInstance.branch,
        TaskInstance.timeout,
    )
    .join(TaskInstance, TaskInstance.run_pk == DagRun.id)
    .where(TaskInstance.id == bindparam("ti_id"))
    .with_for_update(of=DagRun)
)
_TRY_INSERT = insert(TaskTry)


@functools.lru_cache(maxsize=16)
def _try_update(columns: tuple[str, ...]):
    return (
        update(TaskTry)
        .where(TaskTry.ti_id == bindparam("of_ti"), TaskTry.try_number == bindparam("of_try"))
        .values(new_columns(columns))
        .execution_options(synchronize_session=False)
    )


def upstream_results(session: Session, run_pk: int, task_ids: list[str]) -> dict[str, Any]:
    """task_id → result of the upstream tasks a claimed try receives (a mapped upstream's
    as the list of its instances' results, in map_index order)."""
    return results_of(session, run_pk, task_ids)


def get_ti(session: Session, ti_id: int) -> TaskInstance:
    ti = session.get(TaskInstance, ti_id, populate_existing=True)
    if ti is None:
        raise NotFound(f"task instance {ti_id} does not exist")
    return ti


def _conflict(session: Session, ti_id: int, try_number: int, what: str) -> Conflict:
    ti = get_ti(session, ti_id)
    return Conflict(
        f"task instance {ti_id} try {try_number} {what}: it is {ti.state} at try {ti.try_number}"
    )


def claim(
    session: Session,
    ti_id: int,
    try_number: int,
    worker: str,
    now: datetime,
    attempt: str | None = None,
    grant_hash: str | None = None,
) -> Row[Any]:
    """queued → running for exactly this try; returns what the worker needs to run it.

    The same `attempt` claiming again while its try runs is answered again (and counts as a
    heartbeat); anything else is someone else's task now. `grant_hash` is stored either way:
    the credential of the answer that arrives is the one that works.
    """
    row = session.execute(_CLAIM_READ, {"ti_id": ti_id}).one_or_none()
    if row is None:
        raise NotFound(f"task instance {ti_id} does not exist")
    if transition(
        session,
        ti_id,
        ("queued",),
        try_number,
        state="running",
        started_at=now,
        heartbeat_at=now,
        worker=worker,
        attempt=attempt,
        grant_hash=grant_hash,
        ended_at=None,
    ):
        session.execute(
            _TRY_INSERT,
            {
                "ti_id": ti_id,
                "try_number": try_number,
                "state": "running",
                "worker": worker,
                "queued_at": row.queued_at,
                "started_at": now,
                "log": "",
                "sha": row.sha,
            },
        )
        if row.run_state == "queued":
            start_run(session, row.run_pk, now)  # this task runs, so its run does
        return row
    if attempt is not None and transition(
        session,
        ti_id,
        ("running",),
        try_number,
        expected_attempt=attempt,
        heartbeat_at=now,
        grant_hash=grant_hash,
    ):
        return row  # our own claim again: its first answer never arrived
    raise _conflict(session, ti_id, try_number, "cannot be claimed")


def heartbeat(
    session: Session, ti_id: int, try_number: int, now: datetime, digest: str | None = None
) -> None:
    """The try is alive. `digest` is the try credential's hash, when it sent the heartbeat
    (`scheduler.grants.try_digest`): one conditional update checks both."""
    if not transition(
        session, ti_id, ("running",), try_number, expected_grant=digest, heartbeat_at=now
    ):
        explain_refusal(session, digest, ti_id, try_number)
        raise _conflict(session, ti_id, try_number, "is no longer running")


def append_log(
    session: Session, ti_id: int, try_number: int, offset: int, text: str, cap: int = DEFAULT_CAP
) -> int:
    """Add the piece of a running try's log that starts at stream offset `offset` (bytes the
    task printed so far, cut ones included); returns where the log the server holds ends. The
    log keeps its head and tail within `cap` (`dagstore.core.logtail`). A piece that overlaps
    what is held adds only what is new; one that starts later (the worker had cut the bytes
    between) marks them cut. The caller has just heartbeated this try, so no finish can
    interleave."""
    row = session.execute(
        select(TaskTry.log, TaskTry.log_tail, TaskTry.log_bytes).where(
            TaskTry.ti_id == ti_id, TaskTry.try_number == try_number
        )
    ).one_or_none()
    if row is None:
        return 0
    log = HeadTail.restore(cap, row.log, row.log_tail, row.log_bytes)
    held = log.total
    log.write_at(offset, text.encode("utf-8"))
    if log.total != held:
        store_log(session, ti_id, try_number, log)
    return log.total


@dataclass(frozen=True)
class TryLog:
    """A finished try's log as its worker reports it: the head and the tail its own
    `CappedLog` kept and the bytes printed in all (None: an older worker's whole log)."""

    head: str
    tail: str = ""
    written: int | None = None

    def values(self, cap: int, ending: str | None = None) -> dict[str, Any]:
        """The row's columns, kept within this server's cap whatever the worker's was, ending
        with pinflow's `ending` line if one is given."""
        log = HeadTail(cap)
        log.write(self.head.encode("utf-8"))
        if self.written is not None and self.tail:
            data = self.tail.encode("utf-8")
            log.write_at(max(self.written - len(data), 0), data)
        elif self.written is not None and self.written > log.total:
            log.write_at(self.written, b"")
        if ending:
            log.add_line(ending)
        return log_values(log)


ERROR_SUMMARY_CHARS = 500


def ending_line(try_number: int, how: str) -> str:
    """The line a try's log ends with: `pinflow: try 2 failed: ValueError: bad row`."""
    return f"pinflow: try {try_number} {' '.join(how.split())}\n"


def error_summary(error: str | None) -> str:
    """The last line of an error (a traceback's names the exception), cut to size."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    last = lines[-1] if lines else "no error given"
    return last if len(last) <= ERROR_SUMMARY_CHARS else last[: ERROR_SUMMARY_CHARS - 3] + "..."


def end_log(session: Session, ti_id: int, try_number: int, how: str) -> None:
    """Append the ending line to the log the database holds of a running try that ends
    without a report of its own (canceled, lost)."""
    line = ending_line(try_number, how)
    log = held_log(session, ti_id, try_number, len(line) + 1, TaskTry.state == "running")
    if log is not None:
        log.add_line(line)
        store_log(session, ti_id, try_number, log)


def _how_it_ended(found: Row[Any], success: bool, timed_out: bool, error: str | None,
                  seconds: float | None) -> str:  # fmt: skip
    if success:
        return "succeeded" + (f" in {seconds:.3f} s" if seconds is not None else "")
    if timed_out and found.timeout:
        return f"timed out after {found.timeout:g} s"
    return f"failed: {error_summary(error)}"


@dataclass(frozen=True)
class LockedRun:
    """The run row a finish holds locked: all that deciding what comes next reads of it."""

    id: int
    state: str


@dataclass(frozen=True)
class Finished:
    run: LockedRun
    state: str  # what the try left the task in: success, failed or up_for_retry
    scheduled: int  # downstream tasks that became ready
    seconds: float | None = None  # claimed → finished

    @property
    def may_queue(self) -> bool:
        """Whether anything of this run can be ready to queue because of this finish."""
        return self.scheduled > 0 or self.state == "up_for_retry"


def finish(
    session: Session,
    ti_id: int,
    try_number: int,
    success: bool,
    now: datetime,
    result: Any = None,
    error: str | None = None,
    log: TryLog | None = None,
    stale_before: datetime | None = None,
    digest: str | None = None,
    log_cap: int = DEFAULT_CAP,
    timed_out: bool = False,
    how: str | None = None,
) -> Finished:
    """running → success, or failed / up_for_retry; then, under the run's lock, the run moves on.

    `digest`: the try credential's hash when the try reports itself (see `heartbeat`).
    `timed_out`: the task ran past its timeout; `how`: how the try ended when it did not
    report itself (lost), for the log's ending line."""
    found = session.execute(_FINISH_LOCK, {"ti_id": ti_id}).one_or_none()
    if found is None:
        raise NotFound(f"task instance {ti_id} does not exist")
    run = LockedRun(found.id, found.state)
    max_tries, retry_delay = found.max_tries, found.retry_delay
    if success:
        values: dict[str, Any] = {
            "state": "success",
            "result": result,
            "error": None,
            "ended_at": now,
        }
    elif try_number < max_tries:  # the transition below checks that this try is current
        values = {
            "state": "up_for_retry",
            "error": error,
            "ended_at": now,
            "next_try_at": now + timedelta(seconds=retry_delay),
        }
    else:
        values = {"state": "failed", "error": error, "ended_at": now}
    if not transition(
        session, ti_id, ("running",), try_number, stale_before, expected_grant=digest, **values
    ):
        explain_refusal(session, digest, ti_id, try_number)
        raise _conflict(session, ti_id, try_number, "cannot finish")
    started = as_utc(found.started_at)
    seconds = (now - started).total_seconds() if started else None
    ended = how or _how_it_ended(found, success, timed_out, error, seconds)
    if values["state"] == "up_for_retry":
        ended += f"; try {try_number + 1} of {max_tries} starts in {retry_delay:g} s"
    try_values: dict[str, Any] = {
        "state": "success" if success else "failed",
        "ended_at": now,
        "error": error,
    }
    if log is not None:
        try_values.update(log.values(log_cap, ending_line(try_number, ended)))
    else:
        end_log(session, ti_id, try_number, ended)  # before the state leaves "running"
    session.execute(
        _try_update(tuple(try_values)),
        {"of_ti": ti_id, "of_try": try_number, **new_values(try_values)},
    )
    if success and found.branch:
        skip_unchosen(session, run.id, found.task_id, result, now)
    return Finished(run, values["state"], schedule_ready(session, run, now), seconds)


def fail_lost(session: Session, now: datetime, heartbeat_timeout: float) -> list[int]:
    """Running tries with no heartbeat for too long (worker died): failed, retried if allowed;
    one failed for good owes its on_failure callback (`scheduler.callbacks`).

    In run order, so two schedulers doing this at once take the run locks in the same order
    (`scheduler.locks`).
    """
    cutoff = now - timedelta(seconds=heartbeat_timeout)
    lost = session.execute(
        select(TaskInstance.id, TaskInstance.try_number, TaskInstance.worker)
        .where(TaskInstance.state == "running", TaskInstance.heartbeat_at < cutoff)
        .order_by(TaskInstance.run_pk, TaskInstance.id)
    ).all()
    failed = []
    for ti_id, try_number, worker in lost:
        why = (
            f"lost: no heartbeat for {heartbeat_timeout:g} s from worker "
            f"{worker or '?'} (killed or cut off?)"
        )
        try:
            ended = finish(
                session, ti_id, try_number, False, now, error=why, stale_before=cutoff, how=why
            )
        except Conflict:
            continue  # it finished or heartbeated meanwhile
        if ended.state == "failed":  # for good, and no worker to run its on_failure
            owe_callback(session, ti_id, try_number, why, now)
        TRIES_FINISHED.labels("lost").inc()
        failed.append(ti_id)
    return failed
