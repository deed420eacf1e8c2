"""The layers of README's "Layout", kept by import-linter's contracts in pyproject.toml.

The second test is the check's own check: the same contracts over a copy of the tree with one
import that points the wrong way must fail, naming the contract and the import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pinflow", "scheduler", "runner", "dagstore")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_import_points_down():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_import_that_points_up_breaks_the_check(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    schedule = tmp_path / "dagstore" / "authoring" / "schedule.py"
    schedule.write_text(schedule.read_text() + "\nfrom dagstore.git import repo  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout
    assert "dagstore's wings" in done.stdout and "BROKEN" in done.stdout, done.stdout
    assert "dagstore.authoring.schedule -> dagstore.git.repo" in done.stdout, done.stdout
