"""The authoring surface: `from pinflow import DAG, task`, complete and cheap to import."""

from __future__ import annotations

import subprocess
import sys

import pinflow


def test_public_api_is_exactly_all():
    assert sorted(pinflow.__all__) == ["DAG", "task"]
    for name in pinflow.__all__:
        assert getattr(pinflow, name) is not None


def test_authoring_import_is_cheap():
    """DAG files import pinflow on every worker and in every parse: no server stack."""
    code = (
        "import sys\n"
        "from pinflow import DAG, task\n"
        "heavy = [m for m in ('fastapi', 'sqlalchemy', 'dulwich', 'redis', 'rq', 'httpx', 'typer')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
