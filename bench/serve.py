"""Archive serving: requests per second for one cached archive, pinflow against nginx.

The 500-file benchmark repo is pushed to a real `pinflow server` (one process, SQLite); its
archive is fetched once, so the server has it on disk. nginx (Debian's, one process, `sendfile
on`) serves that same file from a temporary config in the same run. `wrk` (2 threads,
16 connections, 5 s) loads each in turn, three rounds alternating so both see the same machine;
pinflow's requests carry a read token (authentication is part of what pinflow does per
request). Goal (issue 8): pinflow ≥ 0.5 × nginx requests/s.

Needs `wrk` and `nginx`: `apt-get install -y wrk nginx-light`.
Run: `.venv/bin/python -m bench.serve` (or `make bench`).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from bench._stats import Goal
from bench.fetch import REPO, build_repo, publish
from dagstore.archive import ArchiveCache
from dagstore.diskcache import DiskCache
from dagstore.settings import Settings
from tests.support.ports import free_port
from tests.support.server import ServerProcess, start_server

ROUNDS = 3
SECONDS = 5
CONNECTIONS = 16
GOAL = 0.5
NGINX_CONF = """
daemon off;
master_process off;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ application/gzip gz; }}
    server {{
        listen 127.0.0.1:{port};
        location = /archive.tar.gz {{ alias {archive}; }}
    }}
}}
"""


@dataclass
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    transfer: str


def tools() -> tuple[str, str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    wrk = shutil.which("wrk")
    if not wrk or not Path(nginx).exists():
        raise SystemExit("bench.serve needs wrk and nginx: apt-get install -y wrk nginx-light")
    return nginx, wrk


def start_nginx(nginx: str, tmp: Path, archive: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    conf = tmp / "nginx.conf"
    # One process, like the one `pinflow server` process it is compared with; as root, nginx
    # would serve as `nobody`, who cannot read the temporary folder.
    user = "user root root;" if os.geteuid() == 0 else ""
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, archive=archive, user=user))
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/archive.tar.gz"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    stop(proc)
    raise RuntimeError(f"nginx did not start: {(tmp / 'nginx-error.log').read_text()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()  # nginx: fast shutdown
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def main() -> list[Goal]:
    nginx, wrk = tools()
    pinflow_loads: list[Load] = []
    nginx_loads: list[Load] = []
    with tempfile.TemporaryDirectory(prefix="pinflow-bench-serve-") as tmp:
        git, _ = build_repo(Path(tmp) / "work")
        server = start_server(Path(tmp) / "home")
        proc = None
        try:
            sha, _, _, _ = publish(git, server)
            url, archive = cached_archive(server, sha)
            proc, nginx_url = start_nginx(nginx, Path(tmp), archive)
            auth = {"Authorization": f"Bearer {server.tokens['read']}"}
            for _ in range(ROUNDS):
                pinflow_loads.append(wrk_load(wrk, url, auth))
                nginx_loads.append(wrk_load(wrk, nginx_url, {}))
            size = archive.stat().st_size
        finally:
            if proc is not None:
                stop(proc)
            server.stop()
    table = Table(title=f"one cached archive ({size / 1024:,.0f} KiB), wrk -t2 -c{CONNECTIONS}")
    for column in ("server", "round", "requests/s", "p50 ms", "p99 ms", "transfer/s"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for name, loads in (("pinflow server", pinflow_loads), ("nginx", nginx_loads)):
        for i, load in enumerate(loads, 1):
            table.add_row(name, str(i), f"{load.requests_per_second:,.0f}", f"{load.p50_ms:.1f}",
                          f"{load.p99_ms:.1f}", load.transfer)  # fmt: skip
    Console(width=120).print(table)
    ours = statistics.median(x.requests_per_second for x in pinflow_loads)
    theirs = statistics.median(x.requests_per_second for x in nginx_loads)
    ratio = ours / theirs
    print(f"pinflow {ours:,.0f} req/s, nginx {theirs:,.0f} req/s (medians): {ratio:.2f}x")
    return [Goal("archive serving", "pinflow / nginx requests/s (medians)", f"{ratio:.2f}x",
                 f">= {GOAL:g}x", ratio >= GOAL)]  # fmt: skip


if __name__ == "__main__":
    main()
