"""Prometheus metrics of this process, and of the whole system as the database tells it.

Events are counted where they happen (`dagstore.core.metrics`, `scheduler.metrics`): each API
server counts its own requests, pushes and archives. What the database and Redis hold (runs
and tasks by state, jobs waiting per queue) is read when Prometheus scrapes, so every API
server answers the same for it, whichever one is scraped. The names are listed in README.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import get_args

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dagstore.core.protocol import QUEUE_PREFIX
from dagstore.store import StoreContext
from scheduler.enqueue import Enqueuer
from scheduler.models import DagRun, TaskInstance
from scheduler.shapes import RunState, TaskState

log = logging.getLogger("pinflow.metrics")
router = APIRouter()


@router.get("/metrics", include_in_schema=False)
@router.get("/api/v1/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def by_state(family: GaugeMetricFamily, states: Iterable[str], counts: dict[str, int]) -> None:
    """A sample for every state, 0 when nothing is in it: a series that is absent rather than
    0 breaks sums, rate() and alerts (`pinflow_dag_runs{state="running"} 0`)."""
    for state in dict.fromkeys([*states, *counts]):
        family.add_metric([state], counts.get(state, 0))


class SystemCollector(Collector):
    """Runs and task instances by state (two indexed GROUP BYs) and each queue's depth."""

    def __init__(self) -> None:
        self.store: StoreContext | None = None
        self.enqueuer: Enqueuer | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.store is None:
            return
        runs = GaugeMetricFamily("pinflow_dag_runs", "DAG runs by state", labels=["state"])
        tasks = GaugeMetricFamily(
            "pinflow_task_instances", "Task instances by state", labels=["state"]
        )
        try:
            with self.store.db.read() as session:
                for family, column, states in (
                    (runs, DagRun.state, get_args(RunState)),
                    (tasks, TaskInstance.state, get_args(TaskState)),
                ):
                    counts = session.execute(select(column, func.count()).group_by(column))
                    by_state(family, states, dict(counts.tuples().all()))
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail with the database
            log.warning("metrics: cannot read the database: %s", exc)
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
