"""The box `pinflow up` runs each worker in, so that task code cannot read the home.

Under `pinflow up` one user runs everything on one machine: the API server, the scheduler,
Redis, and PINFLOW_HOME with the SQLite file and `up-tokens.json` (the admin, push and worker
tokens). A task runs as that same user, so unboxed it could read all of it and act as admin
(issue 25). Each worker (token agent, RQ worker, work horses) therefore runs under bubblewrap:

- the filesystem is read only, with PINFLOW_HOME (and a SQLite file kept outside it) hidden
  under an empty tmpfs, except the workers' version cache, bound back writable; `/tmp`, `/run`
  and `/dev` are the box's own (so no other program's sockets: tmux, ssh-agent, D-Bus,
  systemd, Docker); PINFLOW_UP_WRITABLE names more folders tasks may write to;
- a PID namespace with a fresh `/proc`: no process outside the box can be seen, so neither
  its environment nor its memory nor its root folder can be read;
- no capabilities and no new privileges: the tasks of a root `pinflow up` run as root without
  any capability, so they cannot remount, unmount or look past what the box shows; a new
  session, so there is no terminal to push keystrokes into;
- the network is shared: tasks reach the API server (with their try credential only), Redis'
  port (without its password: `runner.agentconn`) and the outside world.

The worker's token and Redis URL come through a pipe, never its environment: bubblewrap's
own process is inside the box and its environment can be read there.

Where the box cannot be built (bubblewrap not installed, a container without namespaces) or
PINFLOW_UP_SANDBOX=off, workers run unboxed and `pinflow up` says so in its banner: a downgrade
announced, never a failure to start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dagstore.core.settings import Settings

SYSTEM_SCRATCH = ("/tmp", "/var/tmp", "/run", "/dev/shm")  # the box's own, empty


@dataclass(frozen=True)
class WorkerBox:
    """How `pinflow up` starts its workers: `problem` is None when boxed."""

    hidden: tuple[str, ...]  # masked with an empty tmpfs
    writable: tuple[str, ...]  # bound back, read-write
    problem: str | None = None

    @property
    def boxed(self) -> bool:
        return self.problem is None

    def wrap(self, args: list[str]) -> list[str]:
        """`args` run in the box (unchanged when there is none)."""
        return [*bwrap_args(self.hidden, self.writable), "--", *args] if self.boxed else args

    def describe(self) -> str:
        """One line for the banner."""
        if self.boxed:
            return (
                "boxed (bubblewrap): task code cannot read PINFLOW_HOME, the database, the "
                "tokens or other processes"
            )
        return (
            f"NOT BOXED: task code can read PINFLOW_HOME (the admin token, the database): "
            f"{self.problem}"
        )


def worker_box(settings: Settings, cache: Path) -> WorkerBox:
    """The box for this `pinflow up`, tried once at start."""
    hidden = [str(settings.home)]
    if settings.database_url.startswith("sqlite:///"):
        folder = str(Path(settings.database_url.removeprefix("sqlite:///")).parent)
        if not _under(folder, str(settings.home)):
            hidden.append(folder)
    extra = [p for p in os.environ.get("PINFLOW_UP_WRITABLE", "").split(os.pathsep) if p]
    writable = (str(cache), *(str(Path(p).resolve()) for p in extra))
    box = WorkerBox(tuple(hidden), writable)
    setting = (os.environ.get("PINFLOW_UP_SANDBOX") or "on").strip().lower()
    if setting == "off":
        return WorkerBox(box.hidden, box.writable, "PINFLOW_UP_SANDBOX=off")
    if setting != "on":
        return WorkerBox(box.hidden, box.writable, f"PINFLOW_UP_SANDBOX={setting!r} (on or off)")
    return WorkerBox(box.hidden, box.writable, _probe(box))


def bwrap_args(hidden: tuple[str, ...], writable: tuple[str, ...]) -> list[str]:
    args = [
        shutil.which("bwrap") or "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-cgroup-try",
        "--cap-drop",
        "ALL",
    ]
    if os.geteuid() != 0:
        args.append("--unshare-user")
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for path in SYSTEM_SCRATCH:
        if os.path.isdir(path) and not os.path.islink(path):
            args += ["--tmpfs", path]
    for path in hidden:
        args += ["--tmpfs", path]
    for path in writable:
        Path(path).mkdir(parents=True, exist_ok=True)
        args += ["--bind", path, path]
    cwd = os.getcwd()
    covered = any(_under(cwd, p) for p in (*hidden, *SYSTEM_SCRATCH))
    args += ["--chdir", "/" if covered else cwd]
    return args


def _probe(box: WorkerBox) -> str | None:
    """Start Python with pinflow's worker in the box: None when it works, else why not."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (`bwrap`) is not installed: `apt-get install bubblewrap`"
    code = Path(__file__).resolve().parents[1]  # pinflow's source tree or site-packages
    for needed in (sys.prefix, sys.base_prefix, str(code)):
        if any(_under(needed, h) for h in box.hidden):
            return f"{needed} is inside a folder the box hides ({', '.join(box.hidden)})"
    args = box.wrap([sys.executable, "-c", "import runner.worker"])
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap could not start ({exc})"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        return (
            "bubblewrap cannot build the box here ("
            + (why[-1] if why else f"exit {done.returncode}")
            + "): user namespaces may be unavailable (a container?)"
        )
    return None


def _under(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")
