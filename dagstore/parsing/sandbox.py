"""The box pushed DAG code is imported in at parse time: it sees the version's files, Python
and its packages, read only, and nothing of the server.

Pushed code is untrusted input to the API server (DESIGN.md). The parse process runs under
bubblewrap (`bwrap`, Debian's `bubblewrap`) in new mount, PID, network, IPC and UTS
namespaces:
- its filesystem is an empty tmpfs with, read only, the system's `/usr` (and its `/lib`...
  links), the Python installation and virtualenv, pinflow's own packages, and the version's
  folder; a fresh `/proc` that shows only its own processes. Not there: the server's
  environment (the box starts empty), `PINFLOW_HOME` with other repos, caches and the SQLite
  file, `/etc`, home folders;
- the only place it can write is its own `/tmp`, a tmpfs of TMP_BYTES (the rest of its
  filesystem, `/dev` included, is remounted read only). Nothing of the server's disk is bound
  writable: the child hands its results back through a pipe (`dagstore.parsing.parser`), so the
  server never opens a path that code in the box could have replaced with a symlink;
- no network at all (not even the database's port on loopback: a new network namespace);
- when the parse ends, every process it started ends (PID namespace: a grandchild that calls
  setsid or double-forks included);
- when the server runs as root, the parse child gives up root for `nobody` before any DAG
  code runs, so per-user limits (processes) apply; otherwise a user namespace maps it.
Limits inside (`dagstore.parsing.child`): address space, CPU time, processes, file size
(output), on top of the parent's wall-clock limit per file.

Where bubblewrap cannot run (not installed; a container without namespaces), the server
refuses to parse and says why, unless `PINFLOW_PARSE_SANDBOX=off` (then it warns at start
and on every parse). There is no silent fallback.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

log = logging.getLogger("pinflow.sandbox")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
PACKAGES = ("dagstore", "pinflow")  # what the parse child and `from pinflow import DAG` import
TMP_BYTES = 64 * 1024 * 1024
OFF = "off"


class SandboxUnavailable(Exception):
    """Parsing is refused: the box cannot be built here (the message says why)."""


@dataclass(frozen=True)
class Sandbox:
    """How parse processes are boxed; `mode` is "bwrap" or "off"."""

    mode: str
    problem: str | None = None  # why the box cannot be used (then nothing is parsed)
    hidden: tuple[str, ...] = field(default=())  # server paths masked should a bind reach them

    @property
    def enabled(self) -> bool:
        return self.mode != OFF

    def check(self) -> None:
        if self.problem is not None:
            raise SandboxUnavailable(self.problem)
        if not self.enabled:
            log.warning("parsing pushed code WITHOUT a sandbox (PINFLOW_PARSE_SANDBOX=off)")

    def wrap(self, args: list[str], root: Path) -> tuple[list[str], dict[str, str]]:
        """The command that runs `args` (a python command line) boxed, and its environment.
        File descriptors passed to it (`pass_fds`) stay open inside the box."""
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if not self.enabled:
            inherited = {k: v for k, v in os.environ.items() if not k.startswith("PINFLOW_")}
            return args, inherited | env
        inside = env | _identity()  # bwrap's --clearenv: the child gets only these
        setenv = [a for key, value in inside.items() for a in ("--setenv", key, value)]
        return [*_bwrap_args(root, self.hidden), *setenv, "--", *args], env


def _bwrap_args(root: Path, hidden: tuple[str, ...]) -> list[str]:
    args = [
        shutil.which("bwrap") or "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--clearenv",
    ]
    if os.geteuid() != 0:
        args.append("--unshare-user")
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    # The one writable place: capped, and writable by `nobody` (a root server's child).
    args += ["--perms", "01777", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    for path in _python_dirs():
        args += ["--ro-bind", path, path]
    for path in hidden:
        if any(_under(path, bound) for bound in _python_dirs()):
            args += ["--tmpfs", path, "--remount-ro", path]  # a bound folder holds it: masked
    args += ["--ro-bind", str(root), str(root)]
    # bwrap makes the folders leading to a bind 0700: open them, or `nobody` cannot get
    # through to what is bound (they hold nothing else: they are the box's own).
    bound = [*SYSTEM_DIRS, *_python_dirs(), str(root)]
    created = sorted(
        {
            str(parent)
            for path in bound
            for parent in Path(path).parents
            if str(parent) not in ("/", "/tmp") and not any(_under(str(parent), b) for b in bound)
        }
    )
    for folder in created:
        args += ["--chmod", "0755", folder]
    # The box's root and /dev are tmpfs without a size; under a non-root server (a user
    # namespace) the child owns them: read only, or they would be a second, uncapped /tmp.
    args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", str(root)]
    return args


def _python_dirs() -> list[str]:
    """Python, the virtualenv, and pinflow's own packages (an editable install keeps them
    in the source tree, which must not be bound whole: it may hold PINFLOW_HOME)."""
    dirs = {sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs.update(spec.submodule_search_locations)
    real = {os.path.realpath(d) for d in dirs}
    return sorted(d for d in real if not any(_under(d, o) and d != o for o in real))


def _under(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _identity() -> dict[str, str]:
    """When the server is root, the child becomes `nobody` before any DAG code runs."""
    if os.geteuid() != 0:
        return {}
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return {"PINFLOW_PARSE_UID": "65534", "PINFLOW_PARSE_GID": "65534"}
    return {"PINFLOW_PARSE_UID": str(nobody.pw_uid), "PINFLOW_PARSE_GID": str(nobody.pw_gid)}


@dataclass
class SandboxProbe:
    """Decides once per process whether parsing is boxed, off, or refused."""

    setting: str = "on"
    hidden: tuple[str, ...] = ()

    @cached_property
    def sandbox(self) -> Sandbox:
        setting = (self.setting or "on").strip().lower()
        if setting == OFF:
            log.warning(
                "PINFLOW_PARSE_SANDBOX=off: pushed DAG code is parsed with the server's "
                "privileges and can read its files and reach the database"
            )
            return Sandbox(OFF)
        if setting not in ("on", "bwrap", "auto"):
            return Sandbox("bwrap", f"PINFLOW_PARSE_SANDBOX must be on or off, not {setting!r}")
        problem = _probe(self.hidden)
        if problem is not None:
            log.error("pushed DAG files will not be parsed: %s", problem)
        return Sandbox("bwrap", problem, self.hidden)


def box_problem() -> str | None:
    """Why pushed code cannot be parsed in the box on this machine, or None: asked by
    `pinflow up` before it starts its server (`pinflow.upmode`)."""
    return _probe(())


def _probe(hidden: tuple[str, ...]) -> str | None:
    """Run `python -c pass` in the box: None when it works, else why not."""
    if shutil.which("bwrap") is None:
        return (
            "the parse sandbox needs bubblewrap (`bwrap`), which is not installed: "
            "`apt-get install bubblewrap` (or set PINFLOW_PARSE_SANDBOX=off to parse "
            "pushed code without isolation)"
        )
    with tempfile.TemporaryDirectory(prefix="pinflow-probe-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        os.chmod(tmp, 0o755)
        os.chmod(root, 0o755)
        args, env = Sandbox("bwrap", None, hidden).wrap(
            [sys.executable, "-P", "-c", "import dagstore.parsing.child"], root
        )
        try:
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap could not start: {exc}"
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        return (
            "bubblewrap cannot build the parse sandbox here ("
            + (why[-1] if why else f"exit {done.returncode}")
            + "): namespaces may be unavailable (a container?); set PINFLOW_PARSE_SANDBOX=off "
            "to parse pushed code without isolation"
        )
    return None
