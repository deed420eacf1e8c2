"""Diffs between versions (issue 15): files with unified diffs and DAG structure changes,
through the API and `pinflow diff`, on a real server fed by real pushes."""

from __future__ import annotations

import subprocess

from dagstore.diff import MAX_PATCH_BYTES
from tests.support.git import Git
from tests.support.server import PINFLOW, pinflow_env

DAG_V1 = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule="@daily", start_date="2026-01-01"):
    @task
    def extract():
        return 1

    @task
    def load(x):
        return x

    load(extract())
"""

DAG_V2 = """
from pinflow import DAG, task

with DAG("{dag_id}", schedule="@hourly", start_date="2026-01-01"):
    @task
    def extract():
        return 1

    @task
    def transform(x):
        return x * 2

    transform(extract())
"""

MOVED = "".join(f"line {i} of a module that moves without changing\n" for i in range(40))


def cli(server, *args: str) -> subprocess.CompletedProcess[str]:
    env = pinflow_env(
        server.home,
        server.database_url,
        PINFLOW_API_URL=server.url,
        PINFLOW_TOKEN=server.tokens["admin"],
    )
    return subprocess.run([PINFLOW, *args], env=env, capture_output=True, text=True, timeout=60)


def test_diff_between_versions_and_since_a_run(store_server, tmp_path, repo_name):
    dag_id = f"diffed_{repo_name}".replace("-", "_")
    store_server.create_repo(repo_name)
    work = Git(tmp_path / "w").init()
    url = store_server.git_url(repo_name, store_server.tokens["push"])
    work.write("data.bin", b"\x00\x01\x02" * 100)
    base = work.commit(
        "v1",
        **{
            "dags/d.py": DAG_V1.format(dag_id=dag_id),
            "old_name.py": MOVED,
            "gone.txt": "bye\n",
            "big.txt": "small\n",
        },
    )
    work.run("push", url, "main")
    with store_server.api("trigger") as api:
        run = api.post(f"/dags/{dag_id}/runs", json={}).json()
    work.run("rm", "-q", "gone.txt")
    work.run("mv", "old_name.py", "new_name.py")
    work.write("data.bin", b"\x00\x09\x02" * 100)
    head = work.commit(
        "v2",
        **{
            "dags/d.py": DAG_V2.format(dag_id=dag_id),
            "added.txt": "hello\n",
            "big.txt": "x" * 80 + "\n" * 1 + "".join(f"{i:080}\n" for i in range(4000)),
        },
    )
    work.run("push", url, "main")

    with store_server.api("read") as api:
        body = api.get(f"/repos/{repo_name}/diff/{base[:7]}..main").json()
    assert (body["base"], body["head"]) == (base, head)
    files = {f["path"]: f for f in body["files"]}
    assert files["added.txt"]["status"] == "added" and "+hello" in files["added.txt"]["patch"]
    assert files["gone.txt"]["status"] == "deleted" and "-bye" in files["gone.txt"]["patch"]
    assert files["new_name.py"]["status"] == "renamed"
    assert files["new_name.py"]["old_path"] == "old_name.py"
    modified = files["dags/d.py"]
    assert modified["status"] == "modified" and "+    def transform(x):" in modified["patch"]
    assert "-with DAG(" in modified["patch"] and modified["patch"].startswith("diff --git")
    assert files["data.bin"]["binary"] and "Binary files" in files["data.bin"]["patch"]
    assert files["big.txt"]["truncated"] and len(files["big.txt"]["patch"]) <= MAX_PATCH_BYTES
    (dag,) = body["dags"]
    assert dag["dag_id"] == dag_id and dag["change"] == "changed"
    assert dag["tasks_added"] == ["transform"] and dag["tasks_removed"] == ["load"]
    assert dag["settings_changed"] == ["schedule"]

    # The CLI, both ways: since the run's commit, and between two commits.
    since = cli(store_server, "diff", run["run_id"])
    assert since.returncode == 0, since.stderr
    assert f"{base[:12]}..{head[:12]}" in since.stdout
    assert f"DAG {dag_id}: tasks added transform; tasks removed load; schedule changed" in (
        since.stdout
    )
    assert "renamed: old_name.py → new_name.py" in since.stdout and "+hello" in since.stdout
    between = cli(store_server, "diff", repo_name, head, base)
    assert between.returncode == 0 and "added: gone.txt" in between.stdout
    same = cli(store_server, "diff", run["run_id"], "--to", base)
    assert same.returncode == 0 and "no file changed" in same.stdout

    # Bad input: a clear 4xx, one line from the CLI.
    with store_server.api("read") as api:
        tree = api.get(f"/repos/{repo_name}/tree/{head}").json()["files"]
        assert {f["path"] for f in tree} >= {"added.txt", "new_name.py", "dags/d.py"}
        assert "gone.txt" not in {f["path"] for f in tree}
        assert api.get(f"/repos/{repo_name}/tree/main").status_code == 400
        assert api.get(f"/repos/{repo_name}/tree/{'0' * 40}").status_code == 404
        assert api.get(f"/repos/{repo_name}/diff/{base}").status_code == 400
        assert api.get(f"/repos/{repo_name}/diff/{base}...{head}").status_code == 400
        assert api.get(f"/repos/{repo_name}/diff/{'0' * 40}..{head}").status_code == 404
        assert api.get(f"/repos/nosuchrepo/diff/{base}..{head}").status_code == 404
    unknown = cli(store_server, "diff", repo_name, "deadbeef", head)
    assert unknown.returncode != 0 and len(unknown.stderr.strip().splitlines()) == 1
    assert "Traceback" not in unknown.stderr
    half = cli(store_server, "diff", repo_name, base)
    assert half.returncode != 0 and "REPO BASE HEAD" in half.stderr
