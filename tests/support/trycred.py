"""A live try credential (`dagstore.access.grants`) for a version, with no scheduler or
worker."""

from __future__ import annotations

from sqlalchemy import select

from dagstore.access.grants import issue_grant
from dagstore.core.db import Database, db_time
from dagstore.core.models import Repo
from scheduler.runs import create_run
from scheduler.taskstate import queue_ready, schedule_ready
from scheduler.tries import claim


def running_try_credential(database_url: str, repo_name: str, sha: str) -> str:
    """A manual one-task run of `repo_name`@`sha` whose task is claimed, as a worker would,
    with a fresh credential: the credential that try's task code holds."""
    db = Database(database_url)
    try:
        with db.write() as session:
            repo_id = session.scalar(select(Repo.id).where(Repo.name == repo_name))
            assert repo_id is not None, repo_name
            now = db_time(session)
            run = create_run(
                session,
                dag_id=f"creds-{sha[:12]}",
                repo_id=repo_id,
                sha=sha,
                fileloc="dags/creds.py",
                structure={"tasks": [{"task_id": "only", "upstream": [], "retries": 0}]},
                logical_date=now,
                run_type="manual",
                created_by="test",
            )
            schedule_ready(session, run, now)
            (job,) = queue_ready(session, now, run_pk=run.id)
            credential, grant_hash = issue_grant(job.ti_id, job.try_number)
            claim(session, job.ti_id, job.try_number, "w", now, grant_hash=grant_hash)
            return credential
    finally:
        db.dispose()
