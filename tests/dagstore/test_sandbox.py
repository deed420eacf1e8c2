"""Pushed code at parse time (issue 14): it sees the version's files and Python, nothing of
the server. Hostile DAG files try each escape; the push shows a clean failure for each, and no
secret of the server appears anywhere."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.support.git import Git
from tests.support.server import ServerProcess, start_server

ESCAPES = {
    "environ": """
import glob, os
procs = {}
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        procs[path] = open(path, "rb").read()
    except OSError as exc:
        procs[path] = repr(exc)
raise RuntimeError(f"UID {os.getuid()} ENV {dict(os.environ)!r} PROCS {procs!r}")
""",
    "files": """
import os
seen = {{}}
for path in {paths!r}:
    try:
        seen[path] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path, "rb").read(64)
    except OSError as exc:
        seen[path] = type(exc).__name__
raise RuntimeError(f"FILES {{seen!r}}")
""",
    "network": """
import socket
seen = {{}}
for port in {ports!r}:
    sock = socket.socket()
    sock.settimeout(2)
    try:
        sock.connect(("127.0.0.1", port))
        seen[port] = "connected"
    except OSError as exc:
        seen[port] = type(exc).__name__
raise RuntimeError(f"NET {{seen!r}}")
""",
    "forker": """
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "{marker}"])
    os._exit(0)
raise RuntimeError("forked a grandchild")
""",
    "hog": """
hoard = [bytearray(1 << 28) for _ in range(64)]  # 16 GiB, far over the parse's memory limit
""",
    "printer": """
import sys
for _ in range(100):
    sys.stdout.write("x" * (1 << 20))
sys.stdout.flush()
""",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    server = start_server(tmp_path_factory.mktemp("box"), PINFLOW_PARSE_TIMEOUT="10")
    try:
        yield server
    finally:
        server.stop()


def errors_of(server: ServerProcess, repo: str) -> dict[str, str]:
    with server.api("read") as api:
        (version,) = api.get(f"/repos/{repo}/versions").json()["items"][:1]
    return {e["file"]: e["error"] for e in version["errors"]}


def test_hostile_dag_files_reach_nothing_of_the_server(server, repo_name, tmp_path):
    marker = "37.4242"
    secrets = [*server.tokens.values(), server.database_url]
    paths = [str(server.home / "pinflow.db"), str(server.home), "/root", "/etc", "/home"]
    files = {
        "environ": ESCAPES["environ"],
        "files": ESCAPES["files"].format(paths=paths),
        "network": ESCAPES["network"].format(ports=[server.port, 5432, 6379]),
        "forker": ESCAPES["forker"].format(marker=marker),
        "printer": ESCAPES["printer"],
        "hog": ESCAPES["hog"],
    }
    server.create_repo(repo_name)
    work = Git(tmp_path / "w").init()
    for name, code in files.items():
        work.write(f"dags/{name}.py", "# a pinflow DAG file\n" + code)
    work.commit("hostile")
    push = work.run("push", server.git_url(repo_name, server.tokens["push"]), "main")
    errors = errors_of(server, repo_name)
    everything = push.stderr + repr(errors)
    for secret in secrets:
        assert secret not in everything, "a secret of the server reached pushed code"
    assert "PINFLOW_TOKEN" not in errors["dags/environ.py"]
    assert "PINFLOW_DATABASE_URL" not in errors["dags/environ.py"]
    assert "UID 0 " not in errors["dags/environ.py"], "parsed as root"
    assert all(f"'{path}': 'FileNotFoundError'" in errors["dags/files.py"] for path in paths[:2]), (
        errors["dags/files.py"]
    )
    assert "'/etc': 'FileNotFoundError'" in errors["dags/files.py"]
    assert "connected" not in errors["dags/network.py"], errors["dags/network.py"]
    assert "forked a grandchild" in errors["dags/forker.py"]
    survivors = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    assert survivors.stdout == "", "a process the parse started outlived it"
    assert "dags/printer.py" not in errors  # 100 MiB printed go nowhere: nothing to cap
    assert "MemoryError" in errors["dags/hog.py"], errors["dags/hog.py"]
    assert "Traceback" not in server.server_log()


def test_without_bubblewrap_nothing_is_parsed_and_the_pusher_is_told(repo_name, tmp_path):
    server = start_server(tmp_path / "home", PATH="/nonexistent")
    try:
        assert "will not be parsed" in server.server_log(), "not said at start"
        server.create_repo(repo_name)
        server.create_repo(f"{repo_name}s", strict=True)
        work = Git(tmp_path / "w").init()
        work.commit("dag", **{"dags__d.py": "# pinflow DAG\nraise SystemExit(3)\n"})
        landed = work.run("push", server.git_url(repo_name, server.tokens["push"]), "main")
        assert "not parsed" in landed.stderr and "bubblewrap" in landed.stderr
        strict = work.run(
            "push", server.git_url(f"{repo_name}s", server.tokens["push"]), "main", check=False
        )
        assert strict.returncode != 0 and "bubblewrap" in strict.stderr
    finally:
        server.stop()


def test_off_parses_without_the_box_and_says_so(repo_name, tmp_path):
    server = start_server(tmp_path / "home", PINFLOW_PARSE_SANDBOX="off")
    try:
        assert "PINFLOW_PARSE_SANDBOX=off" in server.server_log()
        server.create_repo(repo_name)
        work = Git(tmp_path / "w").init()
        work.commit("dag", **{"dags__d.py": ESCAPES["environ"].replace("raise", "x =")})
        work.run("push", server.git_url(repo_name, server.tokens["push"]), "main")
        assert "WITHOUT a sandbox" in server.server_log()
    finally:
        server.stop()
