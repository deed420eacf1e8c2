"""DAG rows as the store leaves them after parsing, for scheduler tests that need no push."""

from __future__ import annotations

from datetime import datetime

from dagstore.db import Database
from dagstore.models import Dag, Repo


def insert_dags(db: Database, repo_name: str, structures: dict[str, dict]) -> None:
    """DAG rows as the store would leave them after parsing, without a push."""
    with db.write() as session:
        repo = Repo(name=repo_name, track="main", strict=False)
        session.add(repo)
        session.flush()
        session.add_all(
            Dag(
                dag_id=dag_id,
                repo_id=repo.id,
                fileloc="dags/d.py",
                current_sha="a" * 40,
                structure={**structure, "dag_id": dag_id},
                structure_hash="h",
                schedule=structure["schedule"],
                is_active=True,
                is_paused=False,
            )
            for dag_id, structure in structures.items()
        )


def daily(start: datetime, max_active_runs: int = 16) -> dict:
    return {
        "schedule": "@daily",
        "catchup": True,
        "start_date": start.isoformat(),
        "end_date": None,
        "max_active_runs": max_active_runs,
        "tasks": [{"task_id": "only", "upstream": [], "retries": 0}],
    }


def every(seconds: int, start: datetime, max_active_runs: int = 100_000) -> dict:
    return {**daily(start, max_active_runs), "schedule": f"timedelta:{seconds}"}
