"""What the runs API and the worker endpoints answer, as typed models (see
`dagstore.api.shapes`, whose conventions these follow)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from dagstore.api.shapes import Items, Sha, Shape, Timestamp
from scheduler.runs import RUN_STATES

# The run states are `scheduler.runs`' own list, so the schema cannot drift from it.
RunState = Literal[RUN_STATES]  # type: ignore[valid-type]
TaskState = Literal[
    "none",
    "scheduled",
    "queued",
    "running",
    "success",
    "failed",
    "up_for_retry",
    "upstream_failed",
    "canceled",
    "skipped",
]
TryState = Literal["running", "success", "failed", "canceled"]


class Try(Shape):
    try_number: int
    state: TryState
    sha: Sha = Field(description="the commit this try ran")
    worker: str | None
    queued_at: Timestamp | None = Field(
        default=None, description="when this try was queued (unknown for tries before 0010)"
    )
    started_at: Timestamp | None
    ended_at: Timestamp | None
    error: str | None


class TaskInstance(Shape):
    task_id: str
    map_index: int = Field(description="0..n-1: one instance of a mapped task; -1: not mapped")
    state: TaskState
    sha: Sha = Field(description="the commit its current (or next) try runs")
    try_number: int = Field(description="its latest try; 0: it never ran")
    max_tries: int
    retries: int | None = Field(
        default=None,
        description="retries each clear grants: tries since the last clear "
        "are try_number - (max_tries - retries - 1) of retries + 1",
    )
    upstream: list[str]
    trigger_rule: str = Field(description="when it runs, given its upstreams' states")
    pool: str | None = Field(description="the pool whose slots it takes, if any")
    worker: str | None
    queued_at: Timestamp | None
    started_at: Timestamp | None
    ended_at: Timestamp | None
    result: Any = Field(description="what the task returned (JSON)")
    error: str | None
    tries: list[Try]


class RunSummary(Shape):
    run_id: str
    dag_id: str
    logical_date: Timestamp | None
    sha: Sha = Field(description="the commit the run is pinned to")
    state: RunState
    conf: dict[str, Any]
    run_type: Literal["scheduled", "manual", "backfill"]
    held: bool = Field(
        description="a backfill's run waiting for a slot under its backfill's max_active_runs"
    )
    created_by: str | None
    created_at: Timestamp | None
    started_at: Timestamp | None
    ended_at: Timestamp | None


class RunList(Items[RunSummary]):
    pass


class Run(RunSummary):
    tasks: list[TaskInstance]
    shas: list[Sha] = Field(
        description="every commit its tries ran: more than one after a clear on latest"
    )


class Cleared(Run):
    cleared: list[str] = Field(description="ids of the tasks cleared")


class Canceled(Run):
    canceled_tasks: int = Field(description="tasks stopped or kept from starting")


class Backfill(Shape):
    id: int
    dag_id: str
    sha: Sha
    start: Timestamp | None
    end: Timestamp | None
    max_active_runs: int | None
    runs: int
    states: dict[str, int] = Field(description="run state → how many")
    held: int = Field(description="runs waiting for a slot under max_active_runs")
    done: int


class SkippedTick(Shape):
    logical_date: Timestamp
    run_id: str = Field(description="the run that tick has already")


class BackfillCreated(Backfill):
    created: list[str] = Field(description="ids of the runs created")
    skipped: list[SkippedTick]


class Paused(Shape):
    dag_id: str
    is_paused: bool


class HeartbeatAnswer(Shape):
    state: Literal["running"]
    log_bytes: int | None = Field(
        default=None, description="the log bytes the server holds: where the next piece starts"
    )


class FinishAnswer(Shape):
    state: TaskState = Field(description="the task's state after this try")
