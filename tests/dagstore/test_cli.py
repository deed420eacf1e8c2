"""The `pinflow` CLI of the store, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import select, text

from dagstore.access.tokens import hash_token
from dagstore.core.db import Database
from dagstore.core.models import Token
from pinflow.migrate import alembic_config
from tests.support.git import Git
from tests.support.ports import free_port
from tests.support.server import PINFLOW, pinflow_env
from tests.support.store import storage_for, write_commits


def pinflow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PINFLOW, *args], env=env, capture_output=True, text=True, timeout=120)


def test_token_create_prints_only_the_token_and_stores_its_hash(tmp_path, database_url):
    env = pinflow_env(tmp_path, database_url)
    assert pinflow("db", "upgrade", env=env).returncode == 0
    result = pinflow("token", "create", "--scope", "push", "--name", "ci", env=env)
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip()
    assert result.stdout == secret + "\n" and secret.startswith("pf_") and len(secret) > 40
    db = Database(database_url)
    with db.read() as session:
        row = session.scalar(select(Token).where(Token.token_hash == hash_token(secret)))
        assert row is not None and row.scope == "push" and row.name == "ci"
        dump = " ".join(str(v) for v in session.execute(text("SELECT * FROM tokens")).all())
    db.dispose()
    assert secret not in dump


def test_token_bad_scope_is_one_clear_line(tmp_path):
    env = pinflow_env(tmp_path, f"sqlite:///{tmp_path}/p.db")
    result = pinflow("token", "create", "--scope", "root", env=env)
    assert result.returncode != 0
    assert "unknown scope 'root'" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_commands_never_create_a_database(tmp_path, database_url):
    """Run where there is no database (another folder, a fresh PostgreSQL database), token
    commands say so and create nothing, instead of minting a token no server will accept."""
    env = pinflow_env(tmp_path / "elsewhere", database_url)
    for args in (("token", "create", "--scope", "read"), ("token", "list"),
                 ("token", "revoke", "1")):  # fmt: skip
        result = pinflow(*args, env=env)
        assert result.returncode == 4, (args, result.stderr)
        assert "no pinflow database at" in result.stderr and "pinflow db upgrade" in result.stderr
        assert "Traceback" not in result.stderr and not result.stdout
    assert not (tmp_path / "elsewhere").exists()
    if database_url.startswith("sqlite"):
        assert not Path(database_url.removeprefix("sqlite:///")).exists()
    else:
        db = Database(database_url)
        with db.read() as session:  # still no schema: nothing was migrated into it
            assert not session.execute(text("SELECT to_regclass('tokens')")).scalar()
        db.dispose()


def test_concurrent_db_upgrade(tmp_path, database_url):
    """Several processes starting at once all succeed and leave one schema at head."""
    env = pinflow_env(tmp_path, database_url)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: pinflow("db", "upgrade", env=env), range(4)))
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    from alembic.script import ScriptDirectory

    db = Database(database_url)
    head = ScriptDirectory.from_config(alembic_config(db)).get_current_head()
    with db.read() as session:
        assert session.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    db.dispose()


def test_repo_create_versions_and_errors(store_server, tmp_path, repo_name):
    env = pinflow_env(
        tmp_path,
        "sqlite:///unused",
        PINFLOW_API_URL=store_server.url,
        PINFLOW_TOKEN=store_server.tokens["admin"],
    )
    created = pinflow("repo", "create", repo_name, "--track", "main", env=env)
    assert created.returncode == 0, created.stderr
    assert f"{store_server.url}/git/{repo_name}.git" in created.stdout
    again = pinflow("repo", "create", repo_name, env=env)
    assert again.returncode != 0 and "already exists" in again.stderr
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr

    work = Git(tmp_path / "w").init()
    sha = work.commit("hello versions", **{"a.py": "1\n"})
    work.run("push", store_server.git_url(repo_name, store_server.tokens["push"]), "main")
    listed = pinflow("versions", repo_name, env=env)
    assert listed.returncode == 0, listed.stderr
    assert sha[:12] in listed.stdout and "hello versions" in listed.stdout
    assert repo_name in pinflow("repo", "list", env=env).stdout

    missing = pinflow("versions", "nosuchrepo", env=env)
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_cli_without_token_or_server(tmp_path):
    env = pinflow_env(tmp_path, "sqlite:///unused")
    no_token = pinflow("repo", "create", "x", env=env)
    assert no_token.returncode != 0
    assert "no token" in no_token.stderr and "Traceback" not in no_token.stderr

    env["PINFLOW_TOKEN"] = "pf_whatever"
    env["PINFLOW_API_URL"] = f"http://127.0.0.1:{free_port()}"
    down = pinflow("versions", "x", env=env)
    assert down.returncode != 0
    assert "cannot reach the pinflow API" in down.stderr
    assert down.stderr.count("\n") == 1


def test_server_start_records_versions_missed_by_a_crash(tmp_path, database_url):
    """A crash between the ref update and the database write: the next start catches up."""
    from tests.support.server import start_server

    home = tmp_path / "home"
    server = start_server(home, database_url)
    try:
        server.create_repo("crashy")
    finally:
        server.stop()
    # Commits and the ref straight into the store, as if the server died before recording
    # the versions.
    work = Git(tmp_path / "w").init()
    shas = [work.commit(f"c{i}", **{"a.py": f"{i}\n"}) for i in range(2)]
    db = Database(database_url)
    try:
        write_commits(storage_for(db, tmp_path / "writer"), "crashy", work)
    finally:
        db.dispose()
    server.start()
    try:
        with server.api("read") as api:
            items = api.get("/repos/crashy/versions").json()["items"]
        assert [v["sha"] for v in items] == shas[::-1]
    finally:
        server.stop()


def test_home_is_created(tmp_path: Path):
    home = tmp_path / "fresh" / "home"
    env = pinflow_env(home, f"sqlite:///{home}/pinflow.db")
    assert pinflow("db", "upgrade", env=env).returncode == 0
    assert (home / "pinflow.db").exists()
    assert (home.stat().st_mode & 0o777, (home / "pinflow.db").stat().st_mode & 0o777) == (
        0o700,
        0o600,
    ), "PINFLOW_HOME and the SQLite file must be the user's alone"


def test_token_list_shows_ids_scopes_and_last_use_never_a_secret(store_server, tmp_path):
    env = pinflow_env(store_server.home, store_server.database_url)
    created = pinflow("token", "create", "--scope", "read", "--name", "to-revoke", env=env)
    assert created.returncode == 0, created.stderr
    token_id = int(created.stderr.split("created token ")[1].split()[0])
    assert pinflow("token", "revoke", str(token_id), env=env).returncode == 0
    with store_server.api("read") as api:
        assert api.get("/repos").status_code == 200  # the read token is used now
    listed = pinflow("token", "list", "--output", "json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {t["id"]: t for t in json.loads(listed.stdout)}
    assert (rows[token_id]["name"], rows[token_id]["scope"]) == ("to-revoke", "read")
    assert rows[token_id]["revoked_at"], "the revoked token is not shown as revoked"
    read_row = next(t for t in rows.values() if t["scope"] == "read" and t["id"] != token_id)
    assert read_row["last_used_at"], "the read token's last use is not shown"
    assert set(read_row) == {"id", "name", "scope", "created_at", "last_used_at", "revoked_at"}
    # Piped, the default is plain columns with nothing cut: every id and scope is readable.
    plain = pinflow("token", "list", env=env).stdout.splitlines()
    assert plain[0].split() == ["id", "name", "scope", "created", "last", "used", "revoked"]
    assert any(line.split()[:3] == [str(token_id), "to-revoke", "read"] for line in plain)
    assert "…" not in "".join(plain) and "│" not in "".join(plain)
    for shown in (listed.stdout, "\n".join(plain)):
        assert created.stdout.strip() not in shown
        assert all(secret not in shown for secret in store_server.tokens.values())


def test_repo_create_prints_a_push_recipe_that_keeps_the_token_out_of_urls(store_server, tmp_path):
    """What `repo create` prints works as printed, with a push token that appears in no URL,
    no .git/config and no command line."""
    import shlex

    admin = store_server.tokens["admin"]
    env = pinflow_env(store_server.home, store_server.database_url,
                      PINFLOW_API_URL=store_server.url, PINFLOW_TOKEN=admin)  # fmt: skip
    created = pinflow("repo", "create", "recipe", env=env)
    assert created.returncode == 0, created.stderr
    commands = [line.strip() for line in created.stdout.splitlines() if line.startswith("  git ")]
    assert len(commands) == 3 and all(t not in created.stdout for t in store_server.tokens.values())
    work = Git(tmp_path / "recipe").init()
    work.env["PINFLOW_PUSH_TOKEN"] = store_server.tokens["push"]
    work.commit("first", **{"dags/hi.py": "from pinflow import DAG\nDAG('recipe_hi')\n"})
    for command in commands:
        work.run(*shlex.split(command)[1:])
    config = (work.path / ".git/config").read_text()
    assert store_server.tokens["push"] not in config and "/git/recipe.git" in config
    with store_server.api("read") as api:
        assert api.get("/repos/recipe/versions").json()["items"], "the push did not land"


LOCAL_DAG = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def extract():
        print("extracting {marker}")
        return [1, 2, 3]

    @task
    def total(rows, context=None):
        return sum(rows) * context["conf"].get("factor", 1)

    @task
    def check(value):
        if value > {limit}:
            raise ValueError(f"too big: {{value}}")
        return "ok"

    check(total(extract()))
"""


def test_dags_test_runs_a_local_checkout_with_nothing_running(tmp_path):
    """`pinflow dags test`, as Airflow's: every task in order in one process, with no server,
    scheduler, Redis, worker or database (the API URL points at nothing); each task's log and
    result; a failure stops its downstream tasks and the exit code says so."""
    checkout = tmp_path / "checkout"
    (checkout / "dags").mkdir(parents=True)
    (checkout / "dags" / "etl.py").write_text(LOCAL_DAG.format(dag_id="lt", marker="local",
                                                               limit=100))  # fmt: skip
    (checkout / "dags" / "broken.py").write_text("import nope  # pinflow DAG\n")
    env = pinflow_env(tmp_path / "nohome", "sqlite:///nowhere/x.db",
                      PINFLOW_API_URL="http://127.0.0.1:9")  # fmt: skip
    ok = pinflow("dags", "test", "lt", "--path", str(checkout), "--conf", '{"factor": 2}', env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "--- extract: success" in ok.stdout and "extracting local" in ok.stdout
    assert "result: 12" in ok.stdout and "3 of 3 tasks succeeded" in ok.stdout
    big = pinflow("dags", "test", "lt", "--path", str(checkout), "--conf", '{"factor": 100}',
                  "-o", "json", env=env)  # fmt: skip
    assert big.returncode == 1
    reports = {r["task_id"]: r for r in json.loads(big.stdout)}
    assert reports["total"]["result"] == 600 and reports["check"]["state"] == "failed"
    assert "too big: 600" in reports["check"]["error"]
    missing = pinflow("dags", "test", "nope", "--path", str(checkout), env=env)
    assert missing.returncode == 4 and "no DAG 'nope'" in missing.stderr
    assert "dags/broken.py" in missing.stderr  # why it might not have been found
    assert not (tmp_path / "nohome").exists()


def test_dags_test_runs_a_stored_version(store_server, tmp_path):
    """With --sha, the version the store keeps (fetched and verified as a worker does), not
    what the checkout holds now."""
    admin = store_server.tokens["admin"]
    store_server.create_repo("tested")
    work = Git(tmp_path / "tested").init()
    old = work.commit("v1", **{"dags/etl.py": LOCAL_DAG.format(dag_id="st", marker="v1",
                                                               limit=100)})  # fmt: skip
    work.run("push", store_server.git_url("tested", store_server.tokens["push"]), "main")
    work.commit("v2", **{"dags/etl.py": LOCAL_DAG.format(dag_id="st", marker="v2", limit=100)})
    env = pinflow_env(tmp_path / "h", store_server.database_url, PINFLOW_API_URL=store_server.url,
                      PINFLOW_TOKEN=admin)  # fmt: skip
    stored = pinflow("dags", "test", "st", "--sha", old[:10], env=env)
    assert stored.returncode == 0, stored.stdout + stored.stderr
    assert "extracting v1" in stored.stdout
    local = pinflow("dags", "test", "st", "--path", str(work.path), env=env)
    assert "extracting v2" in local.stdout


def test_the_home_is_found_from_any_folder_below_it(tmp_path):
    """Issue 29, item 6: without PINFLOW_HOME, the nearest `.pinflow` in the working folder
    or above is the home (as git finds its repository); elsewhere the error says what to set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINFLOW_")}
    project, dags = tmp_path / "project", tmp_path / "project" / "mydags" / "dags"
    dags.mkdir(parents=True)

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PINFLOW, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )

    assert run("db", "upgrade", cwd=project).returncode == 0
    assert (project / ".pinflow" / "pinflow.db").exists()
    made = run("token", "create", "--scope", "read", "--name", "from-below", cwd=dags)
    assert made.returncode == 0, made.stderr
    listed = run("token", "list", cwd=dags)
    assert listed.returncode == 0 and "from-below" in listed.stdout, listed.stderr
    assert not (dags / ".pinflow").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lost = run("token", "list", cwd=elsewhere)
    assert lost.returncode == 4 and "set PINFLOW_HOME" in lost.stderr, lost.stderr
