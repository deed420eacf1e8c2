"""Tables of the scheduler: DAG runs pinned to a commit, their task instances, tries and logs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from dagstore.core.db import Base, db_now


class DagRun(Base):
    __tablename__ = "dag_runs"
    __table_args__ = (
        # A second scheduled run for one (dag_id, logical_date) is impossible, whatever the
        # leases do: `scheduled_key` is the logical date for scheduled runs, NULL for manual.
        UniqueConstraint("dag_id", "scheduled_key", name="uq_dag_runs_scheduled"),
        # Every listing is newest first (id descending) under its filters, so each index ends
        # in `id`: a page of runs is an index range read, however many runs exist (issue 33).
        Index("ix_dag_runs_dag_id", "dag_id", "id"),  # a DAG's runs, its newest runs
        Index("ix_dag_runs_dag_state_id", "dag_id", "state", "id"),
        Index("ix_dag_runs_state_id", "state", "id"),  # active runs; runs by state
        # the grid and the runs page: latest by logical date, of a DAG or of all
        Index("ix_dag_runs_dag_logical", "dag_id", "logical_date", "id"),
        Index("ix_dag_runs_logical", "logical_date", "id"),
        Index("ix_dag_runs_backfill", "backfill_id", "held"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(300), unique=True)
    dag_id: Mapped[str] = mapped_column(String(250))
    repo_id: Mapped[int] = mapped_column(ForeignKey("repos.id", ondelete="CASCADE"))
    sha: Mapped[str] = mapped_column(String(40))
    fileloc: Mapped[str] = mapped_column(String(1024))
    logical_date: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    scheduled_key: Mapped[str | None] = mapped_column(String(40), nullable=True)
    run_type: Mapped[str] = mapped_column(String(20))  # scheduled | manual | backfill
    created_by: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(20), default="queued")
    conf: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=db_now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A backfill's run; `held` until the backfill's max_active_runs lets it start
    # (`scheduler.backfill`): a held run is not active for anything else.
    backfill_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    held: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    # From the pinned structure: at most this many of the DAG's tasks queued or running at
    # once (`scheduler.limits`), and how long the run may take before it fails.
    max_active_tasks: Mapped[int | None] = mapped_column(Integer, nullable=True)
    dagrun_timeout: Mapped[float | None] = mapped_column(nullable=True)


class Backfill(Base):
    """Runs of one DAG for a range of past schedule ticks, pinned to one commit."""

    __tablename__ = "backfills"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dag_id: Mapped[str] = mapped_column(String(250), index=True)
    sha: Mapped[str] = mapped_column(String(40))
    start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    max_active_runs: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=db_now())


class TaskInstance(Base):
    __tablename__ = "task_instances"
    __table_args__ = (
        UniqueConstraint("run_pk", "task_id", "map_index", name="uq_task_instances"),
        Index("ix_task_instances_state", "state"),
        Index("ix_task_instances_pool", "pool", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("dag_runs.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[str] = mapped_column(String(250))
    upstream: Mapped[list] = mapped_column(JSON, default=list)  # task ids, from the pinned DAG
    state: Mapped[str] = mapped_column(String(20), default="none")
    try_number: Mapped[int] = mapped_column(Integer, default=0)
    max_tries: Mapped[int] = mapped_column(Integer, default=1)
    retry_delay: Mapped[float] = mapped_column(default=0.0)
    timeout: Mapped[float | None] = mapped_column(nullable=True)
    queue: Mapped[str] = mapped_column(String(100), default="default")
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    next_try_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The claim's random id: the same worker asking again for the same try (its first
    # answer was lost) is recognised, anyone else is refused.
    attempt: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # sha256 of the try credential the claim handed out (`dagstore.access.grants`).
    grant_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    result: Mapped[object | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Set only by a clear "on latest": the commit (and file) this task runs instead of the
    # run's own. NULL means the run's sha, which is what every task runs by default.
    sha: Mapped[str | None] = mapped_column(String(40), nullable=True)
    fileloc: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    # Retries the DAG gives this task: a clear allows that many again (NULL in rows made
    # before 0007: max_tries - 1 then, as they were never cleared).
    retries: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Authoring (`dagstore.authoring`): NULL trigger rule is all_success; a branch task's
    # result skips the direct downstreams it does not name (`scheduler.branching`).
    trigger_rule: Mapped[str | None] = mapped_column(String(20), nullable=True)
    pool: Mapped[str | None] = mapped_column(String(250), nullable=True)
    branch: Mapped[bool] = mapped_column(Boolean, server_default=false(), default=False)
    # -1: not mapped (or a mapped task not expanded yet); 0..n-1: one instance of a mapped
    # task, whose `map_spec` (the structure's `mapped`) says what it maps over.
    map_index: Mapped[int] = mapped_column(Integer, server_default="-1", default=-1)
    map_spec: Mapped[list | None] = mapped_column(JSON, nullable=True)


class Pool(Base):
    """At most `slots` task instances naming this pool queued or running at once, across
    every DAG and scheduler (`scheduler.limits`)."""

    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(250), primary_key=True)
    slots: Mapped[int] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(Text, server_default="", default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=db_now())


class TaskTry(Base):
    """One attempt at a task instance: kept so a lost or failed try stays on record."""

    __tablename__ = "task_tries"
    __table_args__ = (UniqueConstraint("ti_id", "try_number", name="uq_task_tries"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ti_id: Mapped[int] = mapped_column(ForeignKey("task_instances.id", ondelete="CASCADE"))
    try_number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # When this try was queued (copied from its task instance at claim; NULL before 0010).
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The log as the first bytes the try printed (`log`) and its last (`log_tail`), what was
    # between them cut (`dagstore.core.logtail`); `log_bytes` counts every byte it printed
    # (NULL before 0009: `log` is all of it).
    log: Mapped[str] = mapped_column(Text, default="")
    log_tail: Mapped[str] = mapped_column(Text, default="", server_default="")
    log_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha: Mapped[str | None] = mapped_column(String(40), nullable=True)  # the commit it ran


class TaskCallback(Base):
    """An on_failure callback the server owes a try that failed for good without a worker
    reporting it (judged lost, or a mapped task failed at expansion): `scheduler.callbacks`.

    due → running (claimed by one worker, fenced like a try: `attempt`, `grant_hash`,
    heartbeats) → done | failed; a running callback whose worker goes silent is due again
    with `number` + 1, up to a bound, then `given_up`. A worker's job names its `number`, so
    a late job of an earlier attempt can never claim it."""

    __tablename__ = "task_callbacks"
    __table_args__ = (
        UniqueConstraint("ti_id", "try_number", name="uq_task_callbacks"),
        Index("ix_task_callbacks_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ti_id: Mapped[int] = mapped_column(ForeignKey("task_instances.id", ondelete="CASCADE"))
    try_number: Mapped[int] = mapped_column(Integer)  # the failed try, whose log it writes to
    state: Mapped[str] = mapped_column(String(20), default="due")
    number: Mapped[int] = mapped_column(Integer, default=1)  # which attempt is due or running
    error: Mapped[str] = mapped_column(Text, default="")  # the task's error, for the callback
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempt: Mapped[str | None] = mapped_column(String(64), nullable=True)
    grant_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Bytes of the try's log before this attempt's output: the worker's pieces land after it.
    log_base: Mapped[int] = mapped_column(Integer, default=0)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
