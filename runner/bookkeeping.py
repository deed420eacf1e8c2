"""RQ's Redis bookkeeping that Redis faults cannot stop: the worker carries on without it.

RQ assumes Redis is there and holds the job's hash: `Job.cleanup`, `get_status` and the
registries raise (`InvalidJobOperation`, `NoSuchJobError`) when a FLUSHALL or a restart took
the job from under a running worker, a demoted primary answers every write `READONLY`, and a
dropped connection raises wherever it lands. Each of those ended RQ's work loop ("found an
unhandled exception, quitting") and so the worker process (issue 26).

For pinflow, RQ's records are bookkeeping only: the API, not Redis, decides a try's outcome,
and the database is the record of work (a job Redis lost is enqueued again from it). So every
RQ step around a task that talks to Redis goes through `SurvivesRedis._bookkeep`: on a fault
it is skipped, logged once per outage, and every pooled connection is dropped so the next
one asks Sentinel for the primary again. The task itself is never abandoned for it: its horse
is still watched and its report still sent. Waiting for the next job backs off (capped) while
Redis is away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rq.job import Job, _job_stack
from rq.queue import Queue

from dagstore.core.outage import Outage
from dagstore.core.redisconn import REDIS_FAULTS, forget_primary

log = logging.getLogger("pinflow.worker")

MAX_DELAY = 10.0  # seconds between tries at most, RQ's own reconnection loop included
T = TypeVar("T")


class SurvivesRedis:
    """Mixin placed before RQ's worker classes: RQ's Redis steps never end the work loop."""

    connection: Any
    max_connection_wait_time = MAX_DELAY  # RQ's own wait for a job reconnects at this pace
    _redis_outage: Outage | None = None

    @property
    def outage(self) -> Outage:
        if self._redis_outage is None:
            self._redis_outage = Outage("Redis", log, cap=MAX_DELAY)
        return self._redis_outage

    def _bookkeep(self, what: str, step: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        try:
            result = step(*args, **kwargs)
        except REDIS_FAULTS as exc:
            self.outage.failed(what, exc)
            forget_primary(self.connection)
            return None
        self.outage.ended()
        return result

    # -- around a job ---------------------------------------------------------------------

    def prepare_execution(self, job: Job) -> Any:
        self.execution = None
        return self._bookkeep("recording the job's start", super().prepare_execution, job)  # type: ignore[misc]

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        self._bookkeep(
            "marking the job started",
            super().prepare_job_execution,  # type: ignore[misc]
            job,
            remove_from_intermediate_queue,
        )

    def _mark_started(self, job: Job) -> None:
        """`runner.horse.LightHorse`'s bookkeeping of a started job, done while the horse
        already runs: a fault there must not stop the worker from watching it."""
        self._bookkeep("marking the job started", super()._mark_started, job)  # type: ignore[misc]

    def maintain_heartbeats(self, job: Job) -> None:
        if getattr(self, "execution", None) is None:  # its start was never recorded
            self._bookkeep("heartbeating", self.heartbeat)
            return
        self._bookkeep("heartbeating the job", super().maintain_heartbeats, job)  # type: ignore[misc]

    def monitor_work_horse(self, job: Job, queue: Queue) -> None:
        """RQ's watch over the horse, resumed after a fault for as long as the horse runs: the
        horse is always waited for, so its report is always taken and sent."""
        while True:
            try:
                super().monitor_work_horse(job, queue)  # type: ignore[misc]
                return
            except REDIS_FAULTS as exc:
                self.outage.failed("watching the work horse", exc)
                forget_primary(self.connection)
                if not getattr(self, "_horse_pid", 0):  # reaped: only RQ's records were left
                    return

    def handle_execution_ended(self, job: Job, queue: Queue, heartbeat_ttl: int) -> None:
        self._bookkeep(
            "recording the job's end",
            super().handle_execution_ended,  # type: ignore[misc]
            job,
            queue,
            heartbeat_ttl,
        )

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any) -> None:
        self._bookkeep(
            "recording the job's success",
            super().handle_job_success,  # type: ignore[misc]
            job,
            queue,
            started_job_registry,
        )

    def handle_job_failure(
        self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = ""
    ) -> None:
        self._bookkeep(
            "recording the job's failure",
            super().handle_job_failure,  # type: ignore[misc]
            job,
            queue,
            started_job_registry,
            exc_string,
        )

    # -- the worker's own records ---------------------------------------------------------

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:  # only queued on the pipeline: its execute() is guarded
            super().heartbeat(timeout, pipeline)  # type: ignore[misc]
            return
        self._bookkeep("heartbeating", super().heartbeat, timeout)  # type: ignore[misc]

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().set_state(state, pipeline)  # type: ignore[misc]
            return
        self._bookkeep("recording the worker's state", super().set_state, state)  # type: ignore[misc]

    def set_current_job_working_time(self, working_time: float, pipeline: Any = None) -> None:
        if pipeline is not None:
            super().set_current_job_working_time(working_time, pipeline)  # type: ignore[misc]
            return
        self._bookkeep(
            "recording the job's working time",
            super().set_current_job_working_time,  # type: ignore[misc]
            working_time,
        )

    def run_maintenance_tasks(self) -> None:
        self._bookkeep("cleaning RQ's registries", super().run_maintenance_tasks)  # type: ignore[misc]

    def register_death(self) -> None:
        self._bookkeep("recording the worker's exit", super().register_death)  # type: ignore[misc]

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """RQ's wait for a job, which rides out dropped connections itself but not a READONLY
        reply or a job whose hash vanished: those wait (capped backoff) and try again."""
        while True:
            try:
                result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)  # type: ignore[misc]
            except REDIS_FAULTS as exc:
                delay = self.outage.failed("waiting for a job", exc)
                forget_primary(self.connection)
                time.sleep(delay)
                continue
            self.outage.ended()
            return result


class BookkeptJob(Job):
    """RQ's job, whose start in a --no-fork worker survives Redis too. RQ's `perform` first
    makes the job's hash persistent, outside any guard: here a fault there is skipped and the
    task runs all the same (RQ's own body otherwise; rq is pinned below 3)."""

    def perform(self) -> Any:
        try:
            self.connection.persist(self.key)
        except REDIS_FAULTS as exc:
            log.debug("Redis fault while marking job %s persistent: %s", self.id, exc)
        _job_stack.push(self)
        try:
            self._result = self._execute()
        finally:
            _job_stack.pop()
        return self._result
