"""Redis as a primary, a replica and three Sentinels (`redis-server --sentinel`) on loopback.

The Sentinels watch service `pinflow` and fail over one second after the primary stops
answering. `url` is the `redis+sentinel://` URL every pinflow process is given.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.support.ports import free_port
from tests.support.redis import redis_binary

SERVICE = "pinflow"
DOWN_AFTER_MS = 1000


class RedisNode:
    def __init__(self, folder: Path, name: str, replica_of: int | None = None) -> None:
        self.name = name
        self.dir = folder / name
        self.dir.mkdir()
        self.port = free_port()
        self.replica_of = replica_of
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """No persistence: a restart comes back empty."""
        args = [
            redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.dir),
        ]  # fmt: skip
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        log = (self.dir / "log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_ping(self.port)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class SentinelNode:
    def __init__(self, folder: Path, name: str, primary_port: int) -> None:
        self.dir = folder / name
        self.dir.mkdir()
        self.port = free_port()
        self.config = self.dir / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        self.config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.dir / "log").open("ab")
        self.proc = subprocess.Popen(
            [redis_binary(), str(self.config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_ping(self.port)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_ping(port: int, timeout: float = 10.0) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError):
            if client.ping():
                client.close()
                return
        time.sleep(0.05)
    raise RuntimeError(f"redis-server on port {port} did not start")


class SentinelRedis:
    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pinflow-sentinel-"))
        primary = RedisNode(self.base, "r1")
        self.nodes = [primary, RedisNode(self.base, "r2", replica_of=primary.port)]
        self.sentinels = [SentinelNode(self.base, f"s{i}", primary.port) for i in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelRedis:
        for node in self.nodes:
            node.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_until(lambda info: info["num-other-sentinels"] == 2 and info["num-slaves"] == 1)
        return self

    def wait_until(self, ready, timeout: float = 30.0) -> dict:
        """Until every Sentinel's view of the service satisfies `ready`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            views = []
            for sentinel in self.sentinels:
                with contextlib.suppress(redis.RedisError):
                    views.append(sentinel.client().sentinel_master(SERVICE))
            if len(views) == len(self.sentinels) and all(ready(v) for v in views):
                return views[0]
            time.sleep(0.1)
        raise RuntimeError(f"Sentinels never agreed: {views}")

    def primary_port(self) -> int:
        return int(self.sentinels[0].client().sentinel_get_master_addr_by_name(SERVICE)[1])

    def primary(self) -> RedisNode:
        port = self.primary_port()
        return next(n for n in self.nodes if n.port == port)

    def kill_primary(self) -> tuple[float, RedisNode]:
        """kill -9 of the primary; returns when, and the node (restart it as a replica)."""
        victim = self.primary()
        killed = time.time()
        victim.kill9()
        return killed, victim

    def wait_failover_from(self, old_port: int, timeout: float = 60.0) -> None:
        self.wait_until(lambda info: int(info["port"]) != old_port, timeout)

    def rejoin(self, node: RedisNode) -> None:
        """The killed node back, empty; the Sentinels make it a replica of the new primary."""
        node.replica_of = self.primary_port()
        node.start()

    def restart_primary_empty(self) -> float:
        """The primary restarted without persistence, at once (faster than the Sentinels'
        down-after: no failover, the replica resyncs to the empty primary)."""
        node = self.primary()
        restarted = time.time()
        node.kill9()
        node.replica_of = None
        node.start()
        return restarted

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes:
            node.kill9()
        shutil.rmtree(self.base, ignore_errors=True)

    cleanup = stop  # what tests.support.cluster.Cluster calls on its Redis
