"""The RQ job: claim the try, fetch its version, run the task, report. Runs in the work horse.

Enqueued by dotted path (`dagstore.protocol.JOB_FUNCTION`) with a JSON payload, so the
scheduler never imports this module and this module never opens the database.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from dagstore.errors import Conflict, PinflowError
from dagstore.protocol import MAX_LOG_BYTES, FinishRequest, JobPayload, TaskSpec
from dagstore.settings import Settings
from runner.cache import VersionCache
from runner.capture import CappedLog, capture
from runner.client import WorkerClient
from runner.execute import Outcome, execute

log = logging.getLogger("pinflow.worker")


def worker_name() -> str:
    return os.environ.get("PINFLOW_WORKER_NAME") or f"{socket.gethostname()}:{os.getppid()}"


def cache_dir(settings: Settings) -> Path:
    return Path(os.environ.get("PINFLOW_CACHE_DIR") or settings.home / "cache" / "versions")


# Sent by the heartbeat thread to the main thread when the try was taken away. Not SIGINT:
# RQ's work horse ignores SIGINT, and in a --no-fork worker SIGINT means "shut down".
ABANDON_SIGNAL = signal.SIGUSR1


class Abandoned(BaseException):
    """The try was given to someone else while this worker ran it: stop, report nothing."""


def _on_abandon(_signum: int, _frame: Any) -> None:
    raise Abandoned()


class Heartbeater(threading.Thread):
    """Beats while the task runs; if the try was taken away (409), stops the task."""

    def __init__(self, client: WorkerClient, ti_id: int, try_number: int, interval: float) -> None:
        super().__init__(daemon=True, name="pinflow-heartbeat")
        self.client, self.ti_id, self.try_number = client, ti_id, try_number
        self.interval = interval
        self.done = threading.Event()
        self.abandoned = False
        self.main_ident = threading.main_thread().ident or 0

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.client.heartbeat(self.ti_id, self.try_number)
            except Conflict:
                self.abandoned = True
                # A real signal to the main thread, so a task blocked in sleep() or I/O wakes
                # up too (`_thread.interrupt_main` would wait for it to return by itself).
                signal.pthread_kill(self.main_ident, ABANDON_SIGNAL)
                return
            except PinflowError as exc:
                log.warning("heartbeat failed: %s", exc.detail)


def run_task(payload: dict[str, Any]) -> str:
    job = JobPayload.model_validate(payload)
    settings = Settings.load()
    if not settings.token:
        raise RuntimeError("PINFLOW_TOKEN is not set: the worker needs a worker-scope token")
    client = _client(settings.api_url, settings.token)
    return _run(job, client, VersionCache(cache_dir(settings), client))


@functools.cache
def _client(api_url: str, token: str) -> WorkerClient:
    """One client per process, so a --no-fork worker keeps its connection to the API server
    from task to task. A forked work horse builds its own: the worker parent never calls
    this, so no connection is ever shared between processes."""
    return WorkerClient(api_url, token)


def _fetch_and_execute(spec: TaskSpec, cache: VersionCache, task_log: CappedLog) -> Outcome:
    try:
        fetched = cache.ensure(spec.repo, spec.sha)
    except PinflowError as exc:
        return Outcome(False, error=f"could not get version {spec.sha[:12]}: {exc.detail}")
    task_log.line(
        f"pinflow: version {spec.sha[:12]} {'cache hit' if fetched.hit else 'fetched'} "
        f"in {fetched.seconds * 1000:.1f} ms"
    )
    with cache.using(spec.repo, spec.sha) as root, capture(task_log):
        started = time.perf_counter()
        outcome = execute(spec, root)
    task_log.line(
        f"pinflow: task {'succeeded' if outcome.success else 'failed'} "
        f"in {time.perf_counter() - started:.3f} s"
    )
    return outcome


def _run(job: JobPayload, client: WorkerClient, cache: VersionCache) -> str:
    name = worker_name()
    try:
        spec = client.claim(job.ti_id, job.try_number, name)
    except Conflict as exc:  # someone else owns this try, or it is stale: not ours to run
        log.info("dropping %s: %s", job.task_id, exc.detail)
        return "dropped"
    task_log = CappedLog(MAX_LOG_BYTES)
    task_log.line(
        f"pinflow: {spec.dag_id}.{spec.task_id} try {spec.try_number} of run "
        f"{spec.run_id} at {spec.repo}@{spec.sha} on {name}"
    )
    beat = Heartbeater(client, spec.ti_id, spec.try_number, spec.heartbeat_interval)
    previous = signal.signal(ABANDON_SIGNAL, _on_abandon)
    beat.start()
    try:
        try:
            outcome = _fetch_and_execute(spec, cache, task_log)
        finally:
            beat.done.set()
            beat.join()  # after this no abandon signal can come: the handler can go
    except Abandoned:
        outcome = Outcome(False, error="abandoned")
    finally:
        signal.signal(ABANDON_SIGNAL, previous)
    if beat.abandoned:
        log.warning("try %s of %s was taken away; not reporting", spec.try_number, spec.task_id)
        return "abandoned"
    if outcome.error:
        task_log.write(outcome.error if outcome.error.endswith("\n") else outcome.error + "\n")
    report = FinishRequest(
        try_number=spec.try_number,
        state="success" if outcome.success else "failed",
        result=outcome.result,
        error=outcome.error,
        log=task_log.getvalue(),
    )
    try:
        client.finish(spec.ti_id, report)
    except Conflict as exc:
        log.warning("result of %s try %s refused: %s", spec.task_id, spec.try_number, exc.detail)
        return "refused"
    return report.state
