"""A parse's results are the pusher's to write (issue 25, finding 5 of security review 2).

The parse child imports DAG files in its own process, so a DAG file can change its DAG after
`DAG()` checked it, write lines of its own to the results pipe, or fill its errors, file
names and commit messages with terminal escapes. The server checks every record again before
it keeps anything, and nothing raw reaches a terminal: not the pusher's `remote:` lines, not
`pinflow dags`, `dags --errors`, `versions`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from dagstore.parsing.parser import MAX_RECORD_BYTES
from tests.conftest import BACKENDS, serve
from tests.support.git import Git
from tests.support.server import PINFLOW, ServerProcess, pinflow_env

RAW = ("\x1b", "\x07", "\x9b", "\u202e")  # ESC, BEL, CSI (C1), right-to-left override


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory) -> Iterator[ServerProcess]:
    yield from serve(request, tmp_path_factory, PINFLOW_PARSE_TIMEOUT="5")


def push(server: ServerProcess, repo: str, work: Git, strict: bool = False):
    server.create_repo(repo, strict=strict)
    return work.run("push", server.git_url(repo, server.tokens["push"]), "main", check=False)


def errors_of(server: ServerProcess, repo: str) -> dict[str, str]:
    with server.api("read") as api:
        (version,) = api.get(f"/repos/{repo}/versions").json()["items"][:1]
    return {e["file"]: e["error"] for e in version["errors"]}


def dag_ids(server: ServerProcess) -> set[str]:
    with server.api("read") as api:
        return {d["dag_id"] for d in api.get("/dags").json()["items"]}


def cli(server: ServerProcess, tmp_path, *args: str) -> str:
    env = pinflow_env(tmp_path, "sqlite:///unused", PINFLOW_API_URL=server.url,
                      PINFLOW_TOKEN=server.tokens["read"])  # fmt: skip
    done = subprocess.run([PINFLOW, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def assert_nothing_raw(text: str, where: str) -> None:
    raw = sorted({repr(c) for c in RAW if c in text})
    assert not raw, f"{where} holds raw {', '.join(raw)}: {text!r}"


def test_a_dag_changed_after_it_was_checked_is_not_kept(server, repo_name, tmp_path, uid):
    """The review's repro: ids rewritten after `DAG()` checked them are refused, as the
    file's error; a strict repository refuses the push."""
    forge = f"""# pinflow DAG
from pinflow import DAG, task
with DAG("a1_{uid}", schedule=None) as a:
    @task
    def t():
        return 1
    t()
with DAG("a2_{uid}", schedule=None) as b:
    @task
    def u():
        return 1
    u()
a.dag_id = "zz/../payroll_{uid}"
b.dag_id = "ansi\\x1b[31mRED\\x1b]0;pwned-title\\x07_{uid}"
"""
    work = Git(tmp_path / "w").init()
    work.commit("forged", **{"dags__forge.py": forge})
    landed = push(server, repo_name, work)
    assert landed.returncode == 0, landed.stderr
    assert_nothing_raw(landed.stderr, "the push's remote: lines")
    assert "invalid DAG, not kept" in errors_of(server, repo_name)["dags/forge.py"]
    assert not {d for d in dag_ids(server) if uid in d}, "a forged DAG was kept"
    assert_nothing_raw(cli(server, tmp_path, "dags"), "pinflow dags")
    refused = push(server, f"{repo_name}s", work, strict=True)
    assert refused.returncode != 0 and "invalid DAG" in refused.stderr, refused.stderr
    assert_nothing_raw(refused.stderr, "a strict repository's refusal")


FORGED = """# pinflow DAG
from pinflow import DAG, task
with DAG("{dag_id}", schedule="@daily", start_date="2026-01-01") as dag:
    @task
    def a():
        return 1
    @task
    def b(x):
        return x
    b(a())
real = dag.to_structure()

def forged():
    s = dict(real, tasks=[dict(t) for t in real["tasks"]])
    {change}
    return s

dag.to_structure = forged  # what the parse child reports, structure hash included
"""
FORGERIES = {
    "extra_field": ('s["owner"] = "root"', "owner: Extra inputs are not permitted"),
    "schedule": ('s["schedule"] = "timedelta:1e300"', "invalid stored schedule"),
    "cron": ('s["schedule"] = "61 * * * *"', "invalid cron schedule"),
    "cycle": ('s["tasks"].reverse()', "is not a task listed before it"),
    "unknown_upstream": ('s["tasks"][1]["upstream"] = ["ghost"]', "'ghost' is not a task"),
    "retries": ('s["tasks"][0]["retries"] = 10**12', "less than or equal to 1000"),
    "timeout": ('s["tasks"][0]["timeout"] = 0.0', "timeout: Input should be greater than 0"),
    "type": ('s["catchup"] = "yes"', "catchup: Input should be a valid boolean"),
    "task_id": ('s["tasks"][0]["task_id"] = "../a"', "invalid id '../a'"),
    "start_date": ('s["start_date"] = None', "a scheduled DAG needs a start_date"),
    "dates": ('s["end_date"] = "2020-01-01T00:00:00+00:00"', "is before start_date"),
    "description": ('s["description"] = "\\x1b]52;c;cHduZWQ=\\x07"', "holds control characters"),
    "size": ('s["description"] = "x" * 20000', "at most 10000 characters"),
    "count": (
        's["tasks"] = [dict(s["tasks"][0], task_id=f"t{i}") for i in range(10001)]',
        "at most 10000 items",
    ),
}


def test_each_rule_is_checked_again_on_the_server(server, repo_name, tmp_path, uid):
    """Every rule of `DAG()` and `@task`, broken after the fact: each file is an error that
    says which rule, and its DAG is not kept; a good file in the same push is."""
    work = Git(tmp_path / "w").init()
    for name, (change, _) in FORGERIES.items():
        work.write(f"dags/{name}.py", FORGED.format(dag_id=f"{name}_{uid}", change=change))
    work.write("dags/good.py", FORGED.format(dag_id=f"good_{uid}", change="pass"))
    work.commit("forgeries")
    landed = push(server, repo_name, work)
    assert landed.returncode == 0, landed.stderr
    errors = errors_of(server, repo_name)
    for name, (_, why) in FORGERIES.items():
        assert why in errors.get(f"dags/{name}.py", ""), (name, errors.get(f"dags/{name}.py"))
    assert {d for d in dag_ids(server) if uid in d} == {f"good_{uid}"}


PIPE_WRITER = """# pinflow DAG
import os, sys
channel = sys.argv[3]  # the results pipe's fd (a file path, once)
fd = int(channel) if channel.isdigit() else os.open(channel, os.O_WRONLY | os.O_APPEND)
{write}
from pinflow import DAG, task
with DAG("{dag_id}", schedule=None):
    @task
    def t():
        return 1
    t()
"""
JUNK = (
    'os.write(fd, b"not json\\n[1, 2]\\n{\\"file\\": NaN}\\n" + b"[" * 100000 + b"\\n")\n'
    'os.write(fd, b\'{"file": "../../etc/cron.d/x", "dags": [], "summary": null}\\n\')\n'
    'os.write(fd, b\'{"start": ["unhashable"]}\\n\')\n'
)


def test_the_results_pipe_is_bounded_and_what_comes_through_it_checked(
    server, repo_name, tmp_path, uid
):
    """A line longer than MAX_RECORD_BYTES ends that file's parse (never held whole); junk,
    records for files the child was not given, and odd JSON are dropped; the other files
    of the push parse as usual."""
    flood = f"os.write(fd, b'{{\"file\": \"' + b'x' * {MAX_RECORD_BYTES + (1 << 20)})"
    work = Git(tmp_path / "w").init()
    work.commit(
        "pipe",
        **{
            "dags__flood.py": PIPE_WRITER.format(write=flood, dag_id=f"flood_{uid}"),
            "dags__junk.py": PIPE_WRITER.format(write=JUNK, dag_id=f"junk_{uid}"),
            "dags__later.py": PIPE_WRITER.format(write="", dag_id=f"later_{uid}"),
        },
    )
    landed = push(server, repo_name, work)
    assert landed.returncode == 0, landed.stderr
    errors = errors_of(server, repo_name)
    assert set(errors) == {"dags/flood.py"}, errors
    assert "larger than 32 MiB" in errors["dags/flood.py"]
    assert {d for d in dag_ids(server) if uid in d} == {f"junk_{uid}", f"later_{uid}"}
    assert "Traceback" not in server.server_log()


def test_no_control_character_reaches_a_terminal(server, repo_name, tmp_path, uid):
    """Import errors, file names and commit messages with escapes: the pusher's remote:
    lines, `dags --errors` (also --verbose) and `versions` show them written out."""
    work = Git(tmp_path / "w").init()
    work.write(
        "dags/boom.py",
        'raise RuntimeError("\\x1b]0;pwned\\x07\\x1b[2J\\u202e \\x9b") # pinflow DAG\n',
    )
    work.write("dags/\x1b[31mred.py", "def broken(:  # pinflow DAG\n")
    work.run("add", "-A")
    work.run("commit", "-q", "-m", "escapes \x1b]0;title\x07 in the message \u202e")
    landed = push(server, repo_name, work)
    assert landed.returncode == 0, landed.stderr
    assert_nothing_raw(landed.stderr, "the push's remote: lines")
    assert "\\x1b]0;pwned\\x07" in errors_of(server, repo_name)["dags/boom.py"]
    for args in (("dags", "--errors"), ("dags", "--errors", "--verbose"), ("versions", repo_name)):
        for output in ("table", "plain"):
            assert_nothing_raw(cli(server, tmp_path, *args, "--output", output), " ".join(args))
    refused = push(server, f"{repo_name}s", work, strict=True)
    assert refused.returncode != 0 and "red.py" in refused.stderr
    assert_nothing_raw(refused.stderr, "a strict repository's refusal")


def test_threads_and_exit_handlers_a_file_leaves_do_not_hold_the_parse(
    server, repo_name, tmp_path, uid
):
    """After its last file the parse process ends at once: a thread that never ends or an
    atexit handler that sleeps would have kept it (and the push) waiting forever."""
    lingers = f"""# pinflow DAG
import atexit, threading, time
threading.Thread(target=time.sleep, args=(3600,)).start()
atexit.register(time.sleep, 3600)
from pinflow import DAG, task
with DAG("lingers_{uid}", schedule=None):
    @task
    def t():
        return 1
    t()
"""
    work = Git(tmp_path / "w").init()
    work.commit("lingers", **{"dags__lingers.py": lingers})
    landed = push(server, repo_name, work)  # Git.run gives up after 120 s
    assert f"lingers_{uid} parsed" in landed.stderr, landed.stderr


def test_any_exit_code_is_that_files_error(server, repo_name, tmp_path, uid):
    """Under bubblewrap a child's exit code 128+N stands for signal N; one that names no
    signal Python knows (160: real-time signal 32) is still just that file's error."""
    work = Git(tmp_path / "w").init()
    work.commit(
        "exits",
        **{
            "dags__a160.py": "import os  # pinflow DAG\nos._exit(160)\n",
            "dags__b137.py": "import os  # pinflow DAG\nos.kill(os.getpid(), 9)\n",
            "dags__c3.py": "import os  # pinflow DAG\nos._exit(3)\n",
            "dags__d.py": PIPE_WRITER.format(write="", dag_id=f"after_exits_{uid}"),
        },
    )
    landed = push(server, repo_name, work)
    assert landed.returncode == 0, landed.stderr
    errors = errors_of(server, repo_name)
    assert "killed by signal 32 (or exited with code 160)" in errors["dags/a160.py"], errors
    assert "killed by SIGKILL" in errors["dags/b137.py"], errors
    assert "exited with code 3" in errors["dags/c3.py"], errors
    assert f"after_exits_{uid}" in dag_ids(server)
