"""PostgreSQL as a primary with a synchronous hot standby, from the installed binaries.

`initdb` makes the primary; `pg_basebackup -R` clones it into a standby that streams from it;
the primary runs with `synchronous_standby_names` so a commit is acknowledged only once the
standby has it (nothing acknowledged is lost when the primary dies). `pg_ctl promote` is the
failover a manager (Patroni, say) would do. Clients use libpq's multi-host URL with
`target_session_attrs=read-write`, so they find whichever node is primary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.support.pg import find_pg_bin, run_pg
from tests.support.ports import free_port

COMMON = "-c listen_addresses=127.0.0.1 -c max_connections=300"
COMMON += " -c wal_level=replica -c max_wal_senders=10 -c hot_standby=on"
# fsync off for tests: a kill -9 of PostgreSQL loses nothing the OS has (only a machine crash
# would). Benchmarks keep it on (`durable=True`), as production does.
FAST = " -c fsync=off"


class PgNode:
    def __init__(self, owner: ReplicatedPostgres, name: str) -> None:
        self.owner = owner
        self.name = name
        self.data = owner.base / name
        self.port = free_port()

    @property
    def options(self) -> str:
        fast = "" if self.owner.durable else FAST
        return f"-p {self.port} -k {self.owner.base} {COMMON}{fast}"

    def start(self, extra: str = "") -> None:
        self.owner.run(
            "pg_ctl", "-D", str(self.data), "-o", f"{self.options} {extra}",
            "-l", str(self.owner.base / f"{self.name}.log"), "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self.owner.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill9(self) -> None:
        """The machine died: the postmaster and every backend at once."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        from pinflow.supervise import descendants

        for victim in [pid, *descendants(pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"


class ReplicatedPostgres:
    """A primary and a synchronous standby; `url()` is the multi-host URL of both. With
    `replicated=False`, the primary alone and a plain URL (the setup without a standby)."""

    def __init__(
        self, bin_dir: Path | None = None, replicated: bool = True, durable: bool = False
    ) -> None:
        found = bin_dir or find_pg_bin()
        if found is None:
            raise RuntimeError("PostgreSQL binaries not found")
        self.bin_dir = found
        self.base = Path(tempfile.mkdtemp(prefix="pinflow-pgha-"))
        self.as_root = os.geteuid() == 0
        self.replicated, self.durable = replicated, durable
        self.nodes = [PgNode(self, "a"), PgNode(self, "b")][: 2 if replicated else 1]
        self.primary, self.standby = self.nodes[0], self.nodes[-1]

    def run(self, *args: str) -> None:
        run_pg(self.bin_dir, *args)

    def start(self) -> ReplicatedPostgres:
        if self.as_root:
            shutil.chown(self.base, "postgres", "postgres")
        primary = self.primary
        self.run("initdb", "-D", str(primary.data), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        if not self.replicated:
            primary.start()
            return self
        primary.start(self.sync_option)
        self.clone_standby(self.standby)
        return self

    @property
    def sync_option(self) -> str:
        # Any one standby acknowledges each commit before the client sees it.
        return "-c synchronous_standby_names=* -c synchronous_commit=on"

    def clone_standby(self, node: PgNode, synchronous: bool = True) -> None:
        """A fresh standby of the current primary in `node`'s folder (`pg_basebackup -R`)."""
        shutil.rmtree(node.data, ignore_errors=True)
        self.run(
            "pg_basebackup", "-D", str(node.data), "-R", "-X", "stream", "-c", "fast",
            "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
        )  # fmt: skip
        node.start()
        self.wait_for_standby(("sync",) if synchronous else ("sync", "async"))

    def wait_for_standby(self, states: tuple[str, ...] = ("sync",), timeout: float = 60.0) -> None:
        engine = create_engine(self.primary.url(), isolation_level="AUTOCOMMIT")
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    rows = conn.execute(text("SELECT sync_state FROM pg_stat_replication"))
                    if any(row[0] in states for row in rows):
                        return
                time.sleep(0.1)
        finally:
            engine.dispose()
        raise RuntimeError(f"no standby in state {states}")

    def fail_over(self) -> float:
        """kill -9 of the primary, then the standby promoted; returns when the kill was."""
        killed = time.time()
        self.primary.kill9()
        self.run("pg_ctl", "-D", str(self.standby.data), "-w", "-t", "60", "promote")
        self.primary, self.standby = self.standby, self.primary
        return killed

    def rejoin_old_primary(self) -> None:
        """The dead node's host comes back as a synchronous standby of the new primary (a
        fresh clone, as a failover manager does with `pg_rewind` or a new base backup)."""
        self.clone_standby(self.standby, synchronous=False)
        engine = create_engine(self.primary.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text("ALTER SYSTEM SET synchronous_standby_names = '*'"))
                conn.execute(text("SELECT pg_reload_conf()"))
        finally:
            engine.dispose()
        self.wait_for_standby()

    def url(self, database: str) -> str:
        if not self.replicated:
            return self.primary.url(database)
        hosts = "&".join(f"host=127.0.0.1:{n.port}" for n in self.nodes)
        return (
            f"postgresql+psycopg://postgres@/{database}?{hosts}&target_session_attrs=read-write"
        )

    def create_database(self, name: str) -> str:
        engine = create_engine(self.primary.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill9()
        shutil.rmtree(self.base, ignore_errors=True)
