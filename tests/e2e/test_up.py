"""`pinflow up --demo` in a temporary home: a run succeeds, a new push is picked up, and
SIGTERM leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from pinflow.supervise import descendants
from tests.support.git import Git
from tests.support.ports import free_port
from tests.support.server import PINFLOW


def wait_for(check, timeout: float = 90.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.TransportError, KeyError, FileNotFoundError, ValueError):
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_up_demo(tmp_path: Path):
    home, port = tmp_path / "home", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINFLOW_")}
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [PINFLOW, "up", "--demo", "--port", str(port), "--workers", "1", "--home", str(home)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        token = wait_for(lambda: json.loads((home / "up-tokens.json").read_text())["admin"])
        client = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"})

        def etl_runs() -> list[dict]:
            return client.get("/runs", params={"dag_id": "etl"}).json()["items"]

        first = wait_for(lambda: [r for r in etl_runs() if r["state"] == "success"])[0]
        output = (tmp_path / "up.log").read_text()
        assert f"http://127.0.0.1:{port}/docs" in output and token in output
        assert "/git/REPO.git" in output

        # A new commit pushed to the demo repo becomes current and runs.
        work = Git(tmp_path / "demo")
        work.run("clone", "-q", f"http://x:{token}@127.0.0.1:{port}/git/demo.git", ".")
        hello = (work.path / "dags/hello.py").read_text().replace("hello, {name}", "hi, {name}")
        work.write("dags/hello.py", hello)
        new = work.commit("friendlier")
        work.run("push", "origin", "main")
        assert client.get("/dags/hello").json()["current_sha"] == new
        run = client.post("/dags/hello/runs", json={"conf": {"name": "you"}}).json()
        done = wait_for(
            lambda: (
                (r := client.get(f"/runs/{run['run_id']}").json())["state"] in ("success", "failed")
                and r
            )
        )
        assert done["state"] == "success" and done["sha"] == new
        assert done["tasks"][-1]["result"] == "HI, YOU"
        assert first["sha"] != new

        # A child that dies is reported and restarted.
        scheduler = next(
            pid
            for pid in descendants(proc.pid)
            if "scheduler" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        )
        os.kill(scheduler, signal.SIGKILL)
        wait_for(
            lambda: "scheduler exited with code -9; restarting" in (tmp_path / "up.log").read_text()
        )
        wait_for(
            lambda: any(
                "scheduler" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                for pid in descendants(proc.pid)
                if pid != scheduler and Path(f"/proc/{pid}").exists()
            )
        )

        children = descendants(proc.pid)
        assert len(children) >= 4  # redis, server, scheduler, worker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        time.sleep(0.5)
        alive = [
            pid
            for pid in children
            if Path(f"/proc/{pid}").exists()
            and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        ]
        assert alive == [], f"left behind: {alive}"
    finally:
        if proc.poll() is None:
            for pid in descendants(proc.pid):
                os.kill(pid, signal.SIGKILL)
            proc.kill()
        log.close()
