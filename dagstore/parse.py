"""Parsing a version: which DAGs a commit defines, and which of its files are broken.

The DAG files are imported in a separate process (`dagstore.parse_child`) with a per-file
time limit and a memory limit, from the commit's archive unpacked by the same code workers
use. Whatever a DAG file does at import (print, sys.exit, loop forever, exhaust memory, kill
its process) ends as a recorded error for that file; the other files are still parsed.
"""

from __future__ import annotations

import json
import os
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

from dagstore.archive import ArchiveCache
from dagstore.loader import discover
from dagstore.metrics import PARSE_SECONDS, PARSED_FILES
from dagstore.sandbox import Sandbox
from dagstore.unpack import unpack_archive

KILL_GRACE = 5.0  # seconds past the child's own alarm before the parent kills it


@dataclass(frozen=True)
class FileError:
    file: str
    summary: str
    error: str


@dataclass
class ParseResult:
    sha: str
    dags: list[dict[str, Any]] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def dag_ids(self) -> list[str]:
        return [d["dag_id"] for d in self.dags]

    def feedback(self) -> str:
        """The line a pusher reads: what parsed, and each broken file's one-line error."""
        parts = []
        if self.dags:
            parts.append(f"{', '.join(self.dag_ids)} parsed at {self.sha[:7]}")
        else:
            parts.append(f"no DAGs found at {self.sha[:7]}")
        parts += [f"{e.file}: {e.summary}" for e in self.errors]
        return "pinflow: " + "; ".join(parts)


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
    records: dict[str, dict[str, Any]] = {}
    remaining = files
    with tempfile.TemporaryDirectory(prefix="pinflow-parse-") as scratch:
        limits.sandbox.give(Path(scratch))  # the child writes its results there
        while remaining:
            done, stuck = _run_child(root, sha, remaining, limits, Path(scratch))
            records.update(done)
            if stuck is not None:
                file, summary = stuck
                records[file] = {"file": file, "dags": [], "summary": summary, "error": summary}
            elif len(records) < len(files):  # the child ended without starting the rest
                for file in remaining:
                    records.setdefault(file, _not_parsed(file))
            remaining = [f for f in remaining if f not in records]
    result = _collect(sha, [records[f] for f in files])
    broken = {e.file for e in result.errors}
    PARSED_FILES.labels("error").inc(len(broken))
    PARSED_FILES.labels("ok").inc(len(files) - len(broken))
    return result


def _not_parsed(file: str) -> dict[str, Any]:
    summary = "not parsed: the parse process ended early"
    return {"file": file, "dags": [], "summary": summary, "error": summary}


def _collect(sha: str, records: list[dict[str, Any]]) -> ParseResult:
    """One definition per dag_id: a later file redefining it is an error of that file."""
    result = ParseResult(sha)
    defined_in: dict[str, str] = {}
    for record in records:
        if record.get("summary"):
            result.errors.append(FileError(record["file"], record["summary"], record["error"]))
            continue
        for dag in record["dags"]:
            first = defined_in.get(dag["dag_id"])
            if first is not None:
                message = f"DAG {dag['dag_id']!r} is already defined in {first}"
                result.errors.append(FileError(record["file"], message, message))
                continue
            defined_in[dag["dag_id"]] = record["file"]
            result.dags.append(dag | {"fileloc": record["file"]})
    return result


def _run_child(
    root: Path, sha: str, files: list[str], limits: ParseLimits, scratch: Path
) -> tuple[dict[str, dict[str, Any]], tuple[str, str] | None]:
    """Run one parse process; returns finished records and (file, why) if one never finished."""
    results = scratch / f"results-{time.monotonic_ns()}.jsonl"
    log = scratch / "parse.log"
    args, env = limits.sandbox.wrap(
        [
            sys.executable,
            "-P",
            "-m",
            "dagstore.parse_child",
            str(root),
            sha,
            str(results),
            str(limits.timeout),
            str(limits.memory_mb),
            *files,
        ],
        root,
        scratch,
    )
    with log.open("ab") as log_file:
        proc = subprocess.Popen(
            args,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    current: str | None = None
    started = time.monotonic()
    done: dict[str, dict[str, Any]] = {}
    killed = False
    offset = 0
    while True:
        exited = proc.poll() is not None
        offset, lines = _read_new_lines(results, offset)
        for record in lines:
            if "start" in record:
                current, started = record["start"], time.monotonic()
            else:
                done[record["file"]] = record
                current = None
        if exited:
            break
        if current is not None and time.monotonic() - started > limits.timeout + KILL_GRACE:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
            break
        time.sleep(0.01)
    if current is None:
        return done, None
    if killed:
        return done, (current, f"timed out: importing took longer than {limits.timeout:g} s")
    return done, (current, _death_reason(proc.returncode, limits))


def _death_reason(returncode: int, limits: ParseLimits) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return f"the parse process was killed by {name} while importing this file"
    return (
        f"the parse process exited with code {returncode} while importing this file "
        f"(os._exit, or more than {limits.memory_mb} MiB of memory?)"
    )


def _read_new_lines(path: Path, offset: int) -> tuple[int, list[dict[str, Any]]]:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset, []
    complete = data[: data.rfind(b"\n") + 1]
    records = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return offset + len(complete), records
