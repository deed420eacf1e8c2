"""The RQ job: fetch the claimed try's version, run the task, report. Runs in the work horse.

Enqueued by dotted path (`dagstore.core.protocol.JOB_FUNCTION`) with a JSON payload, so the
scheduler never imports this module and this module never opens the database. The RQ worker
claimed the try before forking (`runner.claim`); the horse acts with that try's credential
only, never with the worker's token (`runner.agent`).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import traceback
from pathlib import Path
from typing import Any

from dagstore.core.errors import Conflict, PinflowError
from dagstore.core.protocol import FinishRequest, JobPayload, TaskSpec
from dagstore.core.settings import Settings
from runner.cache import VersionCache
from runner.callback import CallbackEndpoints, call_back, endpoints
from runner.capture import CappedLog, capture
from runner.claim import CLAIMS, Claimed, Dropped, claim_try
from runner.client import WorkerClient
from runner.execute import Outcome, execute, is_final
from runner.handover import HANDOVER
from runner.heartbeat import ABANDON_SIGNAL, Abandoned, Heartbeater, on_abandon

log = logging.getLogger("pinflow.worker")


def worker_name() -> str:
    return os.environ.get("PINFLOW_WORKER_NAME") or f"{socket.gethostname()}:{os.getppid()}"


def cache_dir(settings: Settings) -> Path:
    return Path(os.environ.get("PINFLOW_CACHE_DIR") or settings.home / "cache" / "versions")


def run_task(payload: dict[str, Any]) -> str:
    job = JobPayload.model_validate(payload)
    CLAIMS.forget_in_child()  # before any task code: the horse never talks to the agent
    claimed = CLAIMS.take(job)
    if isinstance(claimed, Dropped):
        return _dropped(job, claimed)
    settings = Settings.load()
    client = _client(settings.api_url)
    client.authorize(claimed.spec.credential or "")
    return _perform(claimed, client, VersionCache(cache_dir(settings), client))


@functools.cache
def _client(api_url: str) -> WorkerClient:
    """One client per process, so a --no-fork worker keeps its connection to the API server
    from task to task (each task sends its own credential). A forked work horse builds its
    own: the worker parent never calls this, so no connection is shared between processes."""
    return WorkerClient(api_url, None)


@functools.cache
def _relay_client() -> WorkerClient:
    """The forking worker's own client, for the reports its horses hand over: one connection
    for the worker's life. No token: each report goes with its try's credential. Horses
    inherit this object and never use it; they build theirs with `_client`."""
    return WorkerClient(Settings.load().api_url, None)


def send_handed_over(payload: dict[str, Any], data: bytes) -> str:
    """In the forking worker: send the finish report a horse left (`runner.handover`) for
    the try the worker claimed for it. The report's body is the horse's; which try it is
    for, and the credential, are the claim's."""
    job = JobPayload.model_validate(payload)
    claimed = CLAIMS.claimed(job)
    if not isinstance(claimed, Claimed):
        return "dropped"  # no try of ours: the horse had nothing to report
    try:
        report = FinishRequest.model_validate_json(data)
    except ValueError as exc:
        log.error("unreadable report from the horse of %s: %s", job.task_id, exc)
        return "unreadable"
    if report.try_number != job.try_number:
        log.error("the horse of %s reported for another try", job.task_id)
        return "unreadable"
    relay = endpoints(_relay_client(), claimed.spec)
    return send_report(relay, claimed.spec, report, claimed.spec.credential)


def _dropped(job: JobPayload, dropped: Dropped) -> str:
    log.info("dropping %s: %s", job.task_id, dropped.why)
    return "dropped"


def _fetch_and_execute(spec: TaskSpec, cache: VersionCache, task_log: CappedLog) -> Outcome:
    try:
        fetched = cache.ensure(spec.repo, spec.sha)
    except PinflowError as exc:
        return Outcome(False, error=f"could not get version {spec.sha[:12]}: {exc.detail}")
    task_log.line(
        f"pinflow: version {spec.sha[:12]} {'cache hit' if fetched.hit else 'fetched'} "
        f"in {fetched.seconds * 1000:.1f} ms"
    )
    with cache.using(spec.repo, spec.sha) as root:
        if spec.callback:  # a callback job: the try failed for good without a worker
            call_back(spec, root, spec.callback_error or "failed", task_log)
            return Outcome(True)
        with capture(task_log):
            outcome = execute(spec, root)  # the server ends the log with how the try ended
        if not outcome.success and is_final(spec):
            call_back(spec, root, outcome.error or "failed", task_log)
    return outcome


def _run(job: JobPayload, client: WorkerClient, cache: VersionCache) -> str:
    """Claim and run with one client (tests and tools that hold a worker token)."""
    claimed = claim_try(job, client, worker_name())
    if isinstance(claimed, Dropped):
        return _dropped(job, claimed)
    return _perform(claimed, client, cache)


def _perform(claimed: Claimed, client: WorkerClient, cache: VersionCache) -> str:
    spec = claimed.spec
    task_log = CappedLog(spec.log_max_bytes)
    what = (
        f"on_failure callback of {spec.dag_id}.{spec.task_id} (attempt {spec.callback}), "
        if spec.callback
        else f"{spec.dag_id}.{spec.task_id} "
    )
    task_log.line(
        f"pinflow: {what}try {spec.try_number} of run "
        f"{spec.run_id} at {spec.repo}@{spec.sha} on {worker_name()}"
    )
    reports = endpoints(client, spec)
    beat = Heartbeater(reports, spec, claimed.sent, task_log)  # type: ignore[arg-type]
    previous = signal.signal(ABANDON_SIGNAL, on_abandon)
    beat.start()
    try:
        try:
            outcome = _fetch_and_execute(spec, cache, task_log)
        except Exception:  # noqa: BLE001 - pinflow's own failure, or the host's (disk, cache)
            outcome = Outcome(
                False,
                error="pinflow: the worker could not run the task:\n" + traceback.format_exc(),
            )
        finally:
            beat.done.set()
            beat.join()  # after this no abandon signal can come: the handler can go
    except Abandoned:
        outcome = Outcome(False, error="abandoned")
    finally:
        signal.signal(ABANDON_SIGNAL, previous)
    if beat.abandoned:
        log.warning("try %s of %s not reported: %s", spec.try_number, spec.task_id, beat.abandoned)
        return "abandoned"
    shown = outcome.shown or outcome.error  # the user's frames (`runner.tracebacks`)
    if shown:
        task_log.write(shown if shown.endswith("\n") else shown + "\n")
    head, tail, written = task_log.parts()
    report = FinishRequest(
        try_number=spec.try_number,
        state="success" if outcome.success else "failed",
        result=outcome.result,
        error=outcome.error,
        log=head,
        log_tail=tail,
        log_bytes=written,
        timed_out=outcome.timed_out,
    )
    if HANDOVER.put(report.model_dump_json().encode("utf-8")):
        return report.state  # the worker sends it (runner.handover)
    return send_report(reports, spec, report)


def send_report(
    client: WorkerClient | CallbackEndpoints,
    spec: TaskSpec,
    report: FinishRequest,
    credential: str | None = None,
) -> str:
    """Finish the try: its final state, or "refused" when the server no longer takes it (the
    try was taken away meanwhile)."""
    try:
        client.finish(spec.ti_id, report, credential)
    except Conflict as exc:
        log.warning("result of %s try %s refused: %s", spec.task_id, spec.try_number, exc.detail)
        return "refused"
    return report.state
