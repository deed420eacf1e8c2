"""A task's on_failure callback, run by a worker: right after its last try failed there
(`runner.job`), or as a job of its own when the scheduler failed the task with no worker in
the path (a try judged lost, a mapped task failed at expansion: `scheduler.callbacks`).

Both run the callback the same way (`call_back`); a callback job talks to its own endpoints
(`CallbackEndpoints`), fenced as a try's, so its heartbeats, its log and its finish never
touch the failed try's state.
"""

from __future__ import annotations

from pathlib import Path

from dagstore.core.protocol import FinishRequest, TaskSpec
from runner.capture import CappedLog, capture
from runner.client import WorkerClient
from runner.execute import run_on_failure


def call_back(spec: TaskSpec, version_root: Path, error: str, task_log: CappedLog) -> None:
    """Run the failed task's callback; what it prints, and what went wrong with it, go to
    `task_log`. Never raises: a callback that fails changes nothing else."""
    with capture(task_log):
        trouble = run_on_failure(spec, version_root, error)
    if trouble:
        task_log.write(trouble if trouble.endswith("\n") else trouble + "\n")


class CallbackEndpoints:
    """A worker client's heartbeat and finish, sent to the endpoints of one attempt at a
    try's callback (`runner.heartbeat` and `runner.job.send_report` take either)."""

    def __init__(self, client: WorkerClient, number: int) -> None:
        self.client, self.number = client, number

    def heartbeat(
        self,
        ti_id: int,
        try_number: int,
        timeout: float | None = None,
        log: tuple[int, str] | None = None,
    ) -> int | None:
        return self.client.heartbeat(ti_id, try_number, timeout, log, callback=self.number)

    def finish(self, ti_id: int, report: FinishRequest, credential: str | None = None) -> None:
        self.client.finish(ti_id, report, credential, callback=self.number)


def endpoints(client: WorkerClient, spec: TaskSpec) -> WorkerClient | CallbackEndpoints:
    """Where the reports of the claimed `spec` go: its try's, or its callback's."""
    return CallbackEndpoints(client, spec.callback) if spec.callback else client
