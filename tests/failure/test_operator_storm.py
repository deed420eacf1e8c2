"""Operators and workers at once on one backfill (issue 24, parts 2-4), without any staging:
three schedulers release held runs, two workers claim, heartbeat with log pieces and finish,
an operator clears and cancels runs at random, for several seconds. A monitor reads, over and
over, how many of the backfill's runs are active and whether any run outside that count has
a task to run. Afterwards the operator stops and every run must end.

The deterministic interleavings of each pair are in `tests/scheduler/test_operator_locks.py`
and `test_backfill_limits.py`; this is the check that nothing was left out between them.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable

from sqlalchemy import func, select

from dagstore.core.db import Database
from dagstore.core.errors import Conflict
from scheduler.models import DagRun, TaskInstance
from scheduler.runs import ACTIVE_RUN_STATES
from tests.failure.test_crashes import report
from tests.support.seed import held_backfill
from tests.support.steps import (
    beat_step,
    cancel_step,
    claim_step,
    clear_step,
    finish_step,
    release_step,
)

RUNS, LIMIT, STORM_SECONDS, SETTLE_SECONDS = 40, 3, 10.0, 60.0
BUSY = ("scheduled", "queued", "running")


class Storm:
    def __init__(self, db: Database, backfill_id: int) -> None:
        self.db, self.backfill_id = db, backfill_id
        self.done = Counter[str]()
        self.errors: list[str] = []
        self.stop_operator = threading.Event()
        self.stop_all = threading.Event()
        self.max_active = 0
        self.outside = 0  # samples with a task to run in a held or ended run
        self.lock = threading.Lock()

    def act(self, name: str, step: Callable) -> None:
        try:
            with self.db.write() as session:
                step(session)
        except Conflict:
            name += " refused"  # 409: the other side got there first, as it may
        except Exception as exc:  # noqa: BLE001 - a deadlock, a 500: what the storm looks for
            with self.lock:
                self.errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        with self.lock:
            self.done[name] += 1

    def tasks(self, state: str) -> list[tuple[str, int, int]]:
        with self.db.read() as session:
            rows = session.execute(
                select(DagRun.run_id, TaskInstance.id, TaskInstance.try_number)
                .join(DagRun, DagRun.id == TaskInstance.run_pk)
                .where(DagRun.backfill_id == self.backfill_id, TaskInstance.state == state)
            )
            return [tuple(row) for row in rows]

    def runs(self) -> list[tuple[str, str, bool]]:
        with self.db.read() as session:
            rows = session.execute(
                select(DagRun.run_id, DagRun.state, DagRun.held).where(
                    DagRun.backfill_id == self.backfill_id
                )
            )
            return [tuple(row) for row in rows]

    def scheduler(self) -> None:
        while not self.stop_all.is_set():
            self.act("release", release_step())
            time.sleep(0.01)

    def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop_all.is_set():
            queued, running = self.tasks("queued"), self.tasks("running")
            if queued:
                _, ti, try_number = rng.choice(queued)
                self.act("claim", claim_step(ti, try_number))
            if running:
                _, ti, try_number = rng.choice(running)
                if rng.random() < 0.5:
                    self.act("heartbeat", beat_step(ti, f"line {rng.random()}\n", try_number))
                else:
                    self.act("finish", finish_step(ti, rng.random() < 0.7, try_number))
            time.sleep(0.005)

    def operator(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop_operator.is_set():
            runs = self.runs()
            active = [run_id for run_id, state, _ in runs if state in ACTIVE_RUN_STATES]
            clearable = [run_id for run_id, state, held in runs if held or run_id not in active]
            if active and rng.random() < 0.3:
                self.act("cancel", cancel_step(rng.choice(active)))
            elif clearable:
                self.act("clear", clear_step(rng.choice(clearable)))
            time.sleep(0.02)

    def monitor(self) -> None:
        while not self.stop_all.is_set():
            with self.db.read() as session:
                active = session.scalar(
                    select(func.count())
                    .select_from(DagRun)
                    .where(
                        DagRun.backfill_id == self.backfill_id,
                        ~DagRun.held,
                        DagRun.state.in_(ACTIVE_RUN_STATES),
                    )
                )
                stray = session.scalar(
                    select(func.count())
                    .select_from(TaskInstance)
                    .join(DagRun, DagRun.id == TaskInstance.run_pk)
                    .where(
                        DagRun.backfill_id == self.backfill_id,
                        TaskInstance.state.in_(BUSY),
                        DagRun.held | DagRun.state.not_in(ACTIVE_RUN_STATES),
                    )
                )
            self.max_active = max(self.max_active, active or 0)
            self.outside += bool(stray)
            time.sleep(0.005)


def test_operators_workers_and_schedulers_on_one_backfill(db: Database):
    backfill = held_backfill(db, "storm", days=RUNS, max_active_runs=LIMIT)
    storm = Storm(db, backfill.id)
    threads = [threading.Thread(target=storm.scheduler) for _ in range(3)]
    threads += [threading.Thread(target=storm.worker, args=(seed,)) for seed in (1, 2)]
    threads += [
        threading.Thread(target=storm.operator, args=(3,)),
        threading.Thread(target=storm.monitor),
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(STORM_SECONDS)
        storm.stop_operator.set()
        # The operator's last clear may still be committing: settle only once it is done, or
        # the runs may all look ended just before that clear queues one again.
        threads[-2].join(60)
        settled_from = time.monotonic()
        while time.monotonic() < settled_from + SETTLE_SECONDS:
            if all(state not in ACTIVE_RUN_STATES for _, state, _ in storm.runs()):
                break
            time.sleep(0.1)
        settled = time.monotonic() - settled_from
    finally:
        storm.stop_operator.set()
        storm.stop_all.set()
        for thread in threads:
            thread.join(60)
    ended = Counter(state for _, state, _ in storm.runs())
    report(
        f"operator storm ({db.engine.dialect.name})",
        seconds=STORM_SECONDS,
        runs=RUNS,
        max_active_runs=LIMIT,
        max_active_seen=storm.max_active,
        samples_with_tasks_outside_the_limit=storm.outside,
        errors=len(storm.errors),
        actions=dict(sorted(storm.done.items())),
        ended=dict(ended),
        settled_in=f"{settled:.1f}s",
    )
    assert storm.errors == [], storm.errors[:5]
    assert storm.max_active <= LIMIT
    assert storm.outside == 0
    assert set(ended) <= {"success", "failed", "canceled"}, ended
    for action in ("release", "claim", "heartbeat", "finish", "clear", "cancel"):
        assert storm.done[action] > 0, f"no {action} went through: {storm.done}"
