"""The scheduler process: a loop that only calls the small steps in order.

1. lease a batch of the due DAGs furthest behind their schedule (one statement), create their
   due runs (pinned to each DAG's current version) and queue their first tasks, advance their
   next due time, release: one transaction for the batch (`scheduler.batch`), then enqueue
   those tasks in one Redis round trip (`scheduler.enqueue`);
2. queue the tasks that are ready (upstream done, or retry delay passed) and enqueue them;
   tasks under a pool or max_active_tasks in a transaction of their own (`scheduler.limits`);
3. recover: fail or retry running tasks that stopped heartbeating (only on evidence, see
   `scheduler.health`); evaluate again runs that nothing moves any more; fail runs past their
   dagrun_timeout (`scheduler.timeouts`); retry on_failure callbacks whose worker died and
   enqueue the ones due (`scheduler.callback_tries`); enqueue again what Redis lost.
4. with PINFLOW_CLEAN_OLDER_THAN set, every PINFLOW_CLEAN_EVERY seconds: delete finished runs
   older than that (`scheduler.clean`), a few batches per tick so scheduling never waits long.
   Any number of these loops run at once, on any machines.

A DAG whose scheduling fails (a broken stored structure, say) is logged and left alone for a
while; it never stops the other DAGs of its batch or tick.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta

from dagstore.core.db import Database, database_unavailable, db_time
from dagstore.core.outage import Outage
from scheduler.backfill import release_held
from scheduler.batch import FAILED_BACKOFF, schedule_batch
from scheduler.callback_tries import recover_callbacks, requeue_callbacks
from scheduler.clean import clean_history
from scheduler.enqueue import Enqueuer, requeue_lost
from scheduler.health import WriteHealth
from scheduler.lease import Lease, lease_due_dags, release
from scheduler.limits import queue_limited
from scheduler.taskstate import queue_ready, settle_stuck
from scheduler.timeouts import fail_timed_out
from scheduler.tries import fail_lost

log = logging.getLogger("pinflow.scheduler")


@dataclass
class SchedulerConfig:
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    lease_ttl: float = 30.0
    heartbeat_timeout: float = 60.0
    poll_interval: float = 0.5
    recover_interval: float = 5.0
    batch: int = 100  # DAGs leased and scheduled per transaction (`scheduler.batch`)
    clean_older_than: timedelta | None = None  # history older than this is deleted; None: kept
    clean_every: float = 3600.0  # seconds between cleaning passes
    clean_batches: int = 10  # batches of runs a tick deletes at most (the rest next tick)


class Scheduler:
    def __init__(self, db: Database, enqueuer: Enqueuer | None, config: SchedulerConfig) -> None:
        self.db = db
        self.enqueuer = enqueuer
        self.config = config
        self._stop = False
        self._last_recover = 0.0
        self._next_clean = 0.0
        self.health = WriteHealth(db, config.heartbeat_timeout)
        self.db_outage = Outage("the database", log, first=0.25, cap=2.0)

    def stop(self, *_: object) -> None:
        self._stop = True

    def run_forever(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("scheduler %s started", self.config.name)
        while not self._stop:
            try:
                busy = self.tick()
            except Exception as exc:  # noqa: BLE001 - a scheduler never exits of a failure
                busy = False
                if database_unavailable(exc):  # said once per outage, retried soon
                    time.sleep(self.db_outage.failed("scheduling", exc))
                    continue
                log.exception("scheduler tick failed; retrying")
                time.sleep(1.0)
                continue
            self.db_outage.ended()
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
        if self.config.clean_older_than and time.monotonic() >= self._next_clean:
            self.clean(self.config.clean_older_than)
        return created > 0 or queued > 0

    def clean(self, older_than: timedelta) -> None:
        """A few batches of old history deleted; the next tick goes on while more is left."""
        self._next_clean = time.monotonic() + self.config.clean_every  # also if it fails
        cleaned = clean_history(self.db, older_than, max_batches=self.config.clean_batches)
        if cleaned.more:
            self._next_clean = 0.0

    def schedule_dags(self) -> int:
        with self.health.write() as session:
            now = db_time(session)
            leases = lease_due_dags(
                session, self.config.name, now, self.config.lease_ttl, self.config.batch
            )
        return self.schedule_leases(leases)

    def schedule_leases(self, leases: list[Lease]) -> int:
        """Create the due runs of the leased DAGs in one transaction and enqueue their first
        tasks; returns how many runs. When the batch's writes fail, its DAGs are scheduled
        again one by one, so that only the DAG at fault is backed off and no other DAG's runs
        wait for it."""
        if not leases:
            return 0
        try:
            with self.health.write() as session:
                outcome = schedule_batch(session, leases, db_time(session), self.config.name)
        except Exception as exc:  # noqa: BLE001 - one DAG must not stop the others
            if database_unavailable(exc):
                raise  # the database went away: the whole tick waits, the leases expire
            if len(leases) > 1:
                log.warning("a batch of %d DAGs failed; scheduling them one by one",
                            len(leases), exc_info=True)  # fmt: skip
                return sum(self.schedule_leases([lease]) for lease in leases)
            log.exception(
                "scheduling DAG %s failed; retrying in %g s", leases[0].dag_pk, FAILED_BACKOFF
            )
            self.back_off(leases[0], FAILED_BACKOFF)
            return 0
        if self.enqueuer is not None:
            self.enqueuer.enqueue(outcome.payloads)
        return outcome.created

    def schedule_one(self, lease: Lease) -> int:
        """A batch of one: a lease taken elsewhere (tests take one to change the DAG first)."""
        return self.schedule_leases([lease])

    def back_off(self, lease: Lease, seconds: float) -> None:
        with self.health.write() as session:
            release(session, lease, until=db_time(session) + timedelta(seconds=seconds))

    def queue_tasks(self) -> int:
        with self.health.write() as session:
            now = db_time(session)
            release_held(session, now)  # backfill runs, as their max_active_runs allows
            payloads = queue_ready(session, now)
        with self.health.write() as session:  # a transaction of its own: `scheduler.limits`
            payloads += queue_limited(session, db_time(session))
        if payloads and self.enqueuer is not None:
            self.enqueuer.enqueue(payloads)
        return len(payloads)

    def recover(self) -> None:
        timeout = self.config.heartbeat_timeout
        with self.health.write() as session:
            now = db_time(session)
            judged = self.health.may_judge_lost()
            lost = fail_lost(session, now, timeout) if judged else []
            lost_callbacks = recover_callbacks(session, now, timeout) if judged else []
            moved = settle_stuck(session, now)
            timed_out = fail_timed_out(session, now)
        if lost:
            log.warning("tasks lost by dead workers: %s", lost)
        if moved:
            log.warning("runs that nothing moved any more, evaluated again: %s", moved)
        if timed_out:
            log.warning("runs failed by their dagrun_timeout: %s", timed_out)
        if lost_callbacks:
            log.warning("on_failure callbacks lost by dead workers: %s", lost_callbacks)
        if self.enqueuer is not None:
            with self.db.read() as session:
                requeue_lost(session, self.enqueuer, db_time(session), timeout)
                requeue_callbacks(session, self.enqueuer, db_time(session), timeout)
