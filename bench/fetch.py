"""Version fetch: how long a worker takes to get one commit's files, against `git clone`.

Workers fetch `REPO@sha` as a pre-built .tar.gz from the store instead of cloning (DESIGN.md,
"How a DAG travels", step 5). This benchmark checks that choice on a realistic repo: 500 files,
about 2 MB, pushed to a real `pinflow server` (SQLite, temp PINFLOW_HOME). It times

- the first build of an archive on the server (one request),
- a cold client fetch: download, sha256 check against the server's digest header, unpack,
- `git clone --depth 1` of the same commit from the same server (the baseline),
- warm GETs of the cached archive (bytes only) and `curl` of it (client overhead reference),

and prints medians with p90/min/max and the ratio `git clone / cold fetch` (goal: at least 3x).

Run: `.venv/bin/python -m bench.fetch` (or `make bench` for every benchmark).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import httpx
from rich.console import Console
from rich.table import Table

from bench._repo import COMMIT_DATE, FILE_COUNT, repo_files
from bench._stats import Goal, Measure, kib, ms, repeat, timed
from dagstore.protocol import ARCHIVE_DIGEST_HEADER as DIGEST_HEADER
from tests.support.git import Git, git_env
from tests.support.server import ServerProcess, start_server

REPO = "bench"
GOAL_RATIO = 3.0

DESCRIPTION = "Version fetch: archive download + unpack against git clone --depth 1."
Unpacker = Callable[[BinaryIO, Path], None]


# -- the repository -----------------------------------------------------------------------


def build_repo(work: Path) -> tuple[Git, int]:
    """A work tree with one commit of the generated files; returns it and the bytes written."""
    git = Git(work).init("main")
    git.env.update(GIT_AUTHOR_DATE=COMMIT_DATE, GIT_COMMITTER_DATE=COMMIT_DATE)
    files = repo_files()
    for path, content in files.items():
        git.write(path, content)
    git.commit("bench: generated repo")
    size = sum(len(c.encode() if isinstance(c, str) else c) for c in files.values())
    return git, size


# -- the server ---------------------------------------------------------------------------


def push(git: Git, server: ServerProcess, refspec: str) -> tuple[float, str]:
    """`git push` one refspec; returns the seconds it took and the server's `remote:` lines."""
    started = time.perf_counter()
    result = git.run("push", server.git_url(REPO, server.tokens["push"]), refspec)
    seconds = time.perf_counter() - started
    remote = [line for line in result.stderr.splitlines() if line.startswith("remote:")]
    return seconds, "\n".join(remote)


def unparsed_copy(git: Git) -> str:
    """A second commit with the same tree, never parsed by the server.

    The server parses each pushed branch tip from its archive, so the archive of `main` is
    already built when the push returns. Pushing this copy to a tag (tags are not parsed)
    leaves an archive that only the first GET builds: the honest "first build".
    """
    return git.run("commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", "bench: copy").stdout.strip()


def disk_usage(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- the clients --------------------------------------------------------------------------


def choose_unpacker() -> tuple[str, Unpacker]:
    """The store's own safe unpacker when present (what workers run), else tarfile's."""
    if importlib.util.find_spec("dagstore.unpack") is not None:
        module = importlib.import_module("dagstore.unpack")
        if hasattr(module, "unpack_archive"):
            return "dagstore.unpack.unpack_archive", module.unpack_archive
    return "tarfile (filter='data')", tarfile_unpack


def tarfile_unpack(fileobj: BinaryIO, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=fileobj, mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


def download(client: httpx.Client, url: str) -> tuple[bytes, str]:
    """The archive's bytes and the digest the server vouches for."""
    response = client.get(url)
    response.raise_for_status()
    return response.content, response.headers[DIGEST_HEADER]


def cold_fetch(client: httpx.Client, url: str, dest: Path, unpack: Unpacker) -> tuple[float, float]:
    """What a worker does for a sha it has never seen; returns (download+verify, unpack) s."""
    started = time.perf_counter()
    data, expected = download(client, url)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise RuntimeError(f"archive digest mismatch: header {expected}, body {actual}")
    fetched = time.perf_counter()
    unpack(io.BytesIO(data), dest)
    return fetched - started, time.perf_counter() - fetched


def git_clone(url: str, dest: Path, home: Path) -> None:
    """`git clone --depth 1`, the real binary, with no user or system git config."""
    subprocess.run(
        ["git", "clone", "-q", "--depth", "1", "--branch", "main", url, str(dest)],
        env=git_env(home),
        check=True,
        capture_output=True,
        timeout=60,
    )


def curl_fetch(url: str, token: str) -> None:
    subprocess.run(
        ["curl", "-s", "--fail", "-o", "/dev/null", "-H", f"Authorization: Bearer {token}", url],
        check=True,
        timeout=60,
    )


def count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file() and ".git" not in p.parts)


# -- measuring ----------------------------------------------------------------------------


@dataclass
class Facts:
    files: int
    tree_bytes: int
    archive_bytes: int
    store_bytes: int
    unpacker: str
    push_remote: str
    server_log: str  # warnings and errors the server logged during the run


@dataclass
class Report:
    facts: Facts
    measures: list[Measure]

    def get(self, name: str) -> Measure:
        return next(m for m in self.measures if m.name == name)

    @property
    def ratio(self) -> float:
        return self.get("git clone --depth 1").median / self.get("cold client fetch").median


def check_files(dest: Path, what: str) -> None:
    """A fast result is worthless if files are missing: count them (outside the timing)."""
    found = count_files(dest)
    if found != FILE_COUNT:
        raise RuntimeError(f"{what} gave {found} files in {dest}, not {FILE_COUNT}")


def measure_cold_and_clone(
    client: httpx.Client, url: str, clone_url: str, scratch: Path, unpack: Unpacker, reps: int
) -> list[Measure]:
    """Cold fetch and `git clone` N times each, alternating, into fresh folders.

    Alternating puts both under the same machine conditions (a shared host is noisy), and
    the folders are deleted only at the end, so no rep pays for the previous one's clean-up.
    """
    home = scratch / "git-home"
    home.mkdir(exist_ok=True)
    parts: list[tuple[float, float]] = []
    clones: list[float] = []
    for i in range(reps):
        dest = scratch / f"cold-{i}"
        parts.append(cold_fetch(client, url, dest, unpack))
        check_files(dest, "cold fetch")
        dest = scratch / f"clone-{i}"
        clones.append(timed(lambda dest=dest: git_clone(clone_url, dest, home)))
        check_files(dest, "git clone")
    return [
        Measure("cold client fetch", [a + b for a, b in parts], "download + sha256 + unpack"),
        Measure("  of which download + sha256", [a for a, _ in parts]),
        Measure("  of which unpack", [b for _, b in parts]),
        Measure("git clone --depth 1", clones, "same commit, same server, fresh folder"),
    ]


def measure_warm(client: httpx.Client, url: str, reps: int) -> Measure:
    def run(_: int) -> float:
        return timed(lambda: download(client, url))

    return repeat("warm GET (bytes only)", reps, run, "cached archive, keep-alive client")


def measure_curl(url: str, token: str, reps: int) -> Measure:
    def run(_: int) -> float:
        return timed(lambda: curl_fetch(url, token))

    return repeat("curl -s -o /dev/null", reps, run, "new process + connection each time")


def publish(git: Git, server: ServerProcess) -> tuple[str, str, list[Measure], str]:
    """Create the repo and push `main` plus an unparsed copy of it to a tag.

    Returns (main's sha, the copy's sha, the push timings, the server's `remote:` lines).
    """
    server.create_repo(REPO)
    push_s, remote = push(git, server, "main")
    sha, copy_sha = git.head(), unparsed_copy(git)
    copy_push_s, _ = push(git, server, f"{copy_sha}:refs/tags/bench-build")
    pushes = [
        Measure("git push (incl. server parse)", [push_s], "500 files, new repo"),
        Measure("git push of a tag (no parse)", [copy_push_s], "same tree, new commit"),
    ]
    return sha, copy_sha, pushes, remote


def run_benchmark(scratch: Path, reps: int, warm_reps: int) -> Report:
    """Everything between a started server and its stop: push, then every measurement."""
    git, tree_bytes = build_repo(scratch / "work")
    server = start_server(scratch / "home")
    try:
        sha, copy_sha, measures, remote = publish(git, server)
        token = server.tokens["read"]
        base = f"{server.url}/api/v1/repos/{REPO}/archive"
        url = f"{base}/{sha}.tar.gz"
        name, unpack = choose_unpacker()
        with server.api("read") as client:
            first_main = timed(lambda: download(client, url))
            first_build = timed(lambda: download(client, f"{base}/{copy_sha}.tar.gz"))
            archive_bytes = len(download(client, url)[0])
            clone_url = server.git_url(REPO, token)
            fetches = measure_cold_and_clone(client, url, clone_url, scratch, unpack, reps)
            warm = measure_warm(client, url, warm_reps)
        measures += [
            Measure("first GET after push", [first_main], "archive built by the push's parse"),
            Measure("first build (first GET)", [first_build], "unparsed commit, same tree"),
            *fetches,
            warm,
        ]
        if shutil.which("curl"):
            measures.append(measure_curl(url, token, reps))
        store_bytes = disk_usage(server.home / "repos" / f"{REPO}.git")
    finally:
        server.stop()
    log = server.server_log().strip()
    facts = Facts(FILE_COUNT, tree_bytes, archive_bytes, store_bytes, name, remote, log)
    return Report(facts, measures)


# -- output -------------------------------------------------------------------------------


def rows(report: Report) -> list[list[str]]:
    """Table rows: operation, n, median, p90, min, max (ms), note."""
    return [
        [
            m.name,
            str(len(m.samples)),
            ms(m.median),
            ms(m.p90),
            ms(min(m.samples)),
            ms(max(m.samples)),
            m.note,
        ]
        for m in report.measures
    ]


HEADERS = ["operation", "n", "median ms", "p90 ms", "min ms", "max ms", "note"]


def verdict(report: Report) -> str:
    met = "met" if report.ratio >= GOAL_RATIO else "NOT met"
    return (
        f"git clone / cold fetch = {report.ratio:.1f}x (medians); goal >= {GOAL_RATIO:.0f}x: {met}"
    )


def fact_lines(report: Report) -> list[str]:
    f = report.facts
    return [
        f"repo: {f.files} files, {kib(f.tree_bytes)} of file contents; "
        f"store repo on disk {kib(f.store_bytes)}",
        f"archive: {kib(f.archive_bytes)} (.tar.gz)",
        f"unpacker: {f.unpacker}",
        f"scratch folder (clones and unpacks land here): {tempfile.gettempdir()}",
        f"server log (level warning): {len(f.server_log.splitlines())} lines",
    ]


def print_rich(report: Report, console: Console) -> None:
    table = Table(title="Version fetch (bench/fetch.py)")
    for header in HEADERS:
        table.add_column(header, justify="right" if header.endswith(("ms", "n")) else "left")
    for row in rows(report):
        table.add_row(*row)
    console.print(table)
    for line in fact_lines(report):
        console.print(line)
    if report.facts.push_remote:
        console.print(report.facts.push_remote, markup=False)
    if report.facts.server_log:
        console.print(report.facts.server_log[-3000:], markup=False, style="red")
    console.print(verdict(report), style="bold")


def markdown(report: Report) -> str:
    """The same figures as a Markdown table, for BENCHMARKS.md."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(report)]
    lines += ["", *(f"- {line}" for line in fact_lines(report)), "", f"**{verdict(report)}**"]
    return "\n".join(lines)


def goals(report: Report) -> list[Goal]:
    return [
        Goal(
            "version fetch",
            "git clone --depth 1 / cold fetch (medians)",
            f"{report.ratio:.1f}x",
            f">= {GOAL_RATIO:.0f}x",
            report.ratio >= GOAL_RATIO,
        )
    ]


def main(argv: Sequence[str] = ()) -> list[Goal]:
    parser = argparse.ArgumentParser(prog="python -m bench.fetch", description=DESCRIPTION)
    parser.add_argument("--reps", type=int, default=15, help="repetitions of cold fetch and clone")
    parser.add_argument("--warm-reps", type=int, default=50, help="repetitions of the warm GET")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(list(argv))
    console = Console()
    if console.width < 120:  # piped output: keep the table's rows on one line each
        console = Console(width=120)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pinflow-bench-fetch-") as scratch:
        report = run_benchmark(Path(scratch), args.reps, args.warm_reps)
    print_rich(report, console)
    console.print(f"total benchmark time: {time.perf_counter() - started:.1f} s")
    if args.markdown:
        print(markdown(report))
    return goals(report)


if __name__ == "__main__":
    main(sys.argv[1:])
