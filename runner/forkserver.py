"""Warm DAG files where no claim can be made: a fork server per version.

A work horse that imports its DAG file pays for it at every task (~40 ms for a DAG of 1,000
tasks; far more for a file that imports pandas). Importing it once in the RQ worker and
forking horses from there is what pinflow did before, but the RQ worker holds the token
agent's socket: a DAG file's top level, which is task code, could claim any queued try of any
repository through it and forge its result (issue 25). So the RQ worker never imports DAG
code. Instead, once a version is in the local cache, it forks a *fork server* for it:

    RQ worker (agent socket, Redis) ── fork ── fork server (neither) ── fork ── horse
    claims each try, sends reports             imports the DAG files          runs the task

1. The server first drops everything that reaches past its version: the agent's socket, the
   Redis connections, the claim the RQ worker held when it forked (`LightHorse.drop_channels`,
   `PendingClaims.drop_all`). Only then does it import the claimed try's DAG file (the file,
   repo and sha of the claim's answer, never those the Redis job names).
2. For each later try of that version the RQ worker claims as before and sends the server the
   claim's answer (spec and credential), the task's handover mapping and error pipe; the
   server forks the horse, says its pid, waits for it and says how it ended. The RQ worker
   monitors and kills it by that pid as RQ does its own horses, and sends its report.

The server runs the version's top-level code, so it is trusted as little as a horse: it holds
the credentials of tries of its own version only (one commit's code is one trust domain: any
file of it may import any other), and what it says (a pid, an exit status) counts for no
more than a horse's exit status did. One server per RQ worker, for the version of the latest
task; a task of another version stops it. Until a server says it is ready (and for a version
whose DAG file fails or hangs at import) the RQ worker forks horses itself, which import the
file and report any error as before. `PINFLOW_WARM_DAGS=0` turns fork servers off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from dagstore.core.errors import PinflowError
from dagstore.core.prctl import die_with_parent, name, set_name
from dagstore.core.protocol import TaskSpec
from runner import frames
from runner.claim import CLAIMS, Claimed
from runner.handover import HANDOVER
from runner.warm import IMPORT_TIMEOUT, WARM

log = logging.getLogger("pinflow.worker")
FORK_WAIT = IMPORT_TIMEOUT + 5.0  # a server importing another DAG file of its version first
STATUS_WAIT = 5.0  # the rest of a status message once its first byte is there
REMEMBER_FAILED = 64  # versions whose server failed, not tried again
SERVER_NAME = "pinflow-warm"  # how `ps` shows a fork server (its horses get the usual name)
# Where a version's files are, or None while it is not (completely) in the local cache.
Locate = Callable[[str, str], Path | None]
# What RQ's monitor loop may raise from while it waits (its job alarm, a shutdown request).
_MONITOR_SIGNALS = {signal.SIGALRM, signal.SIGTERM, signal.SIGINT}


@dataclass
class ForkServer:
    """The RQ worker's handle on one server."""

    pid: int
    sock: socket.socket
    key: tuple[str, str]  # (repo, sha)
    state: str = "starting"  # starting | ready | dead
    _status: tuple[int, int | None] | None = field(default=None, repr=False)

    @classmethod
    def start(cls, worker: Any, root: Path, spec: TaskSpec) -> ForkServer:
        """Fork the server for `spec`'s version; it imports `spec.fileloc` while this
        process goes on (`ready` says when it is done)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _serve(theirs, worker, root, spec)
        theirs.close()
        return cls(pid, ours, (spec.repo, spec.sha))

    def ready(self) -> bool:
        """Whether the server imported its DAG file and takes tries. Never waits."""
        if self.state == "starting" and _readable(self.sock, 0):
            message = self._receive(STATUS_WAIT)
            repo, sha = self.key
            if message and message.get("ready") is True:
                self.state = "ready"
                log.info("horses of %s@%s now fork from a warm fork server", repo, sha[:12])
            else:
                log.info("no warm fork server for %s@%s: its DAG file failed", repo, sha[:12])
                self.stop()
        return self.state == "ready"

    def fork(
        self, kwargs: dict[str, Any], claimed: Claimed, timeout: int, job_id: str, fds: list[int]
    ) -> int | None:
        """Have the server fork the horse of this claimed try: its pid, or None when the
        server failed (then it is stopped and the caller forks the horse itself). `fds`: the
        task's handover mapping and the write end of its error pipe."""
        self._status = None
        request = {
            "kwargs": kwargs,
            "spec": claimed.spec.model_dump(mode="json"),
            "sent": claimed.sent,
            "timeout": timeout,
            "job_id": job_id,
        }
        try:
            self.sock.settimeout(FORK_WAIT)
            frames.send(self.sock, request)
            frames.send_fds(self.sock, fds)
            answer = frames.receive(self.sock)
            pid = int((answer or {})["pid"])
        except (OSError, PinflowError, ValueError, KeyError, TypeError) as exc:
            repo, sha = self.key
            log.warning("warm fork server of %s@%s failed (%s): stopped", repo, sha[:12], exc)
            self.stop()
            return None
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(None)
        return pid

    def wait(self, pid: int) -> tuple[int, int | None]:
        """How horse `pid` ended: (pid, wait status), or (pid, None) when the server went
        away. Safe to interrupt (RQ's monitor alarm): waiting consumes nothing, and the
        status, once read, is kept until the next fork."""
        if self._status is None and self.state == "dead":
            self._status = (pid, None)
        if self._status is None:
            _readable(self.sock, None)  # an alarm's exception here leaves no trace
            previous = signal.pthread_sigmask(signal.SIG_BLOCK, _MONITOR_SIGNALS)
            try:
                message = self._receive(STATUS_WAIT)
                status = (message or {}).get("status")
                if not message or message.get("pid") != pid or not isinstance(status, int):
                    self.stop()
                    status = None
                self._status = (pid, status)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return self._status

    def stop(self) -> None:
        """End the server now (no horse of it runs: one task at a time)."""
        self.state = "dead"
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        try:
            self.sock.settimeout(timeout)
            return frames.receive(self.sock)
        except (OSError, PinflowError, ValueError):
            return None
        finally:
            with contextlib.suppress(OSError):
                self.sock.settimeout(None)


class WarmServers:
    """The RQ worker's fork server: at most one, for the version of the latest claimed try."""

    def __init__(self) -> None:
        self.locate: Locate | None = None
        self.current: ForkServer | None = None
        self.failed: list[tuple[str, str]] = []

    def enable(self, locate: Locate) -> None:
        self.locate = locate

    def for_claim(self, worker: Any, outcome: object) -> ForkServer | None:
        """The ready server for this claimed try's version, if there is one. Starts one when
        the version is in the local cache and has none (this try forks itself meanwhile)."""
        if self.locate is None or not isinstance(outcome, Claimed):
            return None
        spec = outcome.spec
        key = (spec.repo, spec.sha)
        current = self.current
        if current is not None and (current.key != key or current.state == "dead"):
            if current.key == key:
                self._failed(key)
            current.stop()
            self.current = current = None
        if current is not None:
            return current if current.ready() else None
        if key in self.failed:
            return None
        root = self.locate(*key)
        if root is not None:
            self.current = ForkServer.start(worker, root, spec)
        return None

    def _failed(self, key: tuple[str, str]) -> None:
        self.failed = [*self.failed[-(REMEMBER_FAILED - 1) :], key]


def _readable(sock: socket.socket, timeout: float | None) -> bool:
    """Whether `sock` has something to read (or was closed), waiting up to `timeout`
    seconds (None: until it has)."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
    except (OSError, ValueError):
        return True  # closed: the read that follows finds out
    return bool(poller.poll(None if timeout is None else int(timeout * 1000)))


def _serve(sock: socket.socket, worker: Any, root: Path, spec: TaskSpec) -> NoReturn:
    """The fork server (a forked copy of the RQ worker). Never returns."""
    try:
        die_with_parent()
        horse_name = name()
        set_name(SERVER_NAME)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        worker.drop_channels()  # before any DAG code: no agent, no Redis
        CLAIMS.drop_all()  # nor the claim the RQ worker held when it forked this process
        failed = WARM.load(root, spec.fileloc, spec.sha)
        frames.send(sock, {"ready": failed is None})
        if failed is None:
            while (request := frames.receive(sock)) is not None:
                _fork_horse(sock, worker, root, request, horse_name)
    except (OSError, PinflowError):
        pass  # the RQ worker has gone (or stopped this server)
    except BaseException:  # noqa: BLE001 - said in the worker's log; the RQ worker goes on
        traceback.print_exc()
    finally:
        os._exit(0)


def _fork_horse(
    sock: socket.socket, worker: Any, root: Path, request: dict[str, Any], horse_name: str
) -> None:
    fds = frames.receive_fds(sock, 2)
    spec = TaskSpec.model_validate(request["spec"])
    WARM.load(root, spec.fileloc, spec.sha)  # another file of this version: warm it too
    pid = os.fork()
    if pid == 0:
        sock.close()
        os.setpgid(0, 0)  # as RQ's horses: its own group, which the RQ worker kills
        set_name(horse_name)
        _horse(worker, request, spec, fds)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)  # the same, before the RQ worker could act on it
    for fd in fds:
        os.close(fd)
    frames.send(sock, {"pid": pid})
    _, status = os.waitpid(pid, 0)
    frames.send(sock, {"pid": pid, "status": status})


def _horse(worker: Any, request: dict[str, Any], spec: TaskSpec, fds: list[int]) -> NoReturn:
    handover, error_pipe = fds
    die_with_parent()
    os.environ["RQ_JOB_ID"] = str(request["job_id"])
    HANDOVER.adopt(handover)
    os.set_inheritable(error_pipe, False)
    CLAIMS.hand(Claimed(spec, float(request["sent"])))
    worker.run_horse(request["kwargs"], int(request["timeout"]), str(request["job_id"]),
                     error_pipe)  # fmt: skip


WARM_SERVERS = WarmServers()
