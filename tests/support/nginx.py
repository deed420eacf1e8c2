"""Debian's nginx as a real subprocess on a free loopback port, and deploy/nginx.conf made to
run there: what the deploy tests and bench/serve.py both start."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CONF = ROOT / "deploy/nginx.conf"
# One process, like the one pinflow process it is compared with in bench/serve.py; as root,
# nginx would serve as `nobody`, who cannot read the temporary folder.
MAIN_CONF = """
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
{http}
}}
"""


def nginx_binary() -> str | None:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    return found if Path(found).exists() else None


def deploy_conf(upstreams: list[str], port: int, cache_root: Path) -> str:
    """deploy/nginx.conf, unchanged but for where it listens, its upstream servers and its
    cache folders; raises if the file no longer has the shape this relies on."""
    cache_root.mkdir(parents=True, exist_ok=True)  # nginx makes only the last folder
    text = DEPLOY_CONF.read_text()
    servers = "".join(f"    server {address};\n" for address in upstreams)
    text, n_upstream = re.subn(
        r"(upstream pinflow_api \{\n)(?:\s*server [^\n]*\n)+", rf"\g<1>{servers}", text
    )
    text, n_listen = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", text)
    text, n_cache = re.subn(r"/var/cache/nginx/", f"{cache_root}/", text)
    if (n_upstream, n_listen) != (1, 1) or n_cache < 2:
        raise RuntimeError(f"{DEPLOY_CONF} changed shape: {n_upstream, n_listen, n_cache}")
    return text


class Nginx:
    """nginx serving `http` (the body of an `http {}` block) from folder `tmp`."""

    def __init__(self, tmp: Path, http: str = "", port: int | None = None) -> None:
        self.tmp = tmp
        self.port = port or free_port()
        self.http = http
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, probe: str = "/", timeout: float = 10) -> Nginx:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed: apt-get install -y nginx-light")
        self.tmp.mkdir(parents=True, exist_ok=True)
        conf = self.tmp / "nginx.conf"
        user = "user root root;" if os.geteuid() == 0 else ""
        conf.write_text(MAIN_CONF.format(tmp=self.tmp, user=user, http=self.http))
        with (self.tmp / "nginx-stderr.log").open("ab") as stderr:
            self.proc = subprocess.Popen(
                [binary, "-c", str(conf), "-p", str(self.tmp)], stderr=stderr
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                httpx.get(self.url + probe, timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start: {self.error_log()}")

    def error_log(self) -> str:
        logs = (self.tmp / "nginx-stderr.log", self.tmp / "nginx-error.log")
        return "".join(log.read_text() for log in logs if log.exists())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # nginx: fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
