"""A forked work horse that never talks to Redis: RQ's bookkeeping stays in the worker.

RQ's forking worker has the horse do the job's Redis bookkeeping itself: before the job a
pipeline that marks it started (over a connection the horse must first open: redis-py's pool
resets after a fork, so a TCP connect and the RESP handshake per task), after it another that
moves it to its final registry. Measured on 2 cores (BENCHMARKS.md, issue 17), that was most of
a forking worker's cost per no-op task beyond the fork itself, and it ran in a process whose
every touched page is a copy-on-write fault.

Here the worker, which holds a connection for its whole life, does both pipelines, while the
horse runs and after it exits; the horse only runs pinflow's task entry point under
RQ's job timeout and reports by its exit status, leaving its finish report for the worker to
send (`runner.handover`). A failing horse sends its traceback through
a pipe, so RQ's failed-job record still says why. What RQ does around the horse is unchanged:
the worker's monitor loop heartbeats, enforces the hard timeout, honours `stop-job` commands,
and records a horse that died of a signal as failed.

A horse may also be forked by the warm fork server of its version (`runner.forkserver`):
then the worker waits for it through the server. Either way, before any task code the horse
closes what it inherited that reaches past its own try: the token agent's socket and the
worker's Redis connections (`drop_channels`).
"""

from __future__ import annotations

import os
import random
import sys
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import WorkerStatus

from dagstore.core.protocol import JobPayload
from runner.agentconn import close_inherited
from runner.claim import CLAIMS
from runner.handover import HANDOVER

if TYPE_CHECKING:
    from runner.forkserver import ForkServer

MAX_TRACEBACK = 32 * 1024  # well under a pipe's buffer: the horse's write never blocks


class LightHorse:
    """Mixin for `rq.Worker` (forking): see the module's docstring. `run` is the job's
    function, called with the job's keyword arguments (the worker already refused any job
    that is not pinflow's entry point)."""

    run: Any  # Callable[..., object]; set by the concrete class

    _horse_status: int | None = None
    _horse_error: str = ""
    _error_pipe: tuple[int, int] | None = None
    _via: ForkServer | None = None  # the fork server that forked the current horse

    def horse_server(self, job: Job) -> ForkServer | None:
        """The warm fork server to fork this job's horse, if any (`runner.forkserver`)."""
        return None

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        self._via = None
        server = self.horse_server(job)
        if server is not None:
            assert self._error_pipe is not None
            handover = HANDOVER.fileno()
            assert handover is not None
            fds = [handover, self._error_pipe[1]]
            timeout = job.timeout or self.queue_class.DEFAULT_TIMEOUT  # type: ignore[attr-defined]
            pid = server.fork(job.kwargs, server_claim(job), timeout, job.id, fds)
            if pid is not None:
                self._horse_pid, self._via = pid, server
                return
        super().fork_work_horse(job, queue)  # type: ignore[misc]

    def execute_job(self, job: Job, queue: Queue) -> None:
        self._horse_status, self._horse_error = None, ""
        self._error_pipe = os.pipe()
        HANDOVER.open()
        try:
            self.fork_work_horse(job, queue)  # type: ignore[attr-defined]
            os.close(self._error_pipe[1])
            self._mark_started(job)  # while the horse already works: off the task's path
            self.monitor_work_horse(job, queue)  # type: ignore[attr-defined]
            report = HANDOVER.take()
        finally:
            HANDOVER.close()
            os.close(self._error_pipe[0])
            self._error_pipe = None
        if report is not None:
            self.handed_over(job, report)
        if self._horse_status == os.EX_OK:
            job.ended_at = now()
            job._status = JobStatus.FINISHED  # noqa: SLF001 - what perform_job sets
            self.handle_job_success(job, queue, queue.started_job_registry)  # type: ignore[attr-defined]
        self.set_state(WorkerStatus.IDLE)  # type: ignore[attr-defined]

    def _mark_started(self, job: Job) -> None:
        """RQ's bookkeeping of a job that starts: its execution, the worker's current job, the
        job started and out of the intermediate queue (what RQ's perform_job does in the
        horse). Done after the fork: the task need not wait for two Redis round trips."""
        self.prepare_execution(job)  # type: ignore[attr-defined]
        single = len(self.queues) == 1  # type: ignore[attr-defined]
        self.prepare_job_execution(job, remove_from_intermediate_queue=single)  # type: ignore[attr-defined]
        job.connection.persist(job.key)

    def handed_over(self, job: Job, report: bytes) -> None:
        """What the horse left in `runner.handover` for the worker to do (send it)."""

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        """The horse forked by the worker itself."""
        assert self._error_pipe is not None
        os.close(self._error_pipe[0])
        timeout = job.timeout or self.queue_class.DEFAULT_TIMEOUT  # type: ignore[attr-defined]
        self.run_horse(job.kwargs, timeout, job.id, self._error_pipe[1])

    def run_horse(
        self, kwargs: dict[str, Any], timeout: int, job_id: str, error_pipe: int
    ) -> NoReturn:
        """The horse: the task under RQ's timeout, then out by exit status. No Redis."""
        random.seed()
        self.setup_work_horse_signals()  # type: ignore[attr-defined]
        self._is_horse = True
        self.drop_channels()
        try:
            with self.death_penalty_class(timeout, JobTimeoutException, job_id=job_id):  # type: ignore[attr-defined]
                self.run(**kwargs)
        except BaseException:  # noqa: BLE001 - reported to the worker, which records it
            text = traceback.format_exc()
            sys.stderr.write(text)
            sys.stderr.flush()
            try:
                os.write(error_pipe, text.encode("utf-8", "replace")[-MAX_TRACEBACK:])
            finally:
                os._exit(1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(os.EX_OK)

    def drop_channels(self) -> None:
        """In a forked process, before any task or DAG code: close the token agent's socket
        and the worker's Redis connections, which it inherited and must not use."""
        CLAIMS.forget_in_child()
        close_inherited(self.connection)  # type: ignore[attr-defined]

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        if self._via is not None:
            pid, status = self._via.wait(self.horse_pid)  # type: ignore[attr-defined]
            rusage = None
        else:
            pid, status, rusage = super().wait_for_horse()  # type: ignore[misc]
        if pid is not None and status is not None:
            self._horse_status = _exit_code(status)
            if self._horse_status != os.EX_OK and self._error_pipe is not None:
                self._horse_error = _read_all(self._error_pipe[0])
        return pid, status, rusage

    def handle_job_failure(
        self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = ""
    ) -> None:
        if self._horse_error:
            exc_string = f"{self._horse_error}\n{exc_string}"
        super().handle_job_failure(job, queue, started_job_registry, exc_string)  # type: ignore[misc]


def server_claim(job: Job) -> Any:
    """The claim the worker made for `job` (`runner.claim`), for a fork server's horse."""
    return CLAIMS.claimed(JobPayload.model_validate(job.kwargs["payload"]))


def _exit_code(status: int) -> int | None:
    """As os.waitstatus_to_exitcode; None for a status no wait could give (a fork server
    runs DAG code: what it says may be anything)."""
    try:
        return os.waitstatus_to_exitcode(status)
    except ValueError:
        return None


def _read_all(fd: int) -> str:
    """What the dead horse wrote. Non-blocking: a process the task forked may still hold the
    pipe's write end, and the horse wrote everything before it exited."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("utf-8", "replace")
