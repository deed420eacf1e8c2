"""Archive serving: requests per second for one cached archive, pinflow against nginx.

The 500-file benchmark repo is pushed to a real `pinflow server` (one process, SQLite); its
archive is fetched once, so the server has it on disk and in memory. In the same run, `wrk`
(2 threads, 16 connections, 5 s) loads, three rounds alternating so all see the same machine:

- `pinflow server` (one process) and `pinflow server --workers 2` (same home and database);
- Debian's nginx (one process, `sendfile on`) serving that same file: the reference;
- the shipped deploy/nginx.conf (one nginx process) in front of the one-process server, with
  the archive in nginx's cache and every request checked by `auth_request`.

Requests to pinflow and through deploy/nginx.conf carry a read token (authorization is part
of what they do per request). Goals (issue 17): pinflow alone >= 0.5x nginx, deploy/nginx.conf
>= 0.9x nginx; the machine has 2 cores and wrk takes CPU, so one process is compared with one.

Needs `wrk` and `nginx`: `apt-get install -y wrk nginx-light`.
Run: `.venv/bin/python -m bench.serve` (or `make bench`).
"""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from bench._stats import Goal
from bench.fetch import REPO, build_repo, publish
from dagstore.core.settings import Settings
from dagstore.git.archive import ArchiveCache
from dagstore.git.diskcache import DiskCache
from tests.support.nginx import Nginx, deploy_conf, nginx_binary
from tests.support.server import ServerProcess, start_server

ROUNDS = 3
SECONDS = 5
CONNECTIONS = 16
GOAL_ALONE = 0.5
GOAL_DEPLOY = 0.9
PLAIN = """
server {{
    listen 127.0.0.1:{port};
    location = /archive.tar.gz {{ alias {archive}; }}
}}
"""


@dataclass
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    transfer: str


def tools() -> str:
    wrk = shutil.which("wrk")
    if not wrk or nginx_binary() is None:
        raise SystemExit("bench.serve needs wrk and nginx: apt-get install -y wrk nginx-light")
    return wrk


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk_load(wrk: str, url: str, headers: dict[str, str]) -> Load:
    args = [wrk, "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency", url]
    for name, value in headers.items():
        args[1:1] = ["-H", f"{name}: {value}"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.MULTILINE))

    def parse(key: str) -> float:
        number, unit = re.match(r"([\d.]+)(\w+)", latency[key]).groups()  # type: ignore[union-attr]
        return _ms(number, unit)

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    transfer = re.search(r"Transfer/sec:\s+(\S+)", out).group(1)  # type: ignore[union-attr]
    return Load(rps, parse("50"), parse("99"), transfer)


def cached_archive(server: ServerProcess, sha: str) -> tuple[str, Path]:
    url = f"{server.url}/api/v1/repos/{REPO}/archive/{sha}.tar.gz"
    response = httpx.get(url, headers={"Authorization": f"Bearer {server.tokens['read']}"})
    response.raise_for_status()
    disk = DiskCache(Settings.load(home=server.home).server_cache_dir, 0)
    path = ArchiveCache(disk).path(REPO, sha)
    if not path.is_file() or path.read_bytes() != response.content:
        raise RuntimeError(f"the server's cached archive of {sha} is not at {path}")
    return url, path


@dataclass
class Contender:
    name: str
    url: str
    headers: dict[str, str]
    loads: list[Load]

    @property
    def median(self) -> float:
        return statistics.median(x.requests_per_second for x in self.loads)


def main() -> list[Goal]:
    wrk = tools()
    with tempfile.TemporaryDirectory(prefix="pinflow-bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        git, _ = build_repo(tmp / "work")
        server = start_server(tmp / "home")
        more = ServerProcess(server.home, server.database_url, extra_args=("--workers", "2"))
        started: list[Nginx | ServerProcess] = [server, more]
        try:
            sha, _, _, _ = publish(git, server)
            url, archive = cached_archive(server, sha)
            more.start()
            plain = Nginx(tmp / "plain")
            plain.http = PLAIN.format(port=plain.port, archive=archive)
            started.append(plain.start("/archive.tar.gz"))
            deploy = Nginx(tmp / "deploy")
            deploy.http = deploy_conf([f"127.0.0.1:{server.port}"], deploy.port, tmp / "cache")
            started.append(deploy.start("/healthz"))
            auth = {"Authorization": f"Bearer {server.tokens['read']}"}
            path = url.removeprefix(server.url)
            # Warm: in both processes' memory (new connections land on either), in nginx's cache.
            for base in [more.url] * 8 + [deploy.url] * 2:
                httpx.get(base + path, headers=auth).raise_for_status()
            contenders = [
                Contender("pinflow server", url, auth, []),
                Contender("pinflow server --workers 2", more.url + path, auth, []),
                Contender("nginx (the file)", f"{plain.url}/archive.tar.gz", {}, []),
                Contender("deploy/nginx.conf", deploy.url + path, auth, []),
            ]
            for _ in range(ROUNDS):
                for contender in contenders:
                    contender.loads.append(wrk_load(wrk, contender.url, contender.headers))
            size = archive.stat().st_size
        finally:
            for proc in reversed(started):
                proc.stop()
    alone, workers, nginx, deployed = contenders
    report(contenders, size, nginx.median)
    return [
        Goal("archive serving", "pinflow server / nginx requests/s (medians)",
             f"{alone.median / nginx.median:.2f}x", f">= {GOAL_ALONE:g}x",
             alone.median / nginx.median >= GOAL_ALONE, before="0.28x"),
        Goal("archive serving", "deploy/nginx.conf / nginx requests/s (medians)",
             f"{deployed.median / nginx.median:.2f}x", f">= {GOAL_DEPLOY:g}x",
             deployed.median / nginx.median >= GOAL_DEPLOY),
    ]  # fmt: skip


def report(contenders: list[Contender], size: int, reference: float) -> None:
    table = Table(title=f"one cached archive ({size / 1024:,.0f} KiB), wrk -t2 -c{CONNECTIONS}")
    for column in ("server", "round", "requests/s", "p50 ms", "p99 ms", "transfer/s"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for contender in contenders:
        for i, load in enumerate(contender.loads, 1):
            table.add_row(contender.name, str(i), f"{load.requests_per_second:,.0f}",
                          f"{load.p50_ms:.1f}", f"{load.p99_ms:.1f}", load.transfer)  # fmt: skip
    Console(width=120).print(table)
    for contender in contenders:
        print(f"{contender.name}: {contender.median:,.0f} req/s (median), "
              f"{contender.median / reference:.2f}x nginx")  # fmt: skip


if __name__ == "__main__":
    main()
