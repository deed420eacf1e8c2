"""Children of `pinflow up`: started, watched, restarted when they die, stopped in order.

Each child gets PR_SET_PDEATHSIG, so even a `kill -9` of `pinflow up` takes its children
down with it; a normal stop sends SIGTERM (workers finish their task: warm shutdown), waits,
then kills whatever is left, work horses included. A child in a bubblewrap box
(`pinflow.upbox`) is signalled inside it: bubblewrap passes no signal on. A child's secret
reaches it through a pipe, new at each start, never its command line or environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from dagstore.core.prctl import die_with_parent
from runner.agent import pipe_holding


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (RQ's work horses have their own process group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def inside_box(pid: int) -> int | None:
    """The first process below `pid` that is not bubblewrap's own (bwrap, then its init in
    the box): the one to signal."""
    for child in descendants(pid):  # a chain: parents come before their children
        try:
            comm = Path(f"/proc/{child}/comm").read_text().strip()
        except OSError:
            continue
        if comm != "bwrap":
            return child
    return None


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)
    # Log lines holding one of these are said on the console too: what the person running
    # `pinflow up` must see (a worker whose token is refused), not only its log file.
    shout: tuple[str, ...] = ()
    # (the variable naming the descriptor, the bytes): read by the child from a pipe.
    secret: tuple[str, bytes] | None = None
    boxed: bool = False  # started under bubblewrap (`pinflow.upbox`)
    _log_read: int = 0

    def loud_lines(self) -> list[str]:
        """New lines of the child's log that hold a `shout` marker."""
        if not self.shout or self.log_path is None:
            return []
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_read)
                new = f.read()
        except OSError:
            return []
        complete = new.rfind(b"\n") + 1  # a line still being written waits for the next look
        self._log_read += complete
        lines = new[:complete].decode("utf-8", "replace").splitlines()
        return [line for line in lines if any(mark in line for mark in self.shout)]

    def start(self) -> None:
        if self._log_read == 0 and self.log_path is not None and self.log_path.exists():
            self._log_read = self.log_path.stat().st_size  # an earlier start's lines are old
        out = self.log_path.open("ab") if self.log_path else None
        env, fds = self.env, ()
        if self.secret is not None:
            variable, data = self.secret
            fds = (pipe_holding(data),)
            env = {**self.env, variable: str(fds[0])}
        try:
            self.proc = subprocess.Popen(
                self.args,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                stdin=subprocess.DEVNULL,
                pass_fds=fds,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads here
            )
        finally:
            for fd in fds:
                os.close(fd)
            if out:
                out.close()
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float) -> None:
        if self.proc is None:
            return
        kids = descendants(self.proc.pid)
        if self.proc.poll() is None:
            inside = inside_box(self.proc.pid) if self.boxed else None
            if inside is None:
                self.proc.terminate()
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(inside, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                kids = descendants(self.proc.pid) or kids
                self.proc.kill()
                self.proc.wait()
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Supervisor:
    """Keeps children running; restarts a dead one with a growing delay (at most 30 s)."""

    def __init__(self, say) -> None:  # type: ignore[no-untyped-def]
        self.children: list[Child] = []
        self.say = say

    def add(self, child: Child) -> Child:
        child.start()
        self.children.append(child)
        return child

    def check(self) -> None:
        now = time.monotonic()
        for child in self.children:
            for line in child.loud_lines():
                self.say(f"{child.name}: {line.strip()}")
            if child.alive:
                if now - child.started_at > 60:
                    child.restarts = 0  # it stayed up: forget old crashes
                continue
            if child.next_start == 0.0:
                assert child.proc is not None
                delay = min(2**child.restarts * 0.5, 30.0)
                self.say(
                    f"{child.name} exited with code {child.proc.returncode}; "
                    f"restarting in {delay:g} s"
                )
                child.next_start = now + delay
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                child.start()

    def stop_all(self, order: list[str], grace: float = 15.0) -> None:
        """Stop children whose name starts with each prefix in `order`, in that order."""
        for prefix in order:
            for child in self.children:
                if child.name.startswith(prefix):
                    child.stop(grace)
