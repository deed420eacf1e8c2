"""pinflow's long-running commands as real subprocesses, always stopped by the test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from pinflow.supervise import descendants
from runner.forkserver import SERVER_NAME
from tests.support.server import PINFLOW, pinflow_env


class PinflowProcess:
    def __init__(
        self, name: str, args: list[str], home: Path, database_url: str, **env: str
    ) -> None:
        self.name = name
        self.args = args
        self.env = pinflow_env(home, database_url, **env)
        self.log_path = home / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> PinflowProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [PINFLOW, *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def horses(self) -> list[int]:
        """A worker's work horses: below its RQ worker, which is below the token agent
        (runner/agent.py) that `pinflow worker` becomes; not its warm fork server
        (runner/forkserver.py), which waits there between tasks."""
        assert self.proc is not None
        rq = [pid for pid in descendants(self.proc.pid) if _parent(pid) == self.proc.pid]
        return [h for pid in rq for h in descendants(pid) if _comm(h) != SERVER_NAME]

    def kill9(self) -> list[int]:
        """Kill the process and all its descendants at once (RQ's work horse has its own
        process group, so killing the group alone would spare it); returns their pids."""
        if not self.alive:
            return []
        assert self.proc is not None
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        return pids

    def stop(self, timeout: float = 10) -> None:
        stop_all([self], timeout)

    def _terminate(self) -> list[int]:
        """SIGTERM, as a supervisor stops it; returns the descendants it had then."""
        assert self.proc is not None
        kids = descendants(self.proc.pid)
        self.proc.terminate()
        return kids

    def _reap(self, kids: list[int], deadline: float) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill9()
        for pid in kids:  # never leave a work horse behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_all(procs: list[PinflowProcess], timeout: float = 10) -> None:
    """SIGTERM all at once, then wait for each (SIGKILL past `timeout`): a cluster's
    processes shut down side by side, not one after another."""
    live = [p for p in procs if p.alive]
    kids = [p._terminate() for p in live]  # noqa: SLF001 - this module's own helpers
    deadline = time.monotonic() + timeout
    for proc, its_kids in zip(live, kids, strict=True):
        proc._reap(its_kids, deadline)  # noqa: SLF001


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
