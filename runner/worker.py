"""`pinflow worker`: an RQ worker on pinflow's queues. Needs Redis and HTTP, nothing else.

RQ's default worker forks a fresh work horse per job, so one task's imports and globals never
leak into the next. SIGTERM asks for a warm shutdown (the current task finishes); a second
SIGTERM stops it at once, and the scheduler's heartbeat check retries that task.

RQ's worker gives up when Redis goes away, loses a job's hash or turns replica; this one
skips RQ's bookkeeping while Redis is at fault (`runner.bookkeeping`) and reconnects with
backoff, so no Redis fault leaves a host without workers (issue 26). The RQ-side name carries
the process id:
a worker restarted under the same `--name` (by `pinflow up`, say) never collides with the
registration its killed predecessor left behind.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time

from rq import Queue, SimpleWorker, Worker
from rq.exceptions import StopRequested
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from dagstore.core.errors import PinflowError
from dagstore.core.outage import Outage
from dagstore.core.prctl import make_undumpable
from dagstore.core.protocol import DEFAULT_QUEUE, JOB_FUNCTION, queue_name
from dagstore.core.redisconn import forget_primary
from dagstore.core.settings import Settings
from runner.agent import AgentClient, WorkerOptions
from runner.agentconn import worker_redis
from runner.bookkeeping import MAX_DELAY, BookkeptJob, SurvivesRedis
from runner.claim import CLAIMS, token_refused
from runner.forkserver import WARM_SERVERS, ForkServer
from runner.horse import LightHorse
from runner.job import run_task, send_handed_over

log = logging.getLogger("pinflow.worker")
REFUSED_FIRST_WAIT = 1.0  # seconds before the next job once the token is refused
REFUSED_MAX_WAIT = 60.0


def rq_name(name: str | None) -> str:
    return f"{name or socket.gethostname()}.{os.getpid()}"


class _Claiming:
    """Before RQ executes a job: refuse anything but pinflow's task entry point, claim the
    try through the token agent (`runner.claim`). No DAG code ever runs here before the fork
    (`runner.forkserver`).

    A warm shutdown (SIGTERM) lets the job in hand finish, from the moment it is dequeued:
    RQ only waits for a job once the worker's state says busy, which pinflow records after
    the claim and the fork (`runner.horse`), and otherwise raises StopRequested wherever the
    signal lands, abandoning a claimed try or a running horse."""

    _job_in_hand = False

    def execute_job(self, job: Job, queue: Queue) -> None:
        self._job_in_hand = True
        try:
            self._claim_and_execute(job, queue)
        finally:
            self._job_in_hand = False

    def _shutdown(self) -> None:
        """RQ's answer to the first SIGTERM (its handler has already made a second one a cold
        shutdown): stop after the job in hand, or at once without one. RQ's own asks Redis
        for the worker's state first, which fails in a Redis outage; no RQ scheduler runs
        here (`with_scheduler=False`) for it to stop."""
        if self._job_in_hand:
            self._stop_requested = True
            log.info("warm shutdown: stopping once the current task is done")
            return
        raise StopRequested()

    @property
    def stop_requested(self) -> bool:
        """Whether SIGTERM asked this worker to stop (RQ notes the date of the request, and
        marks nothing when it stops an idle worker by raising StopRequested)."""
        return self._shutdown_requested_date is not None  # type: ignore[attr-defined]

    def _claim_and_execute(self, job: Job, queue: Queue) -> None:
        refusal = refusal_of(job)
        if refusal is not None:
            log.error("refusing RQ job %s: %s", job.id, refusal)
            self.prepare_execution(job)  # type: ignore[attr-defined]
            self.handle_job_failure(job, queue, exc_string=f"refused by pinflow: {refusal}")  # type: ignore[attr-defined]
            self.set_state(WorkerStatus.IDLE)  # type: ignore[attr-defined]
            return
        payload = job.kwargs.get("payload")
        outcome = CLAIMS.prepare(payload, os.environ.get("PINFLOW_WORKER_NAME", ""))
        if token_refused(outcome):
            self._give_back(job, queue, outcome)  # type: ignore[arg-type]
            return
        self._refused_for = 0.0
        self.claimed(outcome)
        super().execute_job(job, queue)  # type: ignore[misc]

    def claimed(self, outcome: object) -> None:
        """The claim's outcome, before the fork."""

    _refused_for = 0.0  # seconds waited since the token was first refused, 0 while it works

    def _give_back(self, job: Job, queue: Queue, refused: PinflowError) -> None:
        """The API server refuses this worker's token (revoked, or another database's): put
        the job back at the head of its queue for a worker whose token works, say so loudly,
        and wait longer each time (up to a minute) before taking another job."""
        with self.connection.pipeline() as pipe:  # type: ignore[attr-defined]
            pipe.lrem(queue.intermediate_queue_key, 1, job.id)
            queue.push_job_id(job.id, pipeline=pipe, at_front=True)
            pipe.execute()
        delay = min(max(2 * self._refused_for, REFUSED_FIRST_WAIT), REFUSED_MAX_WAIT)
        log.error(
            "TOKEN REFUSED: the API server refuses this worker's token (%s); no task can run "
            "on this worker until PINFLOW_TOKEN is a live worker token (`pinflow token create "
            "--scope worker`, then restart it). Job %s put back in its queue; trying again "
            "in %.0f s",
            refused.detail,
            job.id,
            delay,
        )
        self.set_state(WorkerStatus.IDLE)  # type: ignore[attr-defined]
        self._job_in_hand = False  # it is back in its queue: a SIGTERM now stops at once
        time.sleep(delay)
        self._refused_for += delay


def refusal_of(job: Job) -> str | None:
    """Why a job must not run here, or None. Anyone who can write to Redis can enqueue any
    dotted path (`os.system`, say): only pinflow's task entry point, with its one keyword
    argument, is ever imported or called."""
    try:
        func, args, kwargs = job.func_name, job.args, job.kwargs
    except Exception as exc:  # noqa: BLE001 - undecodable job data
        return f"unreadable job ({type(exc).__name__})"
    if func != JOB_FUNCTION:
        return f"function {func!r} is not pinflow's task entry point {JOB_FUNCTION}"
    if args or set(kwargs) != {"payload"}:
        return "pinflow's task entry point takes one keyword argument, payload"
    return None


class PinflowWorker(_Claiming, SurvivesRedis, LightHorse, Worker):
    """RQ's forking worker, with a work horse that runs the task and nothing else
    (`runner.horse`), forked by the warm fork server of the try's version when there is one
    (`runner.forkserver`); Redis faults in RQ's bookkeeping never end it (`runner.bookkeeping`)."""

    run = staticmethod(run_task)
    _server: ForkServer | None = None

    def claimed(self, outcome: object) -> None:
        # Before the task's handover mapping exists: a server forked now never holds it.
        self._server = WARM_SERVERS.for_claim(self, outcome)

    def horse_server(self, job: Job) -> ForkServer | None:
        return self._server

    def handed_over(self, job: Job, report: bytes) -> None:
        try:
            send_handed_over(job.kwargs["payload"], report)
        except PinflowError as exc:  # the API unreachable past the client's patience
            log.error("could not send the report of job %s: %s", job.id, exc.detail)


class NoForkWorker(_Claiming, SurvivesRedis, SimpleWorker):
    """Runs each task in the worker process itself (`pinflow worker --no-fork`).

    RQ's fork per task costs ~20 ms of CPU on a 2-core machine (page-table copy, copy-on-write
    faults, a new Redis connection, process exit), capping one worker near 50 no-op tasks/s.
    Without the fork a task starts in ~5 ms, at the price of isolation: module globals a task
    changes are seen by the next task of the same version, and a task that crashes the
    interpreter (os._exit, a segfault) takes the worker with it; the scheduler's heartbeat
    check then retries it. Versions still never mix: `runner.warm` drops one version's modules
    before importing another's. The DAG file is imported by the first task that needs it,
    in this process, which holds the token agent's socket: trusted code only (SECURITY.md).
    """


def make_worker(
    redis_url: str, queues: list[str] | None = None, name: str | None = None, fork: bool = True
) -> PinflowWorker | NoForkWorker:
    # Every connection comes from the token agent (no password here); not announcing the client
    # library (CLIENT SETINFO) saves two round trips per connection.
    connection = worker_redis(
        redis_url,
        CLAIMS.agent,
        health_check_interval=30,
        socket_connect_timeout=5,
        lib_name=None,
        lib_version=None,
    )
    rq_queues = [
        Queue(queue_name(q), connection=connection, serializer=JSONSerializer)
        for q in (queues or [DEFAULT_QUEUE])
    ]
    worker_class = PinflowWorker if fork else NoForkWorker
    return worker_class(
        rq_queues,
        connection=connection,
        name=rq_name(name),
        serializer=JSONSerializer,
        job_class=BookkeptJob,
    )


def warm_up() -> None:
    """Do once in the worker parent what each forked work horse would otherwise redo per task.

    Every horse inherits the parent's memory, so what is imported here is free at task start:
    the job's code (pydantic, the loader), the DAG authoring API that DAG files import
    (`dagstore.authoring.dag`, ~12 ms), and httpx's transport, which httpx imports only when
    the first client is built (httpcore, h11: ~30 ms). Building one client (no connection is
    made) is the way to get exactly what httpx loads lazily, whatever its version.
    """
    import dagstore.authoring.dag  # noqa: F401
    from runner.cache import ready_version
    from runner.client import WorkerClient
    from runner.job import cache_dir

    WorkerClient("http://127.0.0.1", "warm-up").close()
    gc.collect()
    gc.freeze()  # all of it lives as long as the worker: no full collection walks it again
    if os.environ.get("PINFLOW_WARM_DAGS", "1") != "0":
        root = cache_dir(Settings.load())
        WARM_SERVERS.enable(lambda repo, sha: ready_version(root, repo, sha))


def worker_main(options: WorkerOptions) -> int:
    """The RQ worker under the token agent (`runner.agent`): no token, claims via the agent."""
    make_undumpable()  # its horses inherit it: a task cannot read this process's socket
    agent = AgentClient.from_env()
    if agent is None:
        log.error("no token agent: start workers with `pinflow worker`")
        return 2
    CLAIMS.enable(agent)
    settings = Settings.load()
    if options.name:
        os.environ["PINFLOW_WORKER_NAME"] = options.name
    # Redis comes through the agent (runner.agentconn); a TLS Redis URL is in the environment.
    run_worker(settings.redis_url or "", options.queues, options.burst, options.name, options.fork)
    return 0


def run_worker(
    redis_url: str, queues: list[str] | None, burst: bool, name: str | None, fork: bool = True
) -> None:
    # The name tasks record as their worker; set here so a forked horse reports its parent.
    os.environ.setdefault("PINFLOW_WORKER_NAME", f"{socket.gethostname()}:{os.getpid()}")
    warm_up()
    outage = Outage("Redis", log, cap=MAX_DELAY)
    while True:
        worker = None
        try:
            worker = make_worker(redis_url, queues, name, fork)  # asks Redis for its version
            if worker.connection.exists(worker.key):
                worker.register_death()  # our own earlier incarnation, cut off from Redis
            outage.ended()
            worker.work(burst=burst, with_scheduler=False, logging_level="INFO")
            if burst or worker.stop_requested:  # done, or asked to stop
                return
            # RQ's loop ends itself on what it cannot handle ("unhandled exception, quitting"):
            # a worker never does, it starts the loop again.
            delay = outage.failed("running RQ's work loop", RuntimeError("the loop ended"))
        except StopRequested:  # SIGTERM while (re)starting: RQ's handler says stop
            return
        except Exception as exc:  # noqa: BLE001 - Redis down, READONLY, keys gone: carry on
            if worker is not None and worker.stop_requested:  # shutting down
                return
            delay = outage.failed("starting RQ's work loop", exc)
        if worker is not None:
            forget_primary(worker.connection)
        try:
            time.sleep(delay)
        except StopRequested:
            return
