"""Parsing a version: which DAGs a commit defines, and which of its files are broken.

The DAG files are imported in a separate process (`dagstore.parsing.child`) with a per-file
time limit and a memory limit, from the commit's archive unpacked by the same code workers
use. Whatever a DAG file does at import (print, sys.exit, loop forever, exhaust memory, kill
its process) ends as a recorded error for that file; the other files are still parsed.

The child hands its results back through a pipe it inherits, never through a file: the
server opens no path that code in the box could have touched (a symlink left there would
make the server write wherever it points). What comes through the pipe is the pusher's to
write, so it is bounded as it is read (MAX_RECORD_BYTES a line) and checked record by record
(`dagstore.parsing.results`) before anything is kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dulwich.repo import Repo

from dagstore.core.metrics import PARSE_SECONDS, PARSED_FILES
from dagstore.core.terminal import printable
from dagstore.git.archive import ArchiveCache
from dagstore.git.unpack import unpack_archive
from dagstore.parsing.loader import discover
from dagstore.parsing.results import FileError, check_file
from dagstore.parsing.sandbox import Sandbox

KILL_GRACE = 5.0  # seconds past the child's own alarm before the parent kills it
MAX_RECORD_BYTES = 32 * 1024 * 1024  # one line from the child: one file's DAGs, or its error
POLL = 0.1  # seconds between looks at the child when its pipe is quiet


@dataclass
class ParseResult:
    sha: str
    dags: list[dict[str, Any]] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def dag_ids(self) -> list[str]:
        return [d["dag_id"] for d in self.dags]

    @property
    def warnings(self) -> list[str]:
        """What was accepted but is likely a mistake: a DAG with no tasks never does anything."""
        return [f"DAG {d['dag_id']!r} has no tasks" for d in self.dags if not d.get("tasks")]

    def feedback(self) -> str:
        """The line a pusher reads: what parsed, and each broken file's one-line error."""
        parts = []
        if self.dags:
            parts.append(f"{', '.join(self.dag_ids)} parsed at {self.sha[:7]}")
        else:
            parts.append(f"no DAGs found at {self.sha[:7]}")
        parts += [f"{e.file}: {e.summary}" for e in self.errors]
        parts += [f"warning: {w}" for w in self.warnings]
        return printable("pinflow: " + "; ".join(parts))  # file names are the pusher's too


@dataclass(frozen=True)
class ParseLimits:
    timeout: float = 30.0
    memory_mb: int = 1024
    sandbox: Sandbox = Sandbox("off")


def parse_commit(
    repo: Repo, repo_name: str, sha: str, archives: ArchiveCache, limits: ParseLimits
) -> ParseResult:
    """Parse one commit of a store repo from its (cached) archive, in the sandbox.

    Raises SandboxUnavailable when the sandbox cannot be built (nothing is parsed then)."""
    limits.sandbox.check()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"pinflow-parse-{sha[:12]}-"))
    os.chmod(workdir, 0o755)  # the boxed child (`nobody` under a root server) reads below it
    try:
        root = workdir / "version"
        with archives.opened(repo_name, sha, lambda: repo) as (_archive, f):
            unpack_archive(f, root)
        result = parse_version(root, sha, limits)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result.seconds = time.monotonic() - started
    PARSE_SECONDS.observe(result.seconds)
    return result


def parse_version(root: Path, sha: str, limits: ParseLimits) -> ParseResult:
    files = discover(root)
    records: dict[str, Any] = {}
    remaining = files
    while remaining:
        done, stuck = _run_child(root, sha, remaining, limits)
        records.update(done)
        if stuck is not None:
            file, summary = stuck
            records[file] = _failed(file, summary)
        elif len(records) < len(files):  # the child ended without starting the rest
            for file in remaining:
                records.setdefault(file, _failed(file, NOT_PARSED))
        remaining = [f for f in remaining if f not in records]
    result = _collect(sha, files, records)
    broken = {e.file for e in result.errors}
    PARSED_FILES.labels("error").inc(len(broken))
    PARSED_FILES.labels("ok").inc(len(files) - len(broken))
    return result


NOT_PARSED = "not parsed: the parse process ended early"


def _failed(file: str, summary: str) -> dict[str, Any]:
    return {"file": file, "dags": [], "summary": summary, "error": summary}


def _collect(sha: str, files: list[str], records: dict[str, Any]) -> ParseResult:
    """Each file's record checked; one definition per dag_id: a later file redefining it is
    an error of that file."""
    result = ParseResult(sha)
    defined_in: dict[str, str] = {}
    for file in files:
        dags, error = check_file(file, records.get(file))
        if error is not None:
            result.errors.append(error)
            continue
        for dag in dags:
            first = defined_in.get(dag["dag_id"])
            if first is not None:
                message = f"DAG {dag['dag_id']!r} is already defined in {first}"
                result.errors.append(FileError(file, message, message))
                continue
            defined_in[dag["dag_id"]] = file
            result.dags.append(dag)
    return result


def _run_child(
    root: Path, sha: str, files: list[str], limits: ParseLimits
) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """Run one parse process; returns finished records and (file, why) if one never finished."""
    read_end, write_end = os.pipe()
    try:
        args, env = limits.sandbox.wrap(
            [
                sys.executable,
                "-P",
                "-m",
                "dagstore.parsing.child",
                str(root),
                sha,
                str(write_end),
                str(limits.timeout),
                str(limits.memory_mb),
                *files,
            ],
            root,
        )
        proc = subprocess.Popen(
            args,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # what DAG code prints is of no use to the store
            stderr=subprocess.DEVNULL,
            pass_fds=(write_end,),
            start_new_session=True,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    with proc, Results(read_end) as results:
        return _watch(proc, results, files, limits)


def _watch(
    proc: subprocess.Popen[bytes], results: Results, files: list[str], limits: ParseLimits
) -> tuple[dict[str, Any], tuple[str, str] | None]:
    """Follow the child's records until it exits; kill it when a file (or the wait between
    two) takes longer than the timeout allows. Records naming files it was not given are
    dropped: it cannot speak for other files, or blame one twice."""
    wanted = set(files)
    current: str | None = None
    since = time.monotonic()  # of the child's last sign of progress
    done: dict[str, Any] = {}
    while True:
        exited = proc.poll() is not None
        left = since + limits.timeout + KILL_GRACE - time.monotonic()
        try:
            records = results.read(0 if exited else max(0.0, min(POLL, left)))
        except RecordTooLarge:
            _kill(proc)
            why = f"its parse result is larger than {MAX_RECORD_BYTES >> 20} MiB"
            return done, ((current, why) if current is not None else None)
        for record in records:
            start, file = record.get("start"), record.get("file")
            if isinstance(start, str) and start in wanted and start not in done:
                current, since = start, time.monotonic()
            elif isinstance(file, str) and file in wanted:
                done[file] = record
                if file == current:
                    current = None
                since = time.monotonic()
        if exited:
            break
        if results.ended:  # nothing more can come: wait for the exit, not for the pipe
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, min(POLL, left)))
        if time.monotonic() - since > limits.timeout + KILL_GRACE:
            _kill(proc)
            if current is None:
                return done, None  # idle between files: the rest is not parsed
            return done, (current, f"timed out: importing took longer than {limits.timeout:g} s")
    if current is None:
        return done, None
    return done, (current, _death_reason(proc.returncode, limits))


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _death_reason(returncode: int, limits: ParseLimits) -> str:
    if limits.sandbox.enabled and 128 < returncode < 128 + signal.NSIG:
        # bwrap reports its child's death by signal N as exit code 128+N (as a shell does)
        name = _signal_name(returncode - 128)
        return (
            f"the parse process was killed by {name} (or exited with code {returncode}) "
            "while importing this file"
        )
    if returncode < 0:
        name = _signal_name(-returncode)
        return f"the parse process was killed by {name} while importing this file"
    return (
        f"the parse process exited with code {returncode} while importing this file "
        f"(os._exit, or more than {limits.memory_mb} MiB of memory?)"
    )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal, say: no name
        return f"signal {number}"


class RecordTooLarge(Exception):
    """The child wrote a line longer than MAX_RECORD_BYTES (it is not kept in memory)."""


class Results:
    """The read end of the child's results pipe: JSON lines, each one a dict, as they come.
    Lines that are not JSON objects are dropped (only DAG code writes those)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.partial = bytearray()
        self.ended = False
        self.selector = selectors.DefaultSelector()
        self.selector.register(fd, selectors.EVENT_READ)

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.selector.close()
        os.close(self.fd)

    def read(self, wait: float) -> list[dict[str, Any]]:
        """The records that arrive within `wait` seconds (all that are there when 0)."""
        if self.ended or not self.selector.select(wait):
            return []
        records: list[dict[str, Any]] = []
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return records
            if not chunk:
                self.ended = True
                return records
            records += self._lines(chunk)

    def _lines(self, chunk: bytes) -> list[dict[str, Any]]:
        lines, start = [], 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._grow(end - start)
            lines.append(bytes(self.partial) + chunk[start:end])
            self.partial.clear()
            start = end + 1
        self._grow(len(chunk) - start)
        self.partial += chunk[start:]
        return [r for r in map(_decode, lines) if r is not None]

    def _grow(self, more: int) -> None:
        if len(self.partial) + more > MAX_RECORD_BYTES:
            raise RecordTooLarge()


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
