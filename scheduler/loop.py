"""The scheduler process: a loop that only calls the small steps in order.

1. lease the due DAGs furthest behind their schedule, create their due runs (pinned to each
   DAG's current version), advance their next due time, release;
2. queue the tasks that are ready (upstream done, or retry delay passed) and enqueue them;
3. recover: fail or retry running tasks that stopped heartbeating (only on evidence, see
   `scheduler.health`); evaluate again runs that nothing moves any more; enqueue again what
   Redis lost. Any number of these loops run at once, on any machines.

A DAG whose scheduling fails (a broken stored structure, say) is logged and left alone for a
while; it never stops the other DAGs of the tick.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.exc import InterfaceError, OperationalError

from dagstore.db import Database, db_time
from scheduler.backfill import release_held
from scheduler.enqueue import Enqueuer, requeue_lost
from scheduler.health import WriteHealth
from scheduler.lease import Lease, holds, lease_due_dags, release
from scheduler.runs import active_runs, create_scheduled_runs
from scheduler.taskstate import queue_ready, schedule_ready, settle_stuck
from scheduler.timetable import due_runs
from scheduler.tries import fail_lost

log = logging.getLogger("pinflow.scheduler")
BLOCKED_BACKOFF = 5.0  # seconds a DAG at max_active_runs is left alone
FAILED_BACKOFF = 30.0  # seconds a DAG whose scheduling raised is left alone


@dataclass
class SchedulerConfig:
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    lease_ttl: float = 30.0
    heartbeat_timeout: float = 60.0
    poll_interval: float = 0.5
    recover_interval: float = 5.0
    batch: int = 10


class Scheduler:
    def __init__(self, db: Database, enqueuer: Enqueuer | None, config: SchedulerConfig) -> None:
        self.db = db
        self.enqueuer = enqueuer
        self.config = config
        self._stop = False
        self._last_recover = 0.0
        self.health = WriteHealth(db, config.heartbeat_timeout)

    def stop(self, *_: object) -> None:
        self._stop = True

    def run_forever(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("scheduler %s started", self.config.name)
        while not self._stop:
            try:
                busy = self.tick()
            except Exception:  # the database or Redis went away: wait, reconnect, go on
                log.exception("scheduler tick failed; retrying")
                busy = False
                time.sleep(1.0)
            if not busy:
                time.sleep(self.config.poll_interval)
        log.info("scheduler %s stopped", self.config.name)

    def tick(self) -> bool:
        """One pass over the steps; True when there was work (so loop again at once)."""
        created = self.schedule_dags()
        queued = self.queue_tasks()
        if time.monotonic() - self._last_recover >= self.config.recover_interval:
            self.recover()
            self._last_recover = time.monotonic()
        return created > 0 or queued > 0

    def schedule_dags(self) -> int:
        with self.health.write() as session:
            now = db_time(session)
            leases = lease_due_dags(
                session, self.config.name, now, self.config.lease_ttl, self.config.batch
            )
        created = 0
        for lease in leases:
            try:
                created += self.schedule_one(lease)
            except (OperationalError, InterfaceError):
                raise  # the database went away: the whole tick waits, the leases expire
            except Exception:  # noqa: BLE001 - one DAG must not stop the others
                log.exception(
                    "scheduling DAG %s failed; retrying in %g s", lease.dag_pk, FAILED_BACKOFF
                )
                self.back_off(lease, FAILED_BACKOFF)
        return created

    def back_off(self, lease: Lease, seconds: float) -> None:
        with self.health.write() as session:
            release(session, lease, until=db_time(session) + timedelta(seconds=seconds))

    def schedule_one(self, lease: Lease) -> int:
        """Create the due runs of one leased DAG; the lease's fence guards every write."""
        with self.health.write() as session:
            now = db_time(session)
            dag = holds(session, lease, now)
            if dag is None:
                log.warning("lease on DAG %s lost before it was used", lease.dag_pk)
                return 0
            if dag.is_paused or not dag.is_active or dag.schedule is None:
                release(session, lease)  # changed since it was leased: nothing is due
                return 0
            structure = dag.structure or {}
            room = int(structure.get("max_active_runs") or 16) - active_runs(session, dag.dag_id)
            due = due_runs(structure, dag.last_logical_date, now, limit=max(room, 0) or 1)
            dates = due.logical_dates[: max(room, 0)]
            runs = create_scheduled_runs(session, dag, dates, self.config.name)
            for run in runs:
                schedule_ready(session, run, now)
            if dates:
                dag.last_logical_date = dates[-1]
            blocked = len(dates) < len(due.logical_dates)
            if not blocked:
                dag.next_due_at = due.next_due_at
                dag.schedule_ended = due.next_due_at is None
            backoff = now + timedelta(seconds=BLOCKED_BACKOFF) if blocked else None
            release(session, lease, until=backoff)
        return len(runs)

    def queue_tasks(self) -> int:
        with self.health.write() as session:
            now = db_time(session)
            release_held(session, now)  # backfill runs, as their max_active_runs allows
            payloads = queue_ready(session, now)
        if payloads and self.enqueuer is not None:
            self.enqueuer.enqueue(payloads)
        return len(payloads)

    def recover(self) -> None:
        timeout = self.config.heartbeat_timeout
        with self.health.write() as session:
            now = db_time(session)
            judged = self.health.may_judge_lost()
            lost = fail_lost(session, now, timeout) if judged else []
            moved = settle_stuck(session, now)
        if not judged:
            log.info(
                "not judging tries lost: database writes stalled %.1f s ago (timeout %g s)",
                self.health.seconds_since_stall(),
                timeout,
            )
        if lost:
            log.warning("tasks lost by dead workers: %s", lost)
        if moved:
            log.warning("runs that nothing moved any more, evaluated again: %s", moved)
        if self.enqueuer is not None:
            with self.db.read() as session:
                requeue_lost(session, self.enqueuer, db_time(session), timeout)
