"""runner.warm: DAG files imported in the worker parent before the fork, safely."""

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


def version(root: Path, sha: str, top: str = "", helper: str = "one") -> tuple[Path, dict]:
    folder = root / sha
    (folder / "dags").mkdir(parents=True)
    (folder / "dags" / "helpers.py").write_text(f"VERSION = {helper!r}\n")
    (folder / "dags" / "d.py").write_text(DAG.format(top=top, dag_id=f"d{sha[:4]}"))
    payload = {
        "ti_id": 1, "try_number": 1, "run_id": "r", "repo": "repo", "sha": sha,
        "fileloc": "dags/d.py", "dag_id": f"d{sha[:4]}", "task_id": "read",
    }  # fmt: skip
    return folder, payload


@pytest.fixture
def dags(tmp_path) -> WarmDags:
    before = set(sys.modules), list(sys.path)
    w = WarmDags()
    w.enable(lambda repo, sha: tmp_path / sha if (tmp_path / sha).is_dir() else None)
    yield w
    for name in set(sys.modules) - before[0]:
        del sys.modules[name]
    sys.path[:] = before[1]


def test_prepare_imports_once_and_get_returns_the_same_dags(dags, tmp_path):
    root, payload = version(tmp_path, "a" * 40)
    dags.prepare(payload)
    warmed = dags.dags["dags/d.py"]
    assert dags.get(root, "dags/d.py", "a" * 40) is warmed
    assert warmed[0].get_task("read").call({}, {}) == "one"


def test_another_version_drops_the_first_ones_modules(dags, tmp_path):
    first, p1 = version(tmp_path, "a" * 40, helper="one")
    second, p2 = version(tmp_path, "b" * 40, helper="two")
    dags.prepare(p1)
    dags.prepare(p2)
    assert dags.get(second, "dags/d.py", "b" * 40)[0].get_task("read").call({}, {}) == "two"
    assert str(first / "dags") not in sys.path
    assert all(not (getattr(m, "__file__", None) or "").startswith(str(first)) for m in
               list(sys.modules.values()))  # fmt: skip
    assert dags.get(first, "dags/d.py", "a" * 40)[0].get_task("read").call({}, {}) == "one"


def test_an_uncached_version_is_left_to_the_horse(dags, tmp_path):
    _, payload = version(tmp_path, "c" * 40)
    payload["sha"] = "d" * 40  # not in the cache
    dags.prepare(payload)
    assert dags.root is None and not dags.dags


@pytest.mark.parametrize(
    "top, reason",
    [
        ("raise ValueError('broken at import')", "ValueError"),
        ("raise SystemExit(3)", "SystemExit"),
        ("import time\ntime.sleep(30)", "_ImportTimeout"),
    ],
)
def test_a_bad_dag_file_is_not_warmed_and_the_parent_goes_on(
    dags, tmp_path, monkeypatch, caplog, top, reason
):
    monkeypatch.setattr(warm, "IMPORT_TIMEOUT", 0.5)
    root, payload = version(tmp_path, "e" * 40, top=top)
    with caplog.at_level("INFO", logger="pinflow.worker"):
        dags.prepare(payload)  # never raises
        dags.prepare(payload)  # and is not tried twice
    assert "dags/d.py" not in dags.dags and "dags/d.py" in dags.failed
    assert reason in caplog.text
    assert caplog.text.count("not warming") == 1
