"""A whole pinflow on loopback: API server, schedulers and workers as real processes, real
redis-server, SQLite or PostgreSQL. Tests push DAG repos to it and watch runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.support.git import Git
from tests.support.ports import free_port
from tests.support.procs import PinflowProcess, stop_all
from tests.support.redis import RedisServer
from tests.support.server import ServerProcess, make_tokens


class Cluster:
    def __init__(self, home: Path, database_url: str, backend: str, **env: str) -> None:
        self.home = home
        self.database_url = database_url
        self.backend = backend
        self.redis = RedisServer()
        self.env = env
        self.server: ServerProcess | None = None
        self.schedulers: list[PinflowProcess] = []
        self.workers: list[PinflowProcess] = []
        self.scheduler_metrics: dict[str, str] = {}  # scheduler's name → its /metrics URL
        self.worker_args: list[str] = []  # extra `pinflow worker` options, e.g. ["--no-fork"]

    def start(self, schedulers: int = 1, workers: int = 1) -> Cluster:
        self.redis.start()
        self.tokens = make_tokens(self.database_url)
        self.server = ServerProcess(
            home=self.home,
            database_url=self.database_url,
            backend=self.backend,
            extra_env={"PINFLOW_REDIS_URL": self.redis.url, **self.env},
        )
        self.server.tokens = self.tokens
        self.server.start()
        for i in range(schedulers):
            self.add_scheduler(f"s{i}")
        for i in range(workers):
            self.add_worker(f"w{i}")
        return self

    def process_env(self, token: str) -> dict[str, str]:
        assert self.server is not None
        return {
            "PINFLOW_REDIS_URL": self.redis.url,
            "PINFLOW_API_URL": self.server.url,
            "PINFLOW_TOKEN": token,
            **self.env,
        }

    def add_scheduler(self, name: str) -> PinflowProcess:
        port = free_port()  # its Prometheus metrics (`--metrics-port`)
        proc = PinflowProcess(
            f"scheduler-{name}",
            ["scheduler", "--name", name, "--metrics-port", str(port)],
            self.home,
            self.database_url,
            **self.process_env(self.tokens["admin"]),
        )
        self.scheduler_metrics[proc.name] = f"http://127.0.0.1:{port}/metrics"
        self.schedulers.append(proc.start())
        return proc

    def add_worker(
        self, name: str, api_url: str | None = None, args: tuple[str, ...] = (), **env: str
    ) -> PinflowProcess:
        """A started `pinflow worker`; `args`: more options for this one (e.g. its --queue)."""
        # Workers get no database URL (they must not need one) and share one cache, as the
        # workers of one host do.
        proc = PinflowProcess(
            f"worker-{name}",
            ["worker", "--name", name, *self.worker_args, *args],
            self.home / name,
            "",
            **{
                **self.process_env(self.tokens["worker"]),
                "PINFLOW_CACHE_DIR": str(self.home / "worker-cache"),
                **env,
            },
        )
        (self.home / name).mkdir(exist_ok=True)
        proc.env.pop("PINFLOW_DATABASE_URL", None)
        if api_url:
            proc.env["PINFLOW_API_URL"] = api_url
        self.workers.append(proc.start())
        return proc

    def stop(self) -> None:
        # As a supervisor stops them: SIGTERM, then SIGKILL past a grace. A worker busy with a
        # long task (a test's sleeper) rightly waits for it on SIGTERM; a test is over by now.
        stop_all(self.workers + self.schedulers, timeout=5)
        if self.server:
            self.server.stop()
        self.redis.cleanup()

    # --- what tests do with it -------------------------------------------------------------

    def api(self, scope: str = "admin"):
        assert self.server is not None
        return self.server.api(scope)

    def repo(self, name: str, path: Path) -> Git:
        assert self.server is not None
        self.server.create_repo(name)
        work = Git(path).init()
        work.remote = self.server.git_url(name, self.tokens["push"])  # type: ignore[attr-defined]
        return work

    def push(self, work: Git, message: str, **files: str) -> str:
        for rel, content in files.items():
            work.write(rel, content)
        sha = work.commit(message)
        result = work.run("push", work.remote, "main")  # type: ignore[attr-defined]
        assert "parsed at" in result.stderr or "no DAGs found" in result.stderr, result.stderr
        return sha

    def trigger(self, dag_id: str, **body: Any) -> dict[str, Any]:
        with self.api("trigger") as api:
            response = api.post(f"/dags/{dag_id}/runs", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def run(self, run_id: str) -> dict[str, Any]:
        with self.api("read") as api:
            response = api.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, run_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run["state"] in ("success", "failed"):
                return run
            # Each poll is a request the server answers on the same 2 cores as the run.
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} did not finish: {self.run(run_id)}\n{self.logs()}")

    def wait_task(
        self, run_id: str, task_id: str, state: str, timeout: float = 30
    ) -> dict[str, Any]:
        """Poll until the task is in `state`; returns the task as the API shows it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = {t["task_id"]: t for t in self.run(run_id)["tasks"]}
            if tasks[task_id]["state"] == state:
                return tasks[task_id]
            time.sleep(0.1)
        raise AssertionError(f"{task_id} never {state}: {self.run(run_id)}\n{self.logs()}")

    def logs(self) -> str:
        parts = [f"--- {p.name}\n{p.log()[-3000:]}" for p in self.schedulers + self.workers]
        if self.server:
            parts.append(f"--- server\n{self.server.server_log()[-3000:]}")
        return "\n".join(parts)

    def task_log(self, run_id: str, task_id: str, try_number: int | None = None) -> str:
        params = {"try": try_number} if try_number else {}
        with self.api("read") as api:
            return api.get(f"/runs/{run_id}/tasks/{task_id}/logs", params=params).text
