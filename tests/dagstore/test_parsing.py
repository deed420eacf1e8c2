"""Parsing every pushed version, through real pushes to a real server."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from dagstore.core.db import Database, as_utc
from dagstore.core.models import Dag
from scheduler.loop import Scheduler, SchedulerConfig
from tests.conftest import BACKENDS, serve
from tests.support.git import Git
from tests.support.server import PINFLOW, ServerProcess, pinflow_env

PARSE_TIMEOUT = "3"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory) -> Iterator[ServerProcess]:
    """Short parse limits, so the hang and memory cases finish fast."""
    yield from serve(
        request,
        tmp_path_factory,
        PINFLOW_PARSE_TIMEOUT=PARSE_TIMEOUT,
        PINFLOW_PARSE_MEMORY_MB="512",
    )


def etl(dag_id: str, extra: str = "") -> str:
    return f'''
from pinflow import DAG, task
from helpers import ROWS
from common.util import double

with DAG("{dag_id}", schedule="@daily", start_date="2026-01-01", tags=["etl"]):
    @task(retries=2, timeout=60)
    def extract():
        return ROWS

    @task
    def transform(rows):
        return [double(r) for r in rows]

    @task
    def load(rows):
        return len(rows)

    load(transform(extract()))
{extra}
'''


def report(dag_id: str) -> str:
    return f'''
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def a():
        return 1

    @task
    def b():
        return 2

    a() >> b()
'''


class Repo:
    """A store repo with a work tree to push from."""

    def __init__(self, server: ServerProcess, name: str, path: Path, **create) -> None:
        self.server = server
        self.name = name
        server.create_repo(name, **create)
        self.work = Git(path).init()
        self.work.write("dags/helpers.py", "ROWS = [1, 2, 3]\n")
        self.work.write("dags/common/__init__.py", "")
        self.work.write("dags/common/util.py", "def double(x):\n    return 2 * x\n")

    def push(
        self, message: str, files: dict[str, str | bytes | None]
    ) -> tuple[str, subprocess.CompletedProcess[str]]:
        for rel, content in files.items():
            if content is None:
                (self.work.path / rel).unlink()
            else:
                self.work.write(rel, content)
        sha = self.work.commit(message)
        url = self.server.git_url(self.name, self.server.tokens["push"])
        return sha, self.work.run("push", url, "main", check=False)

    def api(self, path: str) -> dict:
        with self.server.api("read") as api:
            response = api.get(path)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def repo(server, repo_name, tmp_path) -> Repo:
    return Repo(server, repo_name, tmp_path / "work")


def test_good_files_parse_with_sibling_imports(repo: Repo, uid):
    sha, push = repo.push(
        "etl", {"dags/etl.py": etl(f"etl_{uid}"), "dags/report.py": report(f"report_{uid}")}
    )
    assert push.returncode == 0, push.stderr
    assert f"remote: pinflow: etl_{uid}, report_{uid} parsed at {sha[:7]}" in push.stderr
    dag = repo.api(f"/dags/etl_{uid}")
    assert dag["current_sha"] == sha
    assert dag["repo"] == repo.name
    assert dag["fileloc"] == "dags/etl.py"
    assert dag["schedule"] == "@daily"
    assert dag["is_active"] and not dag["is_paused"]
    assert dag["last_error"] is None
    tasks = {t["task_id"]: t for t in dag["tasks"]}
    assert tasks["extract"]["upstream"] == [] and tasks["extract"]["retries"] == 2
    assert tasks["transform"]["upstream"] == ["extract"]
    assert tasks["load"]["upstream"] == ["transform"]
    assert [t["upstream"] for t in repo.api(f"/dags/report_{uid}")["tasks"]] == [[], ["a"]]
    version = repo.api(f"/repos/{repo.name}/versions")["items"][0]
    assert version["sha"] == sha and version["parse_state"] == "parsed"
    assert version["dags"] == sorted([f"etl_{uid}", f"report_{uid}"])
    assert version["errors"] == []


BAD_FILES = {
    "syntax": ("def broken(:\n    pass\n# pinflow DAG\n", "SyntaxError", "(line 1)"),
    "missing_module": (
        "import no_such_module_xyz  # pinflow DAG\n",
        "ModuleNotFoundError",
        "no_such_module_xyz",
    ),
    "sys_exit": ("import sys  # pinflow DAG\nsys.exit(3)\n", "SystemExit", "sys.exit(3)"),
    "os_exit": ("import os  # pinflow DAG\nos._exit(7)\n", "exited with code 7", ""),
    "infinite_loop": ("# pinflow DAG\nwhile True:\n    pass\n", "timed out", f"{PARSE_TIMEOUT} s"),
    "sleep_forever": ("import time  # pinflow DAG\ntime.sleep(3600)\n", "timed out", ""),
    "memory_hog": ("# pinflow DAG\nblob = bytearray(4 * 1024 ** 3)\n", "MemoryError", "512 MiB"),
    "non_utf8": (b"# pinflow DAG\nx = '\xff\xfe'\n", "SyntaxError", "utf-8"),
    "cycle": (
        "from pinflow import DAG, task\nwith DAG('cyc_UID'):\n"
        "    @task\n    def a(): pass\n    @task\n    def b(): pass\n"
        "    x, y = a(), b()\n    x >> y\n    y >> x\n",
        "cycle",
        "cyc_UID",
    ),
    "prints": (
        "print('hello from import')  # pinflow DAG\nraise ValueError('boom')\n",
        "ValueError: boom",
        "",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_a_recorded_error_not_a_broken_store(repo: Repo, uid, case):
    content, expected, detail = BAD_FILES[case]
    if isinstance(content, str):
        content = content.replace("UID", uid)
    sha, push = repo.push(case, {"dags/etl.py": etl(f"etl_{uid}"), f"dags/bad_{case}.py": content})
    assert push.returncode == 0, push.stderr
    line = next(x for x in push.stderr.splitlines() if "parsed at" in x)
    assert f"etl_{uid} parsed at {sha[:7]}" in line
    assert f"dags/bad_{case}.py: " in line and expected in line, line
    assert detail.replace("UID", uid) in line
    errors = repo.api(f"/repos/{repo.name}/versions")["items"][0]["errors"]
    assert [e["file"] for e in errors] == [f"dags/bad_{case}.py"]
    assert expected in errors[0]["error"]
    # The good DAG of the same commit is current regardless.
    assert repo.api(f"/dags/etl_{uid}")["current_sha"] == sha


def test_strict_repo_refuses_broken_push_and_keeps_ref(server, repo_name, tmp_path, uid):
    repo = Repo(server, repo_name, tmp_path / "w", strict=True)
    good, push = repo.push("good", {"dags/etl.py": etl(f"etl_{uid}")})
    assert push.returncode == 0, push.stderr
    _, refused = repo.push("bad", {"dags/etl.py": etl(f"etl_{uid}", extra="def oops(:\n")})
    assert refused.returncode != 0
    assert "[remote rejected]" in refused.stderr
    assert "strict" in refused.stderr and "SyntaxError" in refused.stderr
    assert repo.api(f"/repos/{repo_name}/refs")["refs"]["refs/heads/main"] == good
    assert repo.api(f"/dags/etl_{uid}")["current_sha"] == good


def test_broken_push_keeps_last_good_version(repo: Repo, uid):
    good, _ = repo.push("good", {"dags/etl.py": etl(f"etl_{uid}")})
    broken, push = repo.push("broken", {"dags/etl.py": etl(f"etl_{uid}", extra="def oops(:\n")})
    assert push.returncode == 0
    dag = repo.api(f"/dags/etl_{uid}")
    assert dag["current_sha"] == good, "a broken push must not take a working DAG away"
    assert dag["is_active"]
    assert "SyntaxError" in dag["last_error"] and broken[:7] in dag["last_error"]
    fixed, _ = repo.push("fixed", {"dags/etl.py": etl(f"etl_{uid}", extra="# fixed\n")})
    dag = repo.api(f"/dags/etl_{uid}")
    assert dag["current_sha"] == fixed and dag["last_error"] is None


def test_removed_dag_becomes_inactive_with_history(repo: Repo, uid):
    first, _ = repo.push(
        "two", {"dags/etl.py": etl(f"etl_{uid}"), "dags/report.py": report(f"report_{uid}")}
    )
    second, _ = repo.push("drop report", {"dags/report.py": None})
    gone = repo.api(f"/dags/report_{uid}")
    assert gone["is_active"] is False
    assert gone["current_sha"] == first
    assert [v["sha"] for v in gone["versions"]] == [first]
    assert repo.api(f"/dags/etl_{uid}")["current_sha"] == second
    listed = {d["dag_id"]: d for d in repo.api("/dags")["items"]}
    assert listed[f"report_{uid}"]["is_active"] is False


def test_structure_history(repo: Repo, uid):
    first, _ = repo.push("v1", {"dags/report.py": report(f"report_{uid}")})
    repo.push("same structure", {"dags/report.py": report(f"report_{uid}") + "\n# comment\n"})
    third, _ = repo.push(
        "v2", {"dags/report.py": report(f"report_{uid}").replace("a() >> b()", "b() >> a()")}
    )
    history = repo.api(f"/dags/report_{uid}")["versions"]
    assert [v["sha"] for v in history] == [third, first]


def scheduled(dag_id: str, schedule: str) -> str:
    return report(dag_id).replace(
        "schedule=None", f'schedule="{schedule}", start_date="2026-01-01"'
    )


def next_due(server: ServerProcess, dag_id: str) -> datetime:
    """Schedule the server's due DAGs once, in this process; `dag_id`'s next due time."""
    db = Database(server.database_url)
    sched = Scheduler(db, None, SchedulerConfig(name="test"))
    try:
        for _ in range(20):  # other tests' DAGs are due too: a tick takes ten at a time
            with db.read() as session:
                due = session.scalar(select(Dag.next_due_at).where(Dag.dag_id == dag_id))
            if due is not None:
                break
            sched.tick()
    finally:
        db.dispose()
    assert due is not None
    return as_utc(due)


def test_a_schedule_change_takes_effect_at_once(repo: Repo, uid):
    """@weekly → @hourly: the next run is due within the hour, not at next week's tick."""
    dag_id = f"sched_{uid}"
    repo.push("weekly", {"dags/s.py": scheduled(dag_id, "@weekly")})
    assert next_due(repo.server, dag_id) > datetime.now(UTC) + timedelta(hours=1)
    repo.push("hourly", {"dags/s.py": scheduled(dag_id, "@hourly")})
    due = next_due(repo.server, dag_id)
    assert due <= datetime.now(UTC) + timedelta(hours=1)
    shown = repo.api(f"/dags/{dag_id}")
    assert shown["next_due_at"] == due.isoformat().replace("+00:00", "Z")
    assert shown["schedule_ended"] is False


def test_duplicate_dag_id_in_one_commit(repo: Repo, uid):
    sha, push = repo.push(
        "dup", {"dags/a.py": report(f"dup_{uid}"), "dags/b.py": report(f"dup_{uid}")}
    )
    assert f"dags/b.py: DAG 'dup_{uid}' is already defined in dags/a.py" in push.stderr
    assert repo.api(f"/dags/dup_{uid}")["fileloc"] == "dags/a.py"


def test_duplicate_dag_id_across_repos(server, tmp_path, uid):
    first = Repo(server, f"first{uid}", tmp_path / "a")
    second = Repo(server, f"second{uid}", tmp_path / "b")
    sha1, _ = first.push("mine", {"dags/report.py": report(f"shared_{uid}")})
    _, push = second.push("also mine", {"dags/report.py": report(f"shared_{uid}")})
    assert f"already defined by repository 'first{uid}'" in push.stderr
    dag = first.api(f"/dags/shared_{uid}")
    assert dag["repo"] == f"first{uid}" and dag["current_sha"] == sha1


def test_repo_without_dags_folder_parses_root(server, repo_name, tmp_path, uid):
    server.create_repo(repo_name)
    work = Git(tmp_path / "flat").init()
    work.write("helpers.py", "ROWS = [1]\n")
    work.write("common/__init__.py", "")
    work.write("common/util.py", "def double(x):\n    return x\n")
    work.write("pipeline.py", etl(f"flat_{uid}"))
    sha = work.commit("flat")
    push = work.run("push", server.git_url(repo_name, server.tokens["push"]), "main")
    assert f"flat_{uid} parsed at {sha[:7]}" in push.stderr
    with server.api("read") as api:
        assert api.get(f"/dags/flat_{uid}").json()["fileloc"] == "pipeline.py"


def test_cli_dags_and_errors(repo: Repo, uid, tmp_path):
    repo.push(
        "mixed",
        {"dags/etl.py": etl(f"etl_{uid}"), "dags/bad.py": "import nope_mod  # pinflow DAG\n"},
    )
    env = pinflow_env(
        tmp_path,
        "sqlite:///unused",
        PINFLOW_API_URL=repo.server.url,
        PINFLOW_TOKEN=repo.server.tokens["read"],
    )
    listed = subprocess.run([PINFLOW, "dags"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert f"etl_{uid}" in listed.stdout and "@daily" in listed.stdout
    errors = subprocess.run([PINFLOW, "dags", "--errors"], env=env, capture_output=True, text=True)
    assert errors.returncode == 0
    assert "dags/bad.py" in errors.stdout and "nope_mod" in errors.stdout


def test_import_errors_name_repo_files_and_keep_the_whole_traceback(repo: Repo, uid, tmp_path):
    """No scratch-folder path in what an author reads: a syntax error in a helper names the
    helper as the repository does, a missing file's message too; the API and `dags --errors
    --verbose` keep the traceback whole (a deep one is cut in its middle, not its head)."""
    deep = "def f(n):\n    return g(n)\n\ndef g(n):\n    return f(n)\n\nf(0)  # pinflow DAG\n"
    repo.push(
        "broken",
        {
            "dags/uses_helper.py": "import dags.helper  # pinflow DAG\n",
            "dags/helper.py": "def broken(:\n",
            "dags/reads.py": "open(__file__.replace('reads.py', 'gone.csv'))  # pinflow DAG\n",
            "dags/deep.py": deep,
        },
    )
    env = pinflow_env(tmp_path, "sqlite:///unused", PINFLOW_API_URL=repo.server.url,
                      PINFLOW_TOKEN=repo.server.tokens["read"])  # fmt: skip
    with repo.server.api("read") as api:
        items = api.get("/import-errors").json()["items"]
    errors = {e["file"]: e for e in items if e["repo"] == repo.name}
    shown = " ".join(e["error"] + e["traceback"] for e in errors.values())
    assert "pinflow-parse" not in shown and "/version/" not in shown, shown  # the scratch folder
    assert "(dags/helper.py, line 1)" in errors["dags/uses_helper.py"]["error"]
    assert "dags/gone.csv" in errors["dags/reads.py"]["error"]
    recursion = errors["dags/deep.py"]["traceback"]
    assert recursion.startswith("Traceback") and "RecursionError" in recursion
    assert "lines ..." in recursion  # the middle of a thousand frames left out, said so
    verbose = subprocess.run([PINFLOW, "dags", "--errors", "--verbose"], env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert verbose.returncode == 0, verbose.stderr
    assert 'File "dags/uses_helper.py", line 1' in verbose.stdout
    assert "RecursionError" in verbose.stdout


def test_unknown_dag_is_404(server):
    with server.api("read") as api:
        response = api.get("/dags/no_such_dag")
    assert response.status_code == 404 and "does not exist" in response.json()["detail"]


def test_server_log_has_no_tracebacks(server):
    assert "Traceback" not in server.server_log()
