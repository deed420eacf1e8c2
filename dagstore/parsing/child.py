"""The process that imports a version's DAG files (run by `dagstore.parsing.parser`, never in
a server).

Usage: python -m dagstore.parsing.child ROOT SHA RESULTS_FD TIMEOUT MEMORY_MB FILE...

Writes one JSON line to the pipe RESULTS_FD when it starts a file and one when the file is
done, so the parent knows which file was running if this process hangs, dies or is killed.
A pipe, not a file: the parent never opens a path the box could have touched, and what it
reads is checked again there (`dagstore.parsing.results`): DAG code runs in this process and
can write to the pipe too. A file gets TIMEOUT seconds (SIGALRM); the whole process gets
MEMORY_MB of address space, CPU time for its files, a few processes and a cap on each file it writes
(`confine`). It runs in the parse sandbox (`dagstore.parsing.sandbox`).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

TRACEBACK_LINES = 400  # kept whole up to here (the API and `dags --errors --verbose` show it)
MAX_PROCESSES = 64  # of `nobody` (a root server's parse): a fork bomb stops there
MAX_OUTPUT_BYTES = 16 * 1024 * 1024  # any one file it writes (all of them: the box's /tmp)


class ParseTimeout(BaseException):
    """Raised in the DAG file's code when its import takes too long."""


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise ParseTimeout()


def describe(
    exc: BaseException, root: Path, rel: str, timeout: float, memory_mb: int
) -> tuple[str, str]:
    """(one-line summary, traceback) of the failure of DAG file `rel`, with the version
    folder's path taken out: both name files as the repository does (`dags/helpers.py`), not
    as the parse's scratch folder did."""
    if isinstance(exc, ParseTimeout):
        summary = f"timed out: importing took longer than {timeout:g} s"
    elif isinstance(exc, SystemExit):
        summary = f"SystemExit: the file called sys.exit({exc.code!r}) at import"
    elif isinstance(exc, MemoryError):
        summary = f"MemoryError: importing used more than the {memory_mb} MiB limit"
    elif isinstance(exc, SyntaxError):
        broken = repo_relative(exc.filename or rel, root)
        where = f"{broken}, " if broken != rel else ""  # a helper the DAG file imports
        summary = f"{type(exc).__name__}: {exc.msg} ({where}line {exc.lineno})"
    else:
        summary = f"{type(exc).__name__}: {exc}".strip()
    summary, text = (
        repo_relative(part, root)
        for part in (summary, "".join(traceback.format_exception(exc)))
    )
    lines = text.rstrip("\n").splitlines()
    if len(lines) > TRACEBACK_LINES:  # a recursion, say: its head and its end say enough
        lines = [*lines[:20], f"... {len(lines) - TRACEBACK_LINES} lines ...",
                 *lines[-(TRACEBACK_LINES - 20):]]  # fmt: skip
    return summary.splitlines()[0][:900] if summary else type(exc).__name__, "\n".join(lines)


def repo_relative(text: str, root: Path) -> str:
    """Paths inside the version folder, as the repository names them."""
    return text.replace(f"{root}/", "").replace(f"{root.resolve()}/", "")


def parse_files(
    root: Path, sha: str, files: list[str], out: TextIO, timeout: float, memory_mb: int
) -> None:
    from dagstore.parsing.loader import import_dag_file, put_version_on_path

    put_version_on_path(root)
    signal.signal(signal.SIGALRM, _on_alarm)
    for rel in files:
        _emit(out, {"start": rel})
        record: dict[str, Any] = {"file": rel, "dags": [], "error": None, "summary": None}
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                dags = import_dag_file(root, rel, sha)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            record["dags"] = [
                dag.to_structure() | {"structure_hash": dag.structure_hash()} for dag in dags
            ]
        except BaseException as exc:  # noqa: BLE001 - DAG code may raise anything, even exit
            record["summary"], record["error"] = describe(exc, root, rel, timeout, memory_mb)
        _emit(out, record)


def _emit(out: TextIO, record: dict[str, Any]) -> None:
    out.write(json.dumps(record, default=str) + "\n")
    out.flush()


def confine(timeout: float, files: int, memory_mb: int) -> None:
    """Before any DAG code: give up root (a root server's child becomes `nobody`, so the
    per-user process limit applies), then the limits: memory, CPU, processes, file size."""
    uid, gid = os.environ.get("PINFLOW_PARSE_UID"), os.environ.get("PINFLOW_PARSE_GID")
    limits = {
        resource.RLIMIT_AS: memory_mb * 1024 * 1024,
        resource.RLIMIT_CPU: int(timeout * max(files, 1)) + 5,
        resource.RLIMIT_FSIZE: MAX_OUTPUT_BYTES,
    }
    if uid is not None and gid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setgid(int(gid))
        os.setuid(int(uid))
        # Counted per user: meaningful for `nobody`, not for a server's own user, whose
        # threads count too (SECURITY.md: give a non-root server a per-user limit).
        limits[resource.RLIMIT_NPROC] = MAX_PROCESSES
    for kind, value in limits.items():
        resource.setrlimit(kind, (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # too much output: an OSError, not a kill


def main(argv: list[str]) -> None:
    root, sha, results_fd, timeout, memory_mb, *files = argv
    confine(float(timeout), len(files), int(memory_mb))
    fd = int(results_fd)
    os.set_inheritable(fd, False)  # not for programs a DAG file starts
    out = os.fdopen(fd, "w", encoding="utf-8")
    parse_files(Path(root), sha, files, out, float(timeout), int(memory_mb))
    with contextlib.suppress(OSError):  # a DAG file may have closed it: all was written
        out.close()
    # Not a normal exit: threads and atexit handlers a DAG file left would run (or wait)
    # here, after the last file, when the parent no longer times anything.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
