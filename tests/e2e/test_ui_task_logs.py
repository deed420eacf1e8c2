"""A task's log in a real browser (issue 29, items 2, 3 and 7): what the task printed, no
line of pinflow's HTTP client, the traceback from the user's own code, and one pinflow line
at its end saying how the try ended. Chromium through Debian's chromedriver, against a real
server, scheduler and worker (the fixtures of `tests.e2e.test_ui`)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_ui import Pages, browser, cluster  # noqa: F401 - fixtures
from tests.support.cluster import Cluster

NOISY = """
import time
from pinflow import DAG, task

with DAG("{dag_id}", schedule=None):
    @task
    def noisy():
        print("printed by noisy")
        time.sleep(3.5)  # heartbeats, each an HTTP request of the worker
        raise ValueError("noisy gave up")

    noisy()
"""


def test_the_log_page_shows_the_task_and_how_its_try_ended(
    cluster: Cluster,  # noqa: F811
    browser,  # noqa: F811
    tmp_path: Path,
    uid: str,
):
    assert cluster.server is not None
    dag_id = f"noisy_{uid}"
    work = cluster.repo(f"noisy{uid}", tmp_path / "w")
    cluster.push(work, "noisy", **{"dags/n.py": NOISY.format(dag_id=dag_id)})
    run_id = cluster.trigger(dag_id)["run_id"]
    assert cluster.wait(run_id)["state"] == "failed"
    ui = Pages(browser, cluster.server.url)
    ui.login(cluster.tokens["read"])
    ui.open(f"/runs/{run_id}?task=noisy&try=1", "task-log-ending")
    ending = "pinflow: try 1 failed: ValueError: noisy gave up"
    ui.wait(lambda: ending in ui.text(), "the log's ending line")
    shown = ui.text()
    assert "printed by noisy" in shown and 'File "dags/n.py", line' in shown
    for absent in ("HTTP Request", "/heartbeat", "runner/execute.py", "site-packages"):
        assert absent not in shown, absent
