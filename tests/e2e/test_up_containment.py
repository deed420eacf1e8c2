"""Under `pinflow up`, task code cannot read the home, the database or any token (issue 25).

`pinflow up` runs the API server, the scheduler, Redis and the workers as one user, with the
admin, push and worker tokens in PINFLOW_HOME. A hostile task, told every secret there is
(the test reads them after the start and writes them into the DAG file, each cut in two so
that the task's own memory never holds one whole), looks for them
everywhere: its environment, every `/proc/*/environ` and command line it can see, its own
memory and its parent's, the files of the home; it tries the Redis connections it inherited,
Redis' port without the password and with it, and writes where it should not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pinflow.supervise import descendants
from pinflow.upbox import WorkerBox, worker_box
from tests.e2e.test_up import end_up, start_up, wait_for
from tests.support.dags import HELD_SOCKETS
from tests.support.git import Git
from tests.support.ports import free_port

HOSTILE = r'''
import glob, os, socket
from pinflow import DAG, task

HALVES = {halves!r}
HOME = {home!r}
REDIS_PORT = {redis_port!r}
PLANT = {plant!r}


def holds(data, first, second):
    at = data.find(first)
    while at >= 0:
        if data[at + len(first) : at + len(first) + len(second)] == second:
            return True
        at = data.find(first, at + 1)
    return False


def where(data):
    return sorted(n for n, (a, b) in HALVES.items() if holds(data, a.encode(), b.encode()))


def memory_of(pid):
    found = set()
    try:
        maps = open(f"/proc/{{pid}}/maps").read().splitlines()
        mem = open(f"/proc/{{pid}}/mem", "rb", buffering=0)
    except OSError as exc:
        return [], type(exc).__name__
    with mem:
        for line in maps:
            span, perms = line.split()[:2]
            if perms.startswith("r"):
                start, end = (int(x, 16) for x in span.split("-"))
                try:
                    mem.seek(start)
                    found |= set(where(mem.read(end - start)))
                except (OSError, OverflowError, ValueError):
                    pass
    return sorted(found), "read"


def inherited_redis():
    """Sockets this process holds that are connected to Redis' port and answer PING."""
    answering = []
    for s in held_sockets():
        try:
            if s.family == socket.AF_INET and s.getpeername()[1] == REDIS_PORT:
                s.settimeout(2)
                s.sendall(b"PING\r\n")
                answering.append(s.recv(64).decode(errors="replace"))
        except OSError as exc:
            answering.append(type(exc).__name__)
    return answering


def redis_says(*commands):
    try:
        s = socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=5)
    except OSError as exc:
        return type(exc).__name__
    with s:
        for command in commands:
            s.sendall(command.encode() + b"\r\n")
            answer = s.recv(256).decode(errors="replace")
        return answer.strip()


with DAG("{dag_id}", schedule=None):
    @task
    def snoop():
        found = {{"env": sorted(k for k in os.environ if k.startswith("PINFLOW_"))}}
        found["environ"] = where(repr(dict(os.environ)).encode())
        seen, commands = set(), []
        for path in glob.glob("/proc/[0-9]*"):
            for name in ("environ", "cmdline"):
                try:
                    data = open(f"{{path}}/{{name}}", "rb").read()
                except OSError:
                    continue
                seen |= set(where(data))
                if name == "cmdline":
                    commands.append(data.replace(b"\0", b" ").decode(errors="replace"))
        found["proc"], found["commands"] = sorted(seen), commands
        own, _ = memory_of("self")
        parent, found["parent_memory"] = memory_of(os.getppid())
        found["memory"] = sorted(set(own) | set(parent))
        files = {{}}
        for path in (HOME, HOME + "/up-tokens.json", HOME + "/pinflow.db",
                     HOME + "/redis/redis.conf"):
            try:
                files[path] = (sorted(os.listdir(path)) if os.path.isdir(path)
                               else where(open(path, "rb").read()) or "read")
            except OSError as exc:
                files[path] = type(exc).__name__
        found["files"] = files
        found["inherited_redis"] = inherited_redis()
        found["redis_no_password"] = redis_says("PING")
        found["redis_leaked_password"] = redis_says(
            "AUTH " + "".join(HALVES["redis"]), "CONFIG SET dir /tmp"
        )
        from runner.claim import CLAIMS
        found["agent"] = repr(CLAIMS.agent)
        planted = {{}}
        for path in (HOME + "/planted", PLANT):
            try:
                open(path, "w").write("planted by a task")
                planted[path] = "written"
            except OSError as exc:
                planted[path] = type(exc).__name__
        found["planted"] = planted
        return found

    snoop()
'''


def up_tokens(home: Path) -> dict[str, str]:
    return json.loads((home / "up-tokens.json").read_text())


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path, int]]:
    """`pinflow up` with one worker in a temporary home; its console in tmp_path/up.log."""
    home, port = tmp_path / "home", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINFLOW_")}
    with (tmp_path / "up.log").open("wb") as log:
        proc = start_up(home, port, env, log, demo=False)
    try:
        wait_for(lambda: "pinflow is up" in (tmp_path / "up.log").read_text())
        yield proc, home, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
        end_up(proc)


def test_under_up_a_task_finds_no_token_no_home_no_database_and_no_redis(up, tmp_path):
    proc, home, port = up
    tokens = up_tokens(home)
    config = (home / "redis" / "redis.conf").read_text()
    password = re.search(r"(?:requirepass |>)(\S+)", config)[1]  # type: ignore[index]
    redis_port = int(re.search(r"redis-server \S*:(\d+)", _command_lines(proc.pid))[1])  # type: ignore[index]
    plant = str(Path(sys.prefix) / f"planted-by-a-task-{port}")
    secrets = {**tokens, "redis": password}
    halves = {name: (value[: len(value) // 2], value[len(value) // 2 :]) for name, value in
              secrets.items()}  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    admin = httpx.Client(
        base_url=f"{api}/api/v1", headers={"Authorization": f"Bearer {tokens['admin']}"}
    )
    try:
        assert admin.post("/repos", json={"name": "hostile"}).status_code == 201
        work = Git(tmp_path / "work").init()
        source = HELD_SOCKETS + HOSTILE.format(halves=halves, home=str(home), redis_port=redis_port,
                                plant=plant, dag_id="snoop")  # fmt: skip
        work.write("dags/snoop.py", source)
        work.commit("hostile")
        work.run("push", f"http://x:{tokens['push']}@127.0.0.1:{port}/git/hostile.git", "main")
        run = admin.post("/dags/snoop/runs", json={}).json()
        done = wait_for(
            lambda: (
                (r := admin.get(f"/runs/{run['run_id']}").json())["state"] in ("success", "failed")
                and r
            )
        )
    finally:
        admin.close()
    try:
        task = done["tasks"][0]
        assert task["state"] == "success", task["error"]
        found = task["result"]
        # Only what a worker needs reached it; no secret anywhere the task could look.
        assert not {"PINFLOW_HOME", "PINFLOW_DATABASE_URL", "PINFLOW_REDIS_URL",
                    "PINFLOW_TOKEN"} & set(found["env"])  # fmt: skip
        assert found["environ"] == [] and found["proc"] == [] and found["memory"] == []
        # Nothing outside the box is seen: not the server, the scheduler or Redis.
        assert not [c for c in found["commands"] if "redis-server" in c or "scheduler" in c]
        assert not [c for c in found["commands"] if " up " in c or "server --host" in c]
        # The home is an empty folder in the box: no tokens, no database, no Redis config.
        files = found["files"]
        assert files[str(home / "up-tokens.json")] == "FileNotFoundError"
        assert files[str(home / "pinflow.db")] == "FileNotFoundError"
        assert files[str(home / "redis/redis.conf")] == "FileNotFoundError"
        assert set(files[str(home)]) <= {"cache"}
        # No Redis: no live connection inherited, none without the password, and even with
        # a leaked password no command that writes files as the Redis server's user.
        assert not any("PONG" in answer for answer in found["inherited_redis"])
        assert "NOAUTH" in found["redis_no_password"]
        assert "NOPERM" in found["redis_leaked_password"]
        assert found["agent"] == "None"  # no way back to the token agent
        # Writes stay in the box: the real home and the read-only rest are untouched.
        assert found["planted"][plant] == "OSError"  # read-only
        assert not (home / "planted").exists() and not Path(plant).exists()
    finally:
        Path(plant).unlink(missing_ok=True)


def _command_lines(pid: int) -> str:
    lines = []
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace"))
    return "\n".join(lines)


def test_without_bubblewrap_up_starts_and_says_tasks_are_not_boxed(tmp_path):
    """A machine without bubblewrap: an announced downgrade, never a failure to start."""
    home, port = tmp_path / "home", free_port()
    bin_dir = tmp_path / "bin"  # git and the venv, no bwrap
    bin_dir.mkdir()
    os.symlink(subprocess.run(["which", "git"], capture_output=True, text=True).stdout.strip(),
               bin_dir / "git")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{bin_dir}"
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = start_up(home, port, env, out, demo=False)
    try:
        wait_for(lambda: "pinflow is up" in log.read_text())
        text = log.read_text()
        assert "NOT BOXED" in text and "bubblewrap (`bwrap`) is not installed" in text
        assert "WARNING: workers run unboxed" in text
        worker_log = home / "logs" / "worker-1.log"
        wait_for(lambda: "Listening on" in worker_log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        end_up(proc)


def test_a_box_bubblewrap_cannot_build_is_announced(tmp_path, monkeypatch):
    """bwrap present but refused (a container without user namespaces): the same downgrade,
    with bubblewrap's own reason."""
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    from dagstore.core.settings import Settings

    settings = Settings.load(home=str(tmp_path / "home"))
    box = worker_box(settings, tmp_path / "home" / "cache" / "versions")
    assert not box.boxed and "No permissions to creating new namespace" in (box.problem or "")
    assert box.wrap(["python"]) == ["python"]
    assert "NOT BOXED" in box.describe()
    monkeypatch.setenv("PINFLOW_UP_SANDBOX", "off")
    assert worker_box(settings, tmp_path / "c").problem == "PINFLOW_UP_SANDBOX=off"


def test_the_box_hides_the_home_and_keeps_the_cache(tmp_path):
    """What the box shows, checked without `pinflow up`: the home is empty but for the cache,
    which is writable; the rest of the filesystem is read only; /proc shows the box alone."""
    home = tmp_path / "home"
    (home / "cache" / "versions").mkdir(parents=True)
    (home / "up-tokens.json").write_text("{}")
    box = WorkerBox((str(home),), (str(home / "cache" / "versions"),))
    code = (
        "import os, sys\n"
        f"home = {str(home)!r}\n"
        "print(sorted(os.listdir(home)))\n"
        "open(home + '/cache/versions/x', 'w').write('ok')\n"
        "try:\n    open(sys.prefix + '/x', 'w')\nexcept OSError as e:\n    print(e.errno)\n"
        "print(len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
    )
    done = subprocess.run(box.wrap([sys.executable, "-c", code]), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    listing, errno, processes = done.stdout.splitlines()
    assert listing == "['cache']" and errno == "30"  # EROFS
    assert int(processes) <= 3  # bubblewrap's init, python (and nothing of the machine)
    assert (home / "cache" / "versions" / "x").read_text() == "ok"
