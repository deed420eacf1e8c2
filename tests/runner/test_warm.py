"""runner.warm: DAG files imported ahead of their tasks (in a warm fork server), safely."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runner import warm
from runner.warm import WarmDags

DAG = """
from pinflow import DAG, task
from helpers import VERSION
{top}
with DAG("{dag_id}", schedule=None):
    @task
    def read():
        return VERSION

    read()
"""


def version(root: Path, sha: str, top: str = "", helper: str = "one") -> Path:
    folder = root / sha
    (folder / "dags").mkdir(parents=True)
    (folder / "dags" / "helpers.py").write_text(f"VERSION = {helper!r}\n")
    (folder / "dags" / "d.py").write_text(DAG.format(top=top, dag_id=f"d{sha[:4]}"))
    return folder


@pytest.fixture
def dags(tmp_path) -> WarmDags:
    before = set(sys.modules), list(sys.path)
    w = WarmDags()
    yield w
    for name in set(sys.modules) - before[0]:
        del sys.modules[name]
    sys.path[:] = before[1]


def test_load_imports_once_and_get_returns_the_same_dags(dags, tmp_path):
    root = version(tmp_path, "a" * 40)
    assert dags.load(root, "dags/d.py", "a" * 40) is None
    warmed = dags.dags["dags/d.py"]
    assert dags.get(root, "dags/d.py", "a" * 40) is warmed
    assert warmed[0].get_task("read").call({}, {}) == "one"


def test_another_version_drops_the_first_ones_modules(dags, tmp_path):
    first = version(tmp_path, "a" * 40, helper="one")
    second = version(tmp_path, "b" * 40, helper="two")
    dags.load(first, "dags/d.py", "a" * 40)
    dags.load(second, "dags/d.py", "b" * 40)
    assert dags.get(second, "dags/d.py", "b" * 40)[0].get_task("read").call({}, {}) == "two"
    assert str(first / "dags") not in sys.path
    assert all(not (getattr(m, "__file__", None) or "").startswith(str(first)) for m in
               list(sys.modules.values()))  # fmt: skip
    assert dags.get(first, "dags/d.py", "a" * 40)[0].get_task("read").call({}, {}) == "one"


def test_no_fork_server_for_an_uncached_version_or_an_unclaimed_try(tmp_path):
    """Fork servers start for a claimed try whose version is in the local cache only."""
    from dagstore.core.protocol import TaskSpec
    from runner.claim import Claimed, Dropped
    from runner.forkserver import WarmServers

    servers = WarmServers()
    asked = []
    servers.enable(lambda repo, sha: asked.append((repo, sha)))  # nothing is cached
    spec = TaskSpec(
        ti_id=1, try_number=1, run_id="r", dag_id="d", task_id="t", repo="repo", sha="c" * 40,
        fileloc="dags/d.py", logical_date="", conf={}, timeout=None, upstream_results={},
        heartbeat_interval=1.0, credential="pftry_1_1_x",
    )  # fmt: skip
    assert servers.for_claim(object(), Dropped("taken")) is None
    assert servers.for_claim(object(), Claimed(spec, 0.0)) is None
    assert asked == [("repo", "c" * 40)] and servers.current is None


@pytest.mark.parametrize(
    "top, reason",
    [
        ("raise ValueError('broken at import')", "ValueError"),
        ("raise SystemExit(3)", "SystemExit"),
        ("import time\ntime.sleep(30)", "_ImportTimeout"),
    ],
)
def test_a_bad_dag_file_is_not_warmed_and_the_server_goes_on(
    dags, tmp_path, monkeypatch, caplog, top, reason
):
    monkeypatch.setattr(warm, "IMPORT_TIMEOUT", 0.5)
    root = version(tmp_path, "e" * 40, top=top)
    with caplog.at_level("INFO", logger="pinflow.worker"):
        assert reason in (dags.load(root, "dags/d.py", "e" * 40) or "")  # never raises
        assert dags.load(root, "dags/d.py", "e" * 40)  # and is not tried twice
    assert "dags/d.py" not in dags.dags and "dags/d.py" in dags.failed
    assert reason in caplog.text
    assert caplog.text.count("not warming") == 1
