"""The token agent: the one process of a worker that holds its long-lived token.

Task code runs in the work horse, so whatever the horse (or the RQ worker it was forked from)
holds, a task can read: its memory, `/proc/self/environ`, `/proc/<parent>/environ`. The
worker's token therefore lives in neither. `pinflow worker` is three processes:

    agent (token, non-dumpable)  ── socketpair ──  RQ worker (no token)  ── fork ──  work horse
                                                    claims via the agent            runs the task
                                                    before each fork                with its try
                                                                                    credential

1. `pinflow worker` starts with PINFLOW_TOKEN in its environment. It writes the token into a
   pipe and re-executes itself without it (`launch`): the kernel shows every process's
   *initial* environment in /proc, so removing the variable in place would not be enough.
2. The agent reads the token from the pipe, makes itself non-dumpable (its /proc files and
   memory are then root's: no other process of the same user can read or ptrace it) and
   starts the RQ worker with one end of a socketpair and no token.
3. Before each fork the RQ worker asks the agent to claim the try (`AgentClient.claim`); the
   answer carries a credential bound to that try (`dagstore.grant`). The work horse closes
   its copy of the agent's socket before any task code runs and uses only that credential.

What this does not cover (SECURITY.md): a worker running as root (root reads any process's
memory); `--no-fork`, where tasks run in the RQ worker itself and can ask the agent to claim
other tries (never to reveal the token); a DAG file's top level imported in the RQ worker to
warm it (`runner.warm`), which can do the same.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any, NoReturn

from dagstore.errors import PinflowError, error_for
from dagstore.prctl import die_with_parent, make_undumpable
from dagstore.protocol import TaskSpec

log = logging.getLogger("pinflow.worker")
TOKEN_FD_ENV = "PINFLOW_TOKEN_FD"  # the pipe the re-executed agent reads its token from
AGENT_FD_ENV = "PINFLOW_AGENT_FD"  # the RQ worker's end of the socketpair
MAX_FRAME = 64 * 1024 * 1024  # a claim answer carries upstream results: generous, bounded
_FRAME = struct.Struct("!I")


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


def launch(options: WorkerOptions, token: str) -> NoReturn:
    """Become the agent: the same process (pid, parent, signals) without the token in its
    environment. The token goes through a pipe the new image reads first."""
    read_end, write_end = os.pipe()
    os.write(write_end, token.encode("utf-8"))  # far below a pipe's buffer: no deadlock
    os.close(write_end)
    os.set_inheritable(read_end, True)
    env = {k: v for k, v in os.environ.items() if k != "PINFLOW_TOKEN"}
    env[TOKEN_FD_ENV] = str(read_end)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "runner", "agent", options.dumps()], env)


def _read_token() -> str:
    fd = int(os.environ.pop(TOKEN_FD_ENV))
    with os.fdopen(fd, "rb") as pipe:
        return pipe.read().decode("utf-8").strip()


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode("utf-8")
    sock.sendall(_FRAME.pack(len(data)) + data)


def _receive(sock: socket.socket) -> dict[str, Any] | None:
    """One message, or None when the other end has gone."""
    head = _read_exactly(sock, _FRAME.size)
    if head is None:
        return None
    (size,) = _FRAME.unpack(head)
    if size > MAX_FRAME:
        raise PinflowError(f"agent message of {size} bytes refused")
    body = _read_exactly(sock, size)
    if body is None:
        return None
    message = json.loads(body)
    if not isinstance(message, dict):
        raise PinflowError("agent message is not an object")
    return message


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    parts, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def agent_main(options: WorkerOptions) -> int:
    """The agent: start the RQ worker, answer its claims, end with it."""
    from dagstore.settings import Settings
    from runner.client import WorkerClient

    token = _read_token()
    make_undumpable()
    settings = Settings.load()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = {k: v for k, v in os.environ.items() if k != "PINFLOW_TOKEN"}
    env[AGENT_FD_ENV] = str(theirs.fileno())
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
    client = WorkerClient(settings.api_url, token)
    try:
        while (request := _receive(ours)) is not None:
            _send(ours, _answer(client, request))
    except (OSError, PinflowError, ValueError) as exc:
        log.error("agent: the RQ worker's channel broke (%s): stopping it", exc)
        worker.terminate()
    finally:
        client.close()
        ours.close()
    return worker.wait()


def _answer(client: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Claim one try with the worker's token: the only thing the agent does for anyone."""
    try:
        spec, sent = client.claim(
            int(request["ti_id"]),
            int(request["try_number"]),
            str(request["worker"]),
            str(request["attempt"]),
        )
    except PinflowError as exc:
        return {"error": exc.detail, "status": exc.status_code}
    except (KeyError, TypeError, ValueError) as exc:
        return {"error": f"malformed claim request: {exc!r}", "status": 400}
    return {"spec": spec.model_dump(mode="json"), "sent": sent}


class AgentClient:
    """The RQ worker's side: claims go to the agent, which holds the token."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.owner = os.getpid()

    @classmethod
    def from_env(cls) -> AgentClient | None:
        fd = os.environ.pop(AGENT_FD_ENV, None)
        return cls(int(fd)) if fd is not None else None

    def claim(
        self, ti_id: int, try_number: int, worker: str, attempt: str
    ) -> tuple[TaskSpec, float]:
        """As `WorkerClient.claim`; the answer's credential is for this try alone."""
        request = {"ti_id": ti_id, "try_number": try_number, "worker": worker}
        _send(self.sock, {**request, "attempt": attempt})
        answer = _receive(self.sock)
        if answer is None:
            raise PinflowError("the worker's token agent has gone")
        if "error" in answer:
            raise error_for(int(answer.get("status") or 500), str(answer["error"]))
        return TaskSpec.model_validate(answer["spec"]), float(answer["sent"])

    def forget_in_child(self) -> None:
        """In a forked work horse, before any task code: drop the way to the agent."""
        if os.getpid() != self.owner:
            self.sock.close()
