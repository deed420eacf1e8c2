"""The scheduler's Prometheus series for task tries and leases, counted where they happen.

Claims and finishes are counted by the API server that answered them, lost tasks and lease
takeovers by the scheduler that declared or took them (`pinflow scheduler --metrics-port`);
Prometheus sums each over its processes. What is in the database (active runs and tasks by
state, queue depth) is read at scrape time instead (`pinflow.metrics`); finished runs are
counted as they end, here, not counted in the database at every scrape, which would read all
history (issue 33). Names: README ("Metrics").
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from sqlalchemy import event
from sqlalchemy.orm import Session

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
DISPATCH_SECONDS = Histogram(
    "pinflow_dispatch_latency_seconds",
    "Queued → claimed by a worker, per try (database clock)",
    buckets=LATENCY_BUCKETS,
)
TASK_SECONDS = Histogram(
    "pinflow_task_duration_seconds",
    "Claimed → finished, per try that reported (database clock)",
    buckets=(*LATENCY_BUCKETS, 900, 3600, 4 * 3600, 24 * 3600),
)
TRIES_FINISHED = Counter(
    "pinflow_task_tries_finished",
    "Task tries that ended, by the state they left the task in: success, failed, "
    "up_for_retry (retried), or lost (declared lost by a scheduler: no heartbeat)",
    ["state"],
)
LEASE_TAKEOVERS = Counter(
    "pinflow_lease_takeovers",
    "DAG leases taken over from a scheduler whose lease expired unreleased (it crashed or "
    "stalled past the lease TTL)",
)
RUNS_FINISHED = Counter(
    "pinflow_dag_runs_finished",
    "DAG runs that ended, by final state: success, failed, canceled",
    ["state"],
)
for _final in ("success", "failed", "canceled"):  # every series present from the start, at 0
    RUNS_FINISHED.labels(_final)

_PENDING = "pinflow_metrics_on_commit"


def count_on_commit(session: Session, counter: Counter, amount: float = 1) -> None:
    """Count `amount` once the session's transaction commits (never for one rolled back, nor
    twice for one retried)."""
    session.info.setdefault(_PENDING, []).append((counter, amount))


@event.listens_for(Session, "after_commit")
def _counted(session: Session) -> None:
    for counter, amount in session.info.pop(_PENDING, ()):
        counter.inc(amount)


@event.listens_for(Session, "after_rollback")
def _not_counted(session: Session) -> None:
    session.info.pop(_PENDING, None)
