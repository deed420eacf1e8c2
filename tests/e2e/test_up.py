"""`pinflow up --demo` in a temporary home: a run succeeds, a new push is picked up, and
SIGTERM leaves no process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import select

from dagstore.access.tokens import is_live, revoke_token
from dagstore.core.db import Database
from dagstore.core.models import Token
from dagstore.core.settings import Settings
from pinflow.migrate import upgrade
from pinflow.supervise import descendants
from pinflow.up import banner, load_tokens, tokens_path
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


def assert_private(home: Path, up_pid: int, tokens: dict[str, str], output: str) -> None:
    """Issue 14, operator hygiene: the home and its secrets are the user's alone, Redis wants
    a password, no token is on any command line, the banner shows no push or worker token."""
    assert set(tokens) == {"admin", "push", "worker"}
    for path, mode in (
        (home, 0o700),
        (home / "pinflow.db", 0o600),
        (home / "up-tokens.json", 0o600),
    ):
        assert path.stat().st_mode & 0o777 == mode, path
    assert (home / "redis" / "redis.conf").stat().st_mode & 0o777 == 0o600
    command_lines = {
        pid: Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        for pid in descendants(up_pid)
        if Path(f"/proc/{pid}").exists()
    }
    for secret in tokens.values():
        assert all(secret not in line for line in command_lines.values()), (
            "a token on a command line"
        )
    assert tokens["push"] not in output and tokens["worker"] not in output
    # redis-server retitles itself "redis-server 127.0.0.1:PORT"
    (port,) = {
        int(m[1])
        for line in command_lines.values()
        if (m := re.search(r"redis-server \S*:(\d+)", line))
    }
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()


def test_up_tokens_are_made_once_and_the_admin_token_is_printed_once(tmp_path, capsys):
    settings = Settings.load(home=str(tmp_path / "home"))
    settings.make_home()
    db = Database(settings.database_url)
    upgrade(db)
    first, new = load_tokens(settings, db)
    again, renewed = load_tokens(settings, db)
    db.dispose()
    assert new and not renewed and again == first
    banner("http://127.0.0.1:1", first, False, tokens_path(settings))
    shown = capsys.readouterr().out
    assert all(secret not in shown for secret in first.values())
    assert str(tokens_path(settings)) in shown and "credential." in shown


def test_up_replaces_its_own_tokens_once_revoked(tmp_path, capsys):
    """`pinflow token revoke` of the worker token `up` made: the next start makes a new one
    (and says so) instead of starting a worker every server refuses; likewise the admin
    token, printed again since it is new."""
    settings = Settings.load(home=str(tmp_path / "home"))
    settings.make_home()
    db = Database(settings.database_url)
    upgrade(db)
    first, _ = load_tokens(settings, db)
    with db.write() as session:
        worker_id = session.scalar(select(Token.id).where(Token.name == "pinflow-up-worker"))
        revoke_token(session, worker_id)
    capsys.readouterr()
    second, admin_new = load_tokens(settings, db)
    assert "worker token" in capsys.readouterr().out
    assert second["worker"] != first["worker"] and not admin_new
    assert {k: v for k, v in second.items() if k != "worker"} == {
        k: v for k, v in first.items() if k != "worker"
    }
    with db.write() as session:
        admin_id = session.scalar(select(Token.id).where(Token.name == "pinflow-up-admin"))
        revoke_token(session, admin_id)
    third, admin_new = load_tokens(settings, db)
    with db.read() as session:
        assert all(is_live(session, secret) for secret in third.values())
    db.dispose()
    assert admin_new and third["admin"] != first["admin"]
    assert json.loads(tokens_path(settings).read_text()) == third


def start_up(home: Path, port: int, env: dict[str, str], log, demo: bool = True):  # type: ignore[no-untyped-def]
    """`pinflow up [--demo]` with one worker, its output into `log`."""
    return subprocess.Popen(
        [PINFLOW, "up", *(["--demo"] if demo else []), "--port", str(port), "--workers", "1",
         "--home", str(home)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def end_up(proc: subprocess.Popen) -> None:
    """A test's `pinflow up` that is still running: gone, with every process below it."""
    if proc.poll() is None:
        for pid in descendants(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


def test_up_demo(tmp_path: Path):
    home, port = tmp_path / "home", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINFLOW_")}
    log = (tmp_path / "up.log").open("wb")
    proc = start_up(home, port, env, log)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        token = wait_for(lambda: json.loads((home / "up-tokens.json").read_text())["admin"])
        client = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"})

        def etl_runs() -> list[dict]:
            return client.get("/runs", params={"dag_id": "etl"}).json()["items"]

        first = wait_for(lambda: [r for r in etl_runs() if r["state"] == "success"])[0]
        (first_manual,) = [r["run_id"] for r in etl_runs() if r["run_type"] == "manual"]
        output = (tmp_path / "up.log").read_text()
        assert f"http://127.0.0.1:{port}/docs" in output and token in output
        assert "/git/REPO.git" in output
        assert_private(home, proc.pid, json.loads((home / "up-tokens.json").read_text()), output)

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

        # Started again on the same home, the demo does not run etl a second time.
        log.close()
        log = (tmp_path / "up2.log").open("wb")
        proc = start_up(home, port, env, log)
        wait_for(lambda: "on the first start only" in (tmp_path / "up2.log").read_text())
        manual = [r["run_id"] for r in etl_runs() if r["run_type"] == "manual"]
        assert manual == [first_manual], manual
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        end_up(proc)
        log.close()


def test_supervisor_says_a_childs_loud_lines_on_the_console(tmp_path):
    """What `pinflow up` must show (a worker's TOKEN REFUSED) reaches its console, once,
    whole lines only, and nothing an earlier start left in the log."""
    from pinflow.supervise import Child, Supervisor

    log = tmp_path / "worker.log"
    log.write_text("TOKEN REFUSED from an earlier start\n")
    said: list[str] = []
    supervisor = Supervisor(said.append)
    script = (
        "import sys, time; print('starting'); print('ERROR TOKEN REFUSED: the API server');"
        "sys.stdout.flush(); print('TOKEN REFUSED, half', end=''); sys.stdout.flush();"
        "time.sleep(30)"
    )
    child = supervisor.add(
        Child("worker-1", [sys.executable, "-c", script], dict(os.environ), log,
              shout=("TOKEN REFUSED",))  # fmt: skip
    )
    try:
        wait_for(lambda: "half" in log.read_text())
        supervisor.check()
        supervisor.check()
    finally:
        child.stop(5)
    assert said == ["worker-1: ERROR TOKEN REFUSED: the API server"], said
