"""What the scheduler and the runner agree on, written once: the RQ job and worker endpoints.

The scheduler enqueues `JobPayload`s; a worker claims the task instance with `ClaimRequest`,
gets a `TaskSpec`, heartbeats with `Heartbeat`, and reports with `FinishRequest`. Both sides
import this module; neither writes these shapes by hand.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from dagstore.core.logtail import DEFAULT_CAP, MAX_CAP

JOB_FUNCTION = "runner.job.run_task"  # enqueued by dotted path: the scheduler never imports it
DEFAULT_QUEUE = "default"
QUEUE_PREFIX = "pinflow:"
MAX_DB_INT = 2**31 - 1  # INTEGER columns: larger ids or tries cannot exist
ARCHIVE_DIGEST_HEADER = "X-Pinflow-Archive-Sha256"  # the archive's sha256, checked by workers
CALLBACK_TIMEOUT = 300.0  # seconds an on_failure callback may take


def queue_name(queue: str) -> str:
    """The Redis-side name of a pinflow queue (every queue name is built here)."""
    return f"{QUEUE_PREFIX}{queue}"


def job_id(ti_id: int, try_number: int, callback: int = 0) -> str:
    """Deterministic: enqueueing the same try (or the same attempt at its on_failure
    callback) twice names the same job."""
    suffix = f"-callback-{callback}" if callback else ""
    return f"pinflow-ti-{ti_id}-try-{try_number}{suffix}"


class JobPayload(BaseModel):
    ti_id: int
    try_number: int
    run_id: str
    repo: str
    sha: str
    fileloc: str
    dag_id: str
    task_id: str
    queue: str = DEFAULT_QUEUE
    timeout: float | None = None
    # Not 0: this job runs only the on_failure callback of the try, which failed for good
    # without a worker (`scheduler.callbacks`); the number is the callback's attempt.
    callback: int = Field(default=0, ge=0, le=MAX_DB_INT)


class ClaimRequest(BaseModel):
    try_number: int = Field(ge=1, le=MAX_DB_INT)
    worker: str = Field(min_length=1, max_length=200)
    # Random per job execution, the same on every retry of this claim: a claim whose answer
    # was lost can be asked again. Without it a repeated claim is refused (409).
    attempt: str | None = Field(default=None, min_length=8, max_length=64)


class TaskSpec(BaseModel):
    """Everything a worker needs to run one try, as the database knows it at claim time."""

    ti_id: int
    try_number: int
    run_id: str
    dag_id: str
    task_id: str
    repo: str
    sha: str
    fileloc: str
    logical_date: str
    conf: dict[str, Any]
    timeout: float | None
    upstream_results: dict[str, Any]
    heartbeat_interval: float
    # Seconds without a heartbeat after which the server declares the try lost and may run
    # it again elsewhere: a worker that cannot heartbeat stops the task before then.
    heartbeat_timeout: float | None = None
    # Bound to this try (`dagstore.access.grants`): what the task's process uses instead of the
    # worker's token for heartbeat, finish and this version's archive.
    credential: str | None = None
    # Authoring (issue 28): the try's map index (-1: not mapped) and, for a mapped instance,
    # the element of each argument mapped over an upstream's result and every mapped
    # argument's position; the tries the task has, so the worker knows a failure is final
    # (and runs the failure callback).
    map_index: int = -1
    map_values: dict[str, Any] = Field(default_factory=dict)
    map_positions: dict[str, int] = Field(default_factory=dict)
    max_tries: int | None = None
    # The servers' PINFLOW_TASK_LOG_MAX_BYTES: the worker keeps the log's head and tail within
    # it (`dagstore.core.logtail`), as the server does with what it receives.
    log_max_bytes: int = DEFAULT_CAP
    # A callback job's claim (`JobPayload.callback`): its attempt number and the task's error.
    callback: int = 0
    callback_error: str | None = None


class Heartbeat(BaseModel):
    try_number: int = Field(ge=1, le=MAX_DB_INT)
    # The task's log so far is shipped in pieces with heartbeats, so it can be followed while
    # the task runs: `log` is the text from byte `log_offset` on. The answer says how many
    # bytes the server holds, which is where the next piece starts.
    # Offsets count every byte the task printed, also the ones its head-and-tail log cut
    # (`dagstore.core.logtail`); a piece is at most the cap.
    log_offset: int = Field(default=0, ge=0, le=2**62)
    log: str | None = Field(default=None, max_length=MAX_CAP)


class FinishRequest(BaseModel):
    try_number: int = Field(ge=1, le=MAX_DB_INT)
    state: Literal["success", "failed"]
    result: Any = None
    error: str | None = Field(default=None, max_length=200_000)
    # The log's head (all of it when nothing was cut), its tail, and the bytes printed in all;
    # without `log_bytes` (an older worker) `log` is the whole log.
    log: str = Field(default="", max_length=MAX_CAP)
    log_tail: str = Field(default="", max_length=MAX_CAP)
    log_bytes: int | None = Field(default=None, ge=0, le=2**62)
    timed_out: bool = False  # the task ran past its timeout (the log's ending line says so)
