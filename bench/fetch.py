"""Version fetch: how long a worker takes to get one commit's files, against `git clone`.

Workers fetch `REPO@sha` as a pre-built .tar.gz from the store instead of cloning (DESIGN.md,
"How a DAG travels", step 5). This benchmark checks that choice on a realistic repo: 500 files,
about 2 MB, pushed to a real `pinflow server` (SQLite, temp PINFLOW_HOME). It times

- the first build of an archive on the server (one request),
- a cold client fetch: download, sha256 check against the server's digest header, unpack,
- the worker's own cold path, `VersionCache.ensure` (WorkerClient, staging folder, rename,
  eviction check) into a fresh cache,
- `tar -xzf` of the same archive bytes (what the unpack is worth against GNU tar),
- `git clone --depth 1` of the same commit from the same server (the baseline),
- warm GETs of the cached archive (bytes only) and `curl` of it (client overhead reference),
- the warm task start: `VersionCache.ensure` + `using` on the installed version (a hit),

and prints medians with p90/min/max, the ratio `git clone / cold fetch` as a ratio of medians
and as the median of per-rep ratios (goal: at least 3x), and the warm start in µs (goal:
at most 1 ms). Cold fetch, worker fetch, tar and clone run in every rep, in rotating order,
so they share the machine's conditions, and CPU time (user / kernel) is kept for each.

On ext4 without a journal (this machine's disk), creating a file scans past every free inode
of its group deleted in the last minute, six while the inode table is not yet written back
(`recently_deleted` in fs/ext4/ialloc.c): right after a big `rm -rf` on the same disk
(another test run, or this benchmark's previous run cleaning up) tar, git and the unpack all
spend most of their time in the kernel. The CPU line shows when.

Run: `.venv/bin/python -m bench.fetch` (or `make bench` for every benchmark).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import io
import os
import resource
import shutil
import statistics
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
from bench._stats import Goal, Measure, kib, ms, repeat, summary_cells, timed
from bench._stored import stored_bytes
from dagstore.core.protocol import ARCHIVE_DIGEST_HEADER as DIGEST_HEADER
from runner.cache import VersionCache
from runner.client import WorkerClient
from tests.support.git import Git, git_env
from tests.support.server import ServerProcess, start_server

REPO = "bench"
GOAL_RATIO = 3.0
GOAL_WARM_MS = 1.0

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


# -- the clients --------------------------------------------------------------------------


def choose_unpacker() -> tuple[str, Unpacker]:
    """The store's own safe unpacker when present (what workers run), else tarfile's."""
    if importlib.util.find_spec("dagstore.git.unpack") is not None:
        module = importlib.import_module("dagstore.git.unpack")
        if hasattr(module, "unpack_archive"):
            return "dagstore.git.unpack.unpack_archive", module.unpack_archive
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


@dataclass
class Sample:
    """One timed run: wall seconds, and CPU seconds in user space and in the kernel."""

    wall: float
    user: float = 0.0
    system: float = 0.0


def cpu(who: int) -> tuple[float, float]:
    usage = resource.getrusage(who)
    return usage.ru_utime, usage.ru_stime


def cold_fetch(
    client: httpx.Client, url: str, dest: Path, unpack: Unpacker
) -> tuple[float, Sample]:
    """What a worker does for a sha it has never seen; returns (download+verify s, unpack)."""
    started = time.perf_counter()
    data, expected = download(client, url)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise RuntimeError(f"archive digest mismatch: header {expected}, body {actual}")
    user, system = cpu(resource.RUSAGE_SELF)
    fetched = time.perf_counter()
    unpack(io.BytesIO(data), dest)
    wall = time.perf_counter() - fetched
    user_after, system_after = cpu(resource.RUSAGE_SELF)
    return fetched - started, Sample(wall, user_after - user, system_after - system)


def in_child(
    command: list[str], stdin: bytes | None = None, env: dict[str, str] | None = None
) -> Sample:
    """Run a command; its wall time and the CPU of it and every process it waited for."""
    user, system = cpu(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, input=stdin, env=env, check=True, capture_output=True, timeout=60)
    wall = time.perf_counter() - started
    user_after, system_after = cpu(resource.RUSAGE_CHILDREN)
    return Sample(wall, user_after - user, system_after - system)


def tar_unpack(data: bytes, dest: Path) -> Sample:
    """GNU tar on the same bytes, from stdin (no file to read): the reference unpacker."""
    dest.mkdir()
    return in_child(["tar", "-xzf", "-", "-C", str(dest)], stdin=data)


def worker_fetch(client: WorkerClient, root: Path, sha: str) -> tuple[float, Path]:
    """The worker's cold path itself: `VersionCache.ensure` into an empty cache."""
    started = time.perf_counter()
    fetched = VersionCache(root, client).ensure(REPO, sha)
    seconds = time.perf_counter() - started
    if fetched.hit:
        raise RuntimeError(f"{root} already held {sha}: not a cold fetch")
    return seconds, fetched.path


def git_clone(url: str, dest: Path, home: Path) -> Sample:
    """`git clone --depth 1`, the real binary, with no user or system git config."""
    command = ["git", "clone", "-q", "--depth", "1", "--branch", "main", url, str(dest)]
    return in_child(command, env=git_env(home))


def curl_fetch(url: str, token: str) -> None:
    subprocess.run(
        ["curl", "-s", "--fail", "-o", "/dev/null", "-H", f"Authorization: Bearer {token}", url],
        check=True,
        timeout=60,
    )


def count_files(root: Path) -> int:
    """Files of the version: not git's, not the cache's markers (`.pinflow-ready`, ...)."""
    return sum(
        1
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts and not p.name.startswith(".pinflow-")
    )


def filesystem_of(path: Path) -> str:
    """The type and device of the mount holding `path`, e.g. "ext4 on /dev/vda"."""
    best, found = "", "unknown"
    resolved = os.path.realpath(path)
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in mounts:
        device, point, kind = line.split()[:3]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, found = point, f"{kind} on {device} (mounted at {point})"
    return found


# -- measuring ----------------------------------------------------------------------------


COLD = "cold client fetch"
UNPACK = "  of which unpack"
WORKER = "worker cold fetch (VersionCache)"
TAR = "tar -xzf (same bytes)"
CLONE = "git clone --depth 1"


@dataclass
class Facts:
    files: int
    tree_bytes: int
    archive_bytes: int
    store_bytes: int
    unpacker: str
    push_remote: str
    server_log: str  # warnings and errors the server logged during the run
    scratch: str = ""  # where unpacks and clones land, and its filesystem


@dataclass
class Report:
    facts: Facts
    measures: list[Measure]
    cpu: dict[str, list[Sample]]  # per operation, every rep's wall and CPU seconds
    warm: Measure  # the warm task start (ensure + using on a hit), seconds

    def get(self, name: str) -> Measure:
        return next(m for m in self.measures if m.name == name)

    def over(self, slower: str, faster: str) -> float:
        """Ratio of medians."""
        return self.get(slower).median / self.get(faster).median

    def per_pair(self, slower: str, faster: str) -> float:
        """Median of the ratios within each rep (both ran back to back)."""
        pairs = zip(self.get(slower).samples, self.get(faster).samples, strict=True)
        return statistics.median(s / f for s, f in pairs)

    @property
    def ratio(self) -> float:
        return self.over(CLONE, COLD)

    @property
    def pair_ratio(self) -> float:
        return self.per_pair(CLONE, COLD)


def check_files(dest: Path, what: str) -> None:
    """A fast result is worthless if files are missing: count them (outside the timing)."""
    found = count_files(dest)
    if found != FILE_COUNT:
        raise RuntimeError(f"{what} gave {found} files in {dest}, not {FILE_COUNT}")


@dataclass
class Sources:
    """What each operation of a rep fetches from."""

    client: httpx.Client
    url: str
    clone_url: str
    worker: WorkerClient
    sha: str
    archive: bytes
    unpack: Unpacker


def measure_alternating(
    src: Sources, scratch: Path, reps: int
) -> tuple[list[Measure], dict[str, list[Sample]]]:
    """Cold fetch, worker fetch, tar and `git clone` N times each, into fresh folders.

    Every rep runs all four, the order rotating from rep to rep, so they share the machine's
    conditions (a shared host is noisy) and none is always first. Folders are deleted only
    at the end, so no rep pays for the previous one's clean-up.
    """
    home = scratch / "git-home"
    home.mkdir(exist_ok=True)
    fetches: list[float] = []
    samples: dict[str, list[Sample]] = {UNPACK: [], WORKER: [], TAR: [], CLONE: []}

    def cold(i: int) -> None:
        dest = scratch / f"cold-{i}"
        fetch, unpacked = cold_fetch(src.client, src.url, dest, src.unpack)
        fetches.append(fetch)
        samples[UNPACK].append(unpacked)
        check_files(dest, "cold fetch")

    def worker(i: int) -> None:
        seconds, path = worker_fetch(src.worker, scratch / f"cache-{i}", src.sha)
        samples[WORKER].append(Sample(seconds))
        check_files(path, "VersionCache.ensure")

    def tar(i: int) -> None:
        samples[TAR].append(tar_unpack(src.archive, scratch / f"tar-{i}"))
        check_files(scratch / f"tar-{i}", "tar -xzf")

    def clone(i: int) -> None:
        samples[CLONE].append(git_clone(src.clone_url, scratch / f"clone-{i}", home))
        check_files(scratch / f"clone-{i}", "git clone")

    steps = [cold, worker, tar, clone]
    for i in range(reps):
        for step in steps[i % 4 :] + steps[: i % 4]:
            step(i)
    unpacks = [s.wall for s in samples[UNPACK]]
    measures = [
        Measure(
            COLD,
            [a + b for a, b in zip(fetches, unpacks, strict=True)],
            "download + sha256 + unpack",
        ),
        Measure("  of which download + sha256", fetches),
        Measure(UNPACK, unpacks, "dagstore.git.unpack.unpack_archive"),
        Measure(WORKER, [s.wall for s in samples[WORKER]], "ensure(): + staging, rename, evict"),
        Measure(TAR, [s.wall for s in samples[TAR]], "GNU tar from stdin, incl. its exec"),
        Measure(CLONE, [s.wall for s in samples[CLONE]], "same commit, same server, fresh folder"),
    ]
    return measures, samples


class CountingClient(WorkerClient):
    """A real WorkerClient that counts archive downloads: a cache hit must make none."""

    downloads = 0

    def archive(self, repo: str, sha: str) -> tuple[bytes, str]:
        self.downloads += 1
        return super().archive(repo, sha)


def measure_warm_start(server: ServerProcess, sha: str, root: Path, reps: int) -> Measure:
    """What a task start costs on a cache hit: `ensure` (a stat) + `using` (lock, touch).

    The version is installed by a real cold `ensure` first; the timed loop is exactly what
    runner/job.py runs before a task's code, and must not download anything.
    """
    client = CountingClient(server.url, server.tokens["worker"])
    try:
        cache = VersionCache(root, client)
        cache.ensure(REPO, sha)
        samples = []
        for _ in range(reps):
            started = time.perf_counter()
            fetched = cache.ensure(REPO, sha)
            with cache.using(REPO, sha):
                samples.append(time.perf_counter() - started)
            if not fetched.hit:
                raise RuntimeError("warm start: the installed version was not a hit")
        if client.downloads != 1:
            raise RuntimeError(f"warm start: {client.downloads} downloads, expected 1")
    finally:
        client.close()
    return Measure("warm task start (ensure + using)", samples, "cache hit + version hold")


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


def run_benchmark(scratch: Path, reps: int, warm_reps: int, start_reps: int) -> Report:
    """Everything between a started server and its stop: push, then every measurement."""
    git, tree_bytes = build_repo(scratch / "work")
    server = start_server(scratch / "home")
    try:
        sha, copy_sha, measures, remote = publish(git, server)
        token = server.tokens["read"]
        base = f"{server.url}/api/v1/repos/{REPO}/archive"
        url = f"{base}/{sha}.tar.gz"
        name, unpack = choose_unpacker()
        worker = WorkerClient(server.url, server.tokens["worker"])
        try:
            with server.api("read") as client:
                first_main = timed(lambda: download(client, url))
                first_build = timed(lambda: download(client, f"{base}/{copy_sha}.tar.gz"))
                archive = download(client, url)[0]
                clone_url = server.git_url(REPO, token)
                sources = Sources(client, url, clone_url, worker, sha, archive, unpack)
                fetches, cpu_samples = measure_alternating(sources, scratch, reps)
                warm = measure_warm(client, url, warm_reps)
        finally:
            worker.close()
        start = measure_warm_start(server, sha, scratch / "warm-cache", start_reps)
        measures += [
            Measure("first GET after push", [first_main], "archive built by the push's parse"),
            Measure("first build (first GET)", [first_build], "unparsed commit, same tree"),
            *fetches,
            warm,
        ]
        if shutil.which("curl"):
            measures.append(measure_curl(url, token, reps))
        store_bytes = stored_bytes(server.database_url, REPO)
    finally:
        server.stop()
    log = server.server_log().strip()
    where = f"{scratch.parent}: {filesystem_of(scratch)}"
    facts = Facts(FILE_COUNT, tree_bytes, len(archive), store_bytes, name, remote, log, where)
    return Report(facts, measures, cpu_samples, start)


# -- output -------------------------------------------------------------------------------


def rows(report: Report) -> list[list[str]]:
    """Table rows: operation, n, median, p90, min, max (ms), note."""
    return [[*summary_cells(m), m.note] for m in report.measures]


HEADERS = ["operation", "n", "median ms", "p90 ms", "min ms", "max ms", "note"]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def p99(measure: Measure) -> float:
    if len(measure.samples) < 2:
        return measure.samples[0]
    return statistics.quantiles(measure.samples, n=100, method="inclusive")[98]


def warm_line(report: Report) -> str:
    w = report.warm
    return (
        f"{w.name}, {len(w.samples)} times: median {us(w.median)} µs, p90 {us(w.p90)} µs, "
        f"p99 {us(p99(w))} µs, max {us(max(w.samples))} µs (no download on a hit)"
    )


def ratio_lines(report: Report) -> list[str]:
    both = "(ratio of medians; median of per-rep ratios)"
    return [
        f"git clone / cold fetch: {report.ratio:.1f}x; {report.pair_ratio:.1f}x {both}",
        f"git clone / worker cold fetch: {report.over(CLONE, WORKER):.1f}x; "
        f"{report.per_pair(CLONE, WORKER):.1f}x",
        f"unpack / tar -xzf: {report.over(UNPACK, TAR):.2f}; {report.per_pair(UNPACK, TAR):.2f}",
    ]


def cpu_line(report: Report) -> str:
    """Median CPU per rep: user space / kernel; a kernel share near the wall time means the
    filesystem (inode allocation, see the module docstring) is the cost, not the code."""
    parts = []
    for name, label in ((UNPACK, "unpack"), (TAR, "tar -xzf"), (CLONE, "git clone")):
        samples = report.cpu[name]
        user = statistics.median(s.user for s in samples)
        system = statistics.median(s.system for s in samples)
        parts.append(f"{label} {ms(user)} / {ms(system)}")
    return "CPU per rep, median ms user / kernel: " + "; ".join(parts) + " (incl. its processes)"


def warm_met(report: Report) -> bool:
    return report.warm.median * 1000 <= GOAL_WARM_MS


def verdict(report: Report) -> str:
    met = "met" if report.ratio >= GOAL_RATIO else "NOT met"
    warm = "met" if warm_met(report) else "NOT met"
    return (
        f"git clone / cold fetch = {report.ratio:.1f}x (medians), {report.pair_ratio:.1f}x "
        f"(per rep); goal >= {GOAL_RATIO:.0f}x: {met}. Warm task start = "
        f"{us(report.warm.median)} µs (median); goal <= {GOAL_WARM_MS:g} ms: {warm}"
    )


def fact_lines(report: Report) -> list[str]:
    f = report.facts
    return [
        f"repo: {f.files} files, {kib(f.tree_bytes)} of file contents; "
        f"store repo in the database {kib(f.store_bytes)}",
        f"archive: {kib(f.archive_bytes)} (.tar.gz)",
        f"unpacker: {f.unpacker}",
        f"scratch folder (clones and unpacks land here): {f.scratch}",
        f"server log (level warning): {len(f.server_log.splitlines())} lines",
        *ratio_lines(report),
        cpu_line(report),
        warm_line(report),
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
            f"{report.ratio:.1f}x (per rep {report.pair_ratio:.1f}x)",
            f">= {GOAL_RATIO:.0f}x",
            report.ratio >= GOAL_RATIO,
        ),
        Goal(
            "version fetch",
            "warm task start: cache hit + version hold, median",
            f"{report.warm.median * 1000:.3f} ms (p99 {p99(report.warm) * 1000:.3f} ms)",
            f"<= {GOAL_WARM_MS:g} ms",
            warm_met(report),
        ),
    ]


def main(argv: Sequence[str] = ()) -> list[Goal]:
    parser = argparse.ArgumentParser(prog="python -m bench.fetch", description=DESCRIPTION)
    parser.add_argument("--reps", type=int, default=15, help="repetitions of cold fetch and clone")
    parser.add_argument("--warm-reps", type=int, default=50, help="repetitions of the warm GET")
    parser.add_argument(
        "--start-reps", type=int, default=1000, help="repetitions of the warm task start"
    )
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = parser.parse_args(list(argv))
    console = Console()
    if console.width < 120:  # piped output: keep the table's rows on one line each
        console = Console(width=120)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pinflow-bench-fetch-") as scratch:
        report = run_benchmark(Path(scratch), args.reps, args.warm_reps, args.start_reps)
    print_rich(report, console)
    console.print(f"total benchmark time: {time.perf_counter() - started:.1f} s")
    if args.markdown:
        print(markdown(report))
    return goals(report)


if __name__ == "__main__":
    main(sys.argv[1:])
