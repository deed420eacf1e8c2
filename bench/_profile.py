"""Where the time goes: sample running processes with py-spy and sum the samples by category.

py-spy attaches to a running process from outside (no change to the code measured) and,
with `--subprocesses`, follows RQ's forked work horses too. Each sample is a stack; a sample
counts for the category that claims its innermost frame (see `categorize`), so
the table reads "x% of the CPU samples of these processes were spent in fork / fetch /
import / HTTP / DB ...". Sampling needs ptrace rights (root, or `kernel.yama.ptrace_scope`
0); without them the benchmark still prints its figures, and says why there is no profile.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Sampler:
    """`py-spy record` on each named process (and its children) until `stop()`."""

    folder: Path
    rate: int = 200
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    error: str = ""
    # e.g. ("--gil",): only the thread holding the GIL, so a many-threaded server's idle
    # threads drop out and the samples add up to its Python CPU time.
    options: tuple[str, ...] = ()

    def start(self, pids: dict[str, int]) -> Sampler:
        binary = py_spy()
        if binary is None:
            self.error = "py-spy not installed (pip install py-spy)"
            return self
        for name, pid in pids.items():
            out = self.folder / f"{name}.raw"
            self.procs[name] = subprocess.Popen(
                [binary, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                 "--rate", str(self.rate), "--format", "raw", "--output", str(out),
                 *self.options],
                stdout=subprocess.DEVNULL,
                stderr=(self.folder / f"{name}.err").open("wb"),
            )  # fmt: skip
        return self

    def stop(self) -> dict[str, Path]:
        """Stop sampling (py-spy writes its file on SIGINT); the files that were written."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        written = {}
        for name, proc in self.procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out = self.folder / f"{name}.raw"
            if out.exists() and out.stat().st_size:
                written[name] = out
            elif not self.error:
                err = (self.folder / f"{name}.err").read_text(errors="replace").strip()
                self.error = f"py-spy on {name}: {err.splitlines()[-1] if err else 'no output'}"
        return written


def _own_and_reaped(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / ticks


def _children(pid: int) -> list[int]:
    try:
        listed = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(child) for child in listed]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and all its descendants, live ones included,
    from /proc. `pinflow worker` is a token agent whose child is the RQ worker (issue 14), so
    the horses an RQ worker has reaped count in the RQ worker's figure, not the agent's: the
    whole tree has to be walked, or a worker's cost looks like 2 ms per task."""
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        try:
            total += _own_and_reaped(current)
        except OSError:
            continue  # exited meanwhile: its time is in its parent's reaped figure
        stack += _children(current)
    return total


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) format: `frame;frame;frame count` per line."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def categorize(
    stacks: list[tuple[list[str], int]], categories: list[tuple[str, tuple[str, ...]]]
) -> collections.Counter[str]:
    """Samples per category, decided by the innermost frame that some category claims.

    Innermost first, because a work horse's every stack passes through RQ's `fork_work_horse`
    (the horse is forked there): what the horse was doing is the deepest frame we know.
    Within one frame the categories are tried in the order given.
    """
    counts: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        counts[_category(frames, categories)] += count
    return counts


# Innermost frames of threads that wait rather than work: py-spy's idle detection misses
# these (an event loop in epoll, a thread pool worker on its queue, RQ's parent in wait4).
IDLE = ("Runner.run (", "Condition.wait", "WorkerThread.run (", "select (", "wait_for_horse (")
WAITING = "waiting (not CPU)"


def _category(frames: list[str], categories: list[tuple[str, tuple[str, ...]]]) -> str:
    if any(marker in frames[-1] for marker in IDLE):
        return WAITING
    for frame in reversed(frames):
        for name, markers in categories:
            if any(marker in frame for marker in markers):
                return name
    return "other"


def top_frames(stacks: list[tuple[list[str], int]], limit: int = 12) -> list[tuple[str, int]]:
    """Functions by inclusive samples (each counted once per stack), the usual profile view."""
    counts: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        for name in {_function(frame) for frame in frames}:
            counts[name] += count
    return counts.most_common(limit)


def _function(frame: str) -> str:
    """`func (/long/path/pkg/mod.py:123)` → `func (pkg/mod.py)`: one row per function."""
    func, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    return f"{func} ({'/'.join(path.split('/')[-2:])})"


def table(title: str, counts: collections.Counter[str], seconds_per_sample: float) -> Table:
    counts = collections.Counter({k: v for k, v in counts.items() if not k.endswith(WAITING)})
    total = sum(counts.values()) or 1
    out = Table(title=title)
    for column in ("where", "samples", "share", "CPU s"):
        out.add_column(column, justify="left" if column == "where" else "right")
    for name, count in counts.most_common():
        out.add_row(
            name, str(count), f"{100 * count / total:.1f}%", f"{count * seconds_per_sample:.2f}"
        )
    return out
