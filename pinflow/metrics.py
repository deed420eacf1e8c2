"""Prometheus metrics of this process, and of the whole system as the database tells it.

Events are counted where they happen (`dagstore.core.metrics`, `scheduler.metrics`): each API
server counts its own requests, pushes and archives. What the database and Redis hold (active
runs and tasks by state, jobs waiting per queue) is read when Prometheus scrapes, so every API
server answers the same for it, whichever one is scraped; a scrape never reads the history
(finished runs are counted as they end). The names are listed in README.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dagstore.core.protocol import QUEUE_PREFIX
from dagstore.store import StoreContext
from scheduler.enqueue import Enqueuer
from scheduler.models import DagRun, TaskInstance
from scheduler.runs import ACTIVE_RUN_STATES
from scheduler.taskstate import MOVING

log = logging.getLogger("pinflow.metrics")
router = APIRouter()


@router.get("/metrics", include_in_schema=False)
@router.get("/api/v1/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


# What the gauges count: the states a run or task is in while it is not done. These rows are
# few whatever the history, and each count reads only the state index's entries for them;
# finished runs and tries are counters, counted as they end (`scheduler.metrics`).
RUN_GAUGE_STATES = ACTIVE_RUN_STATES
TASK_GAUGE_STATES = ("none", *MOVING)


def by_state(family: GaugeMetricFamily, states: Sequence[str], counts: dict[str, int]) -> None:
    """One series per state, 0 for a state no row is in: every state is always listed."""
    for state in states:
        family.add_metric([state], counts.get(state, 0))


def count_states(session: Session, column: Any, states: Sequence[str]) -> dict[str, int]:
    """state → rows in it, for `states` only: an index range read per state."""
    rows = session.execute(select(column, func.count()).where(column.in_(states)).group_by(column))
    return {state: count for state, count in rows}


class SystemCollector(Collector):
    """Active runs and task instances by state (two indexed counts) and each queue's depth."""

    def __init__(self) -> None:
        self.store: StoreContext | None = None
        self.enqueuer: Enqueuer | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.store is None:
            return
        runs = GaugeMetricFamily(
            "pinflow_dag_runs", "DAG runs by state, the active ones (queued, running)",
            labels=["state"],
        )  # fmt: skip
        tasks = GaugeMetricFamily(
            "pinflow_task_instances", "Task instances by state, the unfinished ones",
            labels=["state"],
        )  # fmt: skip
        try:
            with self.store.db.read() as session:
                run_counts = count_states(session, DagRun.state, RUN_GAUGE_STATES)
                task_counts = count_states(session, TaskInstance.state, TASK_GAUGE_STATES)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail with the database
            log.warning("metrics: cannot read the database: %s", exc)
        else:
            by_state(runs, RUN_GAUGE_STATES, run_counts)
            by_state(tasks, TASK_GAUGE_STATES, task_counts)
        yield runs
        yield tasks
        if self.enqueuer is not None:
            yield self._queues(self.enqueuer)

    def _queues(self, enqueuer: Enqueuer) -> GaugeMetricFamily:
        depth = GaugeMetricFamily(
            "pinflow_queue_depth", "Jobs waiting in each task queue (Redis)", labels=["queue"]
        )
        try:
            keys = [k.decode() for k in enqueuer.redis.smembers("rq:queues")]
            ours = sorted(k for k in keys if k.startswith(f"rq:queue:{QUEUE_PREFIX}"))
            with enqueuer.redis.pipeline(transaction=False) as pipe:
                for key in ours:
                    pipe.llen(key)
                lengths = pipe.execute()
            for key, length in zip(ours, lengths, strict=True):
                depth.add_metric([key.removeprefix(f"rq:queue:{QUEUE_PREFIX}")], length)
        except Exception as exc:  # noqa: BLE001 - nor with Redis
            log.warning("metrics: cannot read the queues: %s", exc)
        return depth


SYSTEM = SystemCollector()
REGISTRY.register(SYSTEM)


def watch(store: StoreContext, enqueuer: Enqueuer | None) -> None:
    """What this process's scrapes read (the app's store and Redis)."""
    SYSTEM.store, SYSTEM.enqueuer = store, enqueuer
