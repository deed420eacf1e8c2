"""The git store in the database (issue 13) against a plain on-disk repository, in one run.

The same generated repository (500 files, ~2 MB; `bench/_repo.py`) is served three ways:
- by `pinflow server` on SQLite and on PostgreSQL: objects and refs in the database, the
  server's disk only a cache of the packs it read;
- by the same dulwich code and web stack from a plain bare repository on disk
  (`bench/_diskrepo.py`), the baseline; `git clone file://` is shown for scale.

Measured: `git clone --depth 1` (warm: the server has read the packs before; cold: its cache
was just deleted), `git fetch` of a one-line change, a cold archive build of the 500-file
commit (in process, `dagstore.git.archive.write_archive`, from disk against from the database
with an empty pack cache), the database bytes after 100 pushes of a one-line change against
the same history after `git gc`, and the server's peak RSS growth over a 50 MB push and a
clone of it (`VmHWM`, reset through /proc/PID/clear_refs).

Run: `.venv/bin/python -m bench.store` (or `make bench`). Needs PostgreSQL's binaries.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from dulwich.repo import Repo
from rich.console import Console
from rich.table import Table

from bench._stats import Goal, Measure, summary_cells, timed
from bench._stored import stored_bytes
from bench.fetch import build_repo
from dagstore.core.db import Database
from dagstore.git.archive import write_archive
from dagstore.git.diskcache import DiskCache
from dagstore.git.repo import RepoStorage
from tests.support.git import Git
from tests.support.pg import PostgresCluster, create_database, find_pg_bin
from tests.support.ports import free_port
from tests.support.server import ServerProcess, start_server

REPO = "storebench"
REPS = 7
PUSHES = 100
BIG_MB = 50
GOALS = {"clone": 1.5, "fetch": 1.5, "archive": 1.5, "storage": 4.0, "rss_mb": 200.0}


class DiskServer:
    """bench/_diskrepo.py as a process."""

    def __init__(self, path: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._diskrepo", str(path), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/info/refs?service=git-upload-pack", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the on-disk baseline server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/repo.git"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def clone_s(url: str, dest: Path, *args: str) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run(["git", "clone", "-q", *args, url, str(dest)], check=True, env=_env(dest))
    return time.perf_counter() - started


def _env(path: Path) -> dict[str, str]:
    from tests.support.git import git_env

    return git_env(path.parent)


def rss_peak_growth_mb(pid: int, action) -> float:
    """How far `action` pushed the process's peak RSS above its RSS before, in MiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS

    def status(field: str) -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
        raise RuntimeError(field)

    before = status("VmRSS:")
    action()
    return (status("VmHWM:") - before) / 1024


def table(title: str, measures: list[Measure]) -> None:
    out = Table(title=title)
    for column in ("operation", "n", "median ms", "p90 ms", "min ms", "max ms"):
        out.add_column(column, justify="right" if column != "operation" else "left")
    for m in measures:
        out.add_row(*summary_cells(m))
    Console(width=120).print(out)


def main() -> list[Goal]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise RuntimeError("bench.store needs PostgreSQL (apt-get install -y postgresql)")
    scratch = Path(tempfile.mkdtemp(prefix="pinflow-bench-store-"))
    pg = PostgresCluster(bin_dir)
    pg.start()
    servers: dict[str, ServerProcess] = {}
    disk = None
    try:
        work, _ = build_repo(scratch / "work")
        bare = scratch / "disk.git"
        subprocess.run(
            ["git", "clone", "-q", "--bare", str(work.path), str(bare)], check=True, env=work.env
        )
        disk = DiskServer(bare)
        servers["sqlite"] = start_server(scratch / "home-sqlite")
        pg_url = create_database(pg.url("postgres"), "storebench")
        servers["postgresql"] = start_server(scratch / "home-pg", pg_url)
        remotes = {"disk": str(bare)}
        for name, server in servers.items():
            server.create_repo(REPO)
            remotes[name] = server.git_url(REPO, server.tokens["push"])
            work.run("push", "-q", remotes[name], "main")
        urls = {"disk": disk.url} | {
            n: s.git_url(REPO, s.tokens["read"]) for n, s in servers.items()
        }
        return run(scratch, work, remotes, urls, servers, bare, pg_url)
    finally:
        if disk is not None:
            disk.stop()
        for server in servers.values():
            server.stop()
        pg.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def run(scratch, work, remotes, urls, servers, bare, pg_url) -> list[Goal]:
    # -- clone --depth 1, warm and cold -------------------------------------------------------
    clones = {name: Measure(f"clone --depth 1: {name}") for name in urls}
    cold = {name: Measure(f"clone --depth 1, cold cache: {name}") for name in servers}
    local = Measure("clone --depth 1: git, file:// (for scale)")
    for name in urls:  # one clone first: every server has read its packs
        clone_s(urls[name], scratch / "warmup", "--depth", "1")
    for _ in range(REPS):
        for name, url in urls.items():  # interleaved, so drift hits all alike
            clones[name].samples.append(clone_s(url, scratch / f"c-{name}", "--depth", "1"))
        for name, server in servers.items():
            shutil.rmtree(server.home / "cache", ignore_errors=True)
            cold[name].samples.append(clone_s(urls[name], scratch / f"k-{name}", "--depth", "1"))
        local.samples.append(clone_s(f"file://{bare}", scratch / "c-file", "--depth", "1"))
    table(
        "git clone --depth 1 of the 500-file repo",
        [*clones.values(), *cold.values(), local],
    )
    # -- fetch of a one-line change, then the rest of 100 pushes ------------------------------
    readers = {}
    for name, url in urls.items():
        dest = scratch / f"r-{name}"
        clone_s(url, dest)
        readers[name] = Git(dest)
    fetches = {name: Measure(f"git fetch, one-line change: {name}") for name in urls}
    work.env.pop("GIT_AUTHOR_DATE", None)
    work.env.pop("GIT_COMMITTER_DATE", None)
    path = next(p for p in sorted(work.path.rglob("*.py")) if ".git" not in p.parts)
    for i in range(PUSHES):
        path.write_text(path.read_text() + f"# change {i}\n")
        work.commit(f"change {i}")
        for remote in remotes.values():
            work.run("push", "-q", remote, "main")
        if i < REPS:
            for name, reader in readers.items():
                fetches[name].samples.append(timed(lambda r=reader: r.run("fetch", "-q")))
    table("git fetch after a one-line change", list(fetches.values()))
    # -- cold archive build -------------------------------------------------------------------
    sha = work.head()
    builds = {"disk": Measure("archive build, cold: disk repo")}
    with Repo(str(bare)) as repo:
        for _ in range(REPS):
            builds["disk"].samples.append(
                timed(lambda: write_archive(repo, repo[sha.encode()], io.BytesIO()))
            )
    for name, server in servers.items():
        builds[name] = Measure(f"archive build, cold pack cache: {name}")
        db = Database(server.database_url)
        try:
            for i in range(REPS):
                storage = RepoStorage(db, DiskCache(scratch / f"pc-{name}-{i}", 1 << 30))

                def build(storage=storage) -> None:
                    with storage.open(REPO) as repo:
                        write_archive(repo, repo[sha.encode()], io.BytesIO())

                builds[name].samples.append(timed(build))
        finally:
            db.dispose()
    table(
        f"archive of the 500-file commit, built cold ({PUSHES} pushes later)", list(builds.values())
    )
    # -- storage ------------------------------------------------------------------------------
    gc = scratch / "gc.git"
    subprocess.run(["git", "clone", "-q", "--bare", "--no-local", str(bare), str(gc)], check=True)
    subprocess.run(["git", "-C", str(gc), "gc", "-q"], check=True)
    gc_bytes = sum(p.stat().st_size for p in (gc / "objects").rglob("*") if p.is_file())
    stored = {name: stored_bytes(s.database_url, REPO) for name, s in servers.items()}
    print(
        f"after {PUSHES + 1} pushes: git gc {gc_bytes / 1024:,.0f} KiB; "
        + ", ".join(
            f"{name} database {b / 1024:,.0f} KiB ({b / gc_bytes:.2f}x)"
            for name, b in stored.items()
        )
    )
    # -- memory: a 50 MB push and a clone of it -----------------------------------------------
    rss = {}
    for name, server in servers.items():
        big = Git(scratch / f"big-{name}").init()
        big.write("big.bin", os.urandom(BIG_MB * 1024 * 1024))
        big.commit("big")
        server.create_repo(f"{REPO}big")
        url = server.git_url(f"{REPO}big", server.tokens["push"])
        assert server.proc is not None
        pushed = rss_peak_growth_mb(
            server.proc.pid, lambda url=url, big=big: big.run("push", "-q", url, "main")
        )
        cloned = rss_peak_growth_mb(
            server.proc.pid, lambda url=url, name=name: clone_s(url, scratch / f"bc-{name}")
        )
        rss[name] = max(pushed, cloned)
        print(
            f"{name}: {BIG_MB} MB push: peak RSS +{pushed:.0f} MiB; clone of it: +{cloned:.0f} MiB"
        )
    return goals(clones, fetches, builds, stored, gc_bytes, rss)


def goals(clones, fetches, builds, stored, gc_bytes, rss) -> list[Goal]:
    out = []
    for name in ("sqlite", "postgresql"):
        for what, measures in (("clone --depth 1", clones), ("fetch", fetches)):
            ratio = measures[name].median / measures["disk"].median
            key = "clone" if what.startswith("clone") else "fetch"
            out.append(
                Goal(
                    "git store",
                    f"{what}, {name} / disk (warm)",
                    f"{ratio:.2f}x",
                    f"<= {GOALS[key]}x",
                    ratio <= GOALS[key],
                )
            )
        ratio = builds[name].median / builds["disk"].median
        out.append(
            Goal(
                "git store",
                f"cold archive build, {name} / disk",
                f"{ratio:.2f}x",
                f"<= {GOALS['archive']}x",
                ratio <= GOALS["archive"],
            )
        )
        ratio = stored[name] / gc_bytes
        out.append(
            Goal(
                "git store",
                f"bytes after {PUSHES} pushes, {name} / git gc",
                f"{ratio:.2f}x",
                f"<= {GOALS['storage']}x",
                ratio <= GOALS["storage"],
            )
        )
        out.append(
            Goal(
                "git store",
                f"{BIG_MB} MB push + clone, {name}: peak RSS growth",
                f"{rss[name]:.0f} MiB",
                f"< {GOALS['rss_mb']:.0f} MiB",
                rss[name] < GOALS["rss_mb"],
            )
        )
    return out


if __name__ == "__main__":
    for goal in main():
        print(goal)
