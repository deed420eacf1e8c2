"""The token agent: the one process of a worker that holds its long-lived token.

Task code runs in the work horse, so whatever the horse (or the RQ worker it was forked from)
holds, a task can read: its memory, `/proc/self/environ`, `/proc/<parent>/environ`. The
worker's token therefore lives in neither. `pinflow worker` is three processes:

    agent (token, non-dumpable)  ── socketpair ──  RQ worker (no token)  ── fork ──  work horse
                                                    claims via the agent            runs the task
                                                    before each fork                with its try
                                                                                    credential

1. `pinflow worker` starts with PINFLOW_TOKEN and PINFLOW_REDIS_URL in its environment (or,
   started by `pinflow up`, with neither: both come through a pipe, `secrets_pipe`). It writes
   them into a pipe and re-executes itself without them (`launch`): the kernel shows every
   process's *initial* environment in /proc, so removing a variable in place is not enough.
2. The agent reads them from the pipe, makes itself non-dumpable (its /proc files and
   memory are then root's: no other process of the same user can read or ptrace it) and
   starts the RQ worker with one end of a socketpair, no token and no Redis password.
3. The RQ worker's Redis connections are opened by the agent, which authenticates them and
   passes the connected socket over (`AgentClient.redis_socket`, `runner.agentconn`): the
   password is never in the RQ worker's memory, so a work horse forked from it cannot find
   it, and the horse closes the sockets it inherited before any task code runs.
4. Before each fork the RQ worker asks the agent to claim the try (`AgentClient.claim`); the
   answer carries a credential bound to that try (`dagstore.access.grants`). The work horse closes
   its copy of the agent's socket before any task code runs and uses only that credential.

What this does not cover (SECURITY.md): a worker running as root outside `pinflow up`'s box
(root reads any process's memory); `--no-fork`, where tasks run in the RQ worker itself and
can ask the agent to claim other tries (never to reveal the token); a TLS Redis URL
(`rediss://`), whose connections cannot be handed over, so the RQ worker gets the URL.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

from dagstore.core.errors import PinflowError, error_for
from dagstore.core.prctl import die_with_parent, make_undumpable
from dagstore.core.protocol import TaskSpec
from runner import frames

log = logging.getLogger("pinflow.worker")
SECRETS_FD_ENV = "PINFLOW_AGENT_SECRETS_FD"  # the pipe the agent reads its secrets from
AGENT_FD_ENV = "PINFLOW_AGENT_FD"  # the RQ worker's end of the socketpair
# Set for the RQ worker when its Redis connections come from the agent (`runner.agentconn`).
REDIS_VIA_AGENT_ENV = "PINFLOW_REDIS_VIA_AGENT"
SECRET_VARIABLES = ("PINFLOW_TOKEN", "PINFLOW_REDIS_URL")  # never in a process's environment


@dataclass(frozen=True)
class WorkerOptions:
    """What `pinflow worker` was asked for, carried across the re-exec and to the RQ worker."""

    queues: list[str] | None
    burst: bool
    name: str | None
    fork: bool

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str) -> WorkerOptions:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class WorkerSecrets:
    """What only the agent may hold: the worker's token and the Redis URL (its password)."""

    token: str
    redis_url: str

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode("utf-8")

    @classmethod
    def loads(cls, data: bytes) -> WorkerSecrets:
        fields = json.loads(data)
        return cls(str(fields["token"]), str(fields["redis_url"]))


def pipe_holding(data: bytes) -> int:
    """The read end of a pipe holding `data`, inheritable: how a secret reaches a new
    process with none on a command line or in an environment."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)  # far below a pipe's buffer: no deadlock
    os.close(write_end)
    os.set_inheritable(read_end, True)
    return read_end


def agent_command(options: WorkerOptions) -> list[str]:
    """The agent's command line; its environment names the secrets pipe (SECRETS_FD_ENV)."""
    return [sys.executable, "-m", "runner", "agent", options.dumps()]


def launch(options: WorkerOptions, secrets: WorkerSecrets) -> NoReturn:
    """Become the agent: the same process (pid, parent, signals) without the token and the
    Redis URL in its environment. They go through a pipe the new image reads first."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    env[SECRETS_FD_ENV] = str(pipe_holding(secrets.dumps()))
    sys.stdout.flush()
    sys.stderr.flush()
    command = agent_command(options)
    os.execve(command[0], command, env)


def _read_secrets() -> WorkerSecrets:
    fd = int(os.environ.pop(SECRETS_FD_ENV))
    with os.fdopen(fd, "rb") as pipe:
        return WorkerSecrets.loads(pipe.read())


def agent_main(options: WorkerOptions) -> int:
    """The agent: start the RQ worker, answer its claims and its requests for Redis
    connections, end with it."""
    from dagstore.core.settings import Settings
    from runner.client import WorkerClient

    secrets = _read_secrets()
    make_undumpable()
    settings = Settings.load()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}
    env[AGENT_FD_ENV] = str(theirs.fileno())
    if handed_over(secrets.redis_url):
        env[REDIS_VIA_AGENT_ENV] = "1"
    else:  # a TLS connection cannot change process: the RQ worker connects itself
        env["PINFLOW_REDIS_URL"] = secrets.redis_url
    worker = subprocess.Popen(
        [sys.executable, "-m", "runner", "worker", options.dumps()],
        env=env,
        pass_fds=(theirs.fileno(),),
        preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads here
    )
    theirs.close()
    # SIGTERM is the warm shutdown of the RQ worker, a second one its cold shutdown: pass
    # each on. SIGINT from a terminal reaches the whole process group: the worker has it.
    signal.signal(signal.SIGTERM, lambda signum, _frame: worker.send_signal(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    client = WorkerClient(settings.api_url, secrets.token)
    redis_pool = _redis_pool(secrets.redis_url)
    try:
        while (request := frames.receive(ours)) is not None:
            if request.get("op") == "redis":
                _hand_redis_connection(ours, redis_pool)
            else:
                frames.send(ours, _answer(client, request))
    except (OSError, PinflowError, ValueError) as exc:
        log.error("agent: the RQ worker's channel broke (%s): stopping it", exc)
        worker.terminate()
    finally:
        client.close()
        ours.close()
    return worker.wait()


def handed_over(redis_url: str) -> bool:
    """Whether the RQ worker's Redis connections can be opened here and passed over: a plain
    or Unix-socket connection can, a TLS one (its state lives in this process) cannot."""
    return not redis_url.startswith("rediss://")


def _redis_pool(redis_url: str) -> Any:
    """Plain or Sentinel (`dagstore.core.redisconn`): with Sentinel each new connection asks where
    the primary is now, so a worker follows a failover by asking the agent again."""
    from dagstore.core.redisconn import connect

    # No CLIENT SETINFO: two round trips saved per connection (runner.worker.make_worker).
    client = connect(redis_url, lib_name=None, lib_version=None, socket_connect_timeout=5)
    return client.connection_pool


def _hand_redis_connection(sock: socket.socket, pool: Any) -> None:
    """Open and authenticate a Redis connection, pass its socket to the RQ worker and forget
    it: the RQ worker talks on it without ever holding the password. A failure (Redis down)
    is answered as an error, which the RQ worker raises as Redis' ConnectionError."""
    import redis

    connection = pool.make_connection()
    try:
        connection.connect()
    except redis.RedisError as exc:
        frames.send(sock, {"error": str(exc), "status": 503})
        return
    conn_sock = connection._sock  # noqa: SLF001 - taken over: redis-py must not close it
    connection._sock = None  # noqa: SLF001 - so no shutdown(2) reaches the socket passed on
    connection.disconnect()
    try:
        if isinstance(conn_sock, ssl.SSLSocket):
            frames.send(sock, {"error": "a TLS connection cannot be handed over", "status": 500})
            return
        frames.send(sock, {"fd": 1})
        frames.send_fds(sock, [conn_sock.fileno()])
    finally:
        conn_sock.close()  # the RQ worker holds its own copy now


def _answer(client: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Claim one try with the worker's token."""
    try:
        spec, sent = client.claim(
            int(request["ti_id"]),
            int(request["try_number"]),
            str(request["worker"]),
            str(request["attempt"]),
            callback=int(request.get("callback", 0)),
        )
    except PinflowError as exc:
        return {"error": exc.detail, "status": exc.status_code}
    except (KeyError, TypeError, ValueError) as exc:
        return {"error": f"malformed claim request: {exc!r}", "status": 400}
    return {"spec": spec.model_dump(mode="json"), "sent": sent}


class AgentClient:
    """The RQ worker's side: claims and Redis connections go through the agent, which holds
    the token and the Redis password. One request at a time (RQ's pubsub thread reconnects
    while the main thread claims)."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.owner = os.getpid()
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> AgentClient | None:
        fd = os.environ.pop(AGENT_FD_ENV, None)
        return cls(int(fd)) if fd is not None else None

    def _ask(self, request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        with self._lock:
            frames.send(self.sock, request)
            answer = frames.receive(self.sock)
            if answer is None:
                raise PinflowError("the worker's token agent has gone")
            fds = frames.receive_fds(self.sock, 1) if "fd" in answer else []
        if "error" in answer:
            for fd in fds:
                os.close(fd)
            raise error_for(int(answer.get("status") or 500), str(answer["error"]))
        return answer, fds

    def claim(
        self, ti_id: int, try_number: int, worker: str, attempt: str, callback: int = 0
    ) -> tuple[TaskSpec, float]:
        """As `WorkerClient.claim`; the answer's credential is for this try alone."""
        request = {"ti_id": ti_id, "try_number": try_number, "worker": worker}
        if callback:
            request["callback"] = callback
        answer, _ = self._ask({**request, "attempt": attempt})
        return TaskSpec.model_validate(answer["spec"]), float(answer["sent"])

    def redis_socket(self) -> socket.socket:
        """A connected, authenticated socket to Redis, opened by the agent."""
        _, fds = self._ask({"op": "redis"})
        if not fds:
            raise PinflowError("the token agent sent no Redis connection")
        return socket.socket(fileno=fds[0])

    def forget_in_child(self) -> bool:
        """In a forked process, before any task code: drop the way to the agent. True when
        dropped (False in the RQ worker itself: a --no-fork worker's tasks run there)."""
        if os.getpid() == self.owner:
            return False
        self.sock.close()
        return True
