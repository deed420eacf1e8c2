"""Reading DAGs back: their current structure, their history, and import errors."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dagstore.core.db import iso
from dagstore.core.errors import NotFound
from dagstore.core.models import Dag, Repo, Version, VersionDag, VersionError
from dagstore.git.models import GitRef


def get_dag(session: Session, dag_id: str) -> Dag:
    row = session.scalar(select(Dag).where(Dag.dag_id == dag_id))
    if row is None:
        raise NotFound(f"DAG {dag_id!r} does not exist")
    return row


def list_dags(session: Session) -> list[tuple[Dag, str]]:
    return list(session.execute(select(Dag, Repo.name).join(Repo).order_by(Dag.dag_id)).all())


def tasks_json(structure: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "task_id": t["task_id"],
            "upstream": t.get("upstream", []),
            "retries": t.get("retries", 0),
            "retry_delay": t.get("retry_delay"),
            "timeout": t.get("timeout"),
            "queue": t.get("queue"),
            "trigger_rule": t.get("trigger_rule", "all_success"),
            "pool": t.get("pool"),
            "branch": bool(t.get("branch")),
            "mapped": t.get("mapped"),
        }
        for t in structure.get("tasks", [])
    ]


def dag_json(row: Dag, repo_name: str) -> dict[str, Any]:
    structure = row.structure or {}
    return {
        "dag_id": row.dag_id,
        "repo": repo_name,
        "fileloc": row.fileloc,
        "current_sha": row.current_sha,
        "schedule": row.schedule,
        "is_paused": row.is_paused,
        "is_active": row.is_active,
        # When the next scheduled run is due (None: not computed yet, or no more ticks), and
        # whether the schedule has no ticks left (@once done, past end_date).
        "next_due_at": iso(row.next_due_at),
        "schedule_ended": row.schedule_ended,
        "description": structure.get("description", ""),
        "tags": structure.get("tags", []),
        "timezone": structure.get("timezone", "UTC"),
        "dagrun_timeout": structure.get("dagrun_timeout"),
        "max_active_tasks": structure.get("max_active_tasks"),
        "structure_hash": row.structure_hash,
        "tasks": tasks_json(structure),
        "last_error": row.last_error,
        "updated_at": iso(row.updated_at),
    }


def current_versions(session: Session) -> dict[str, dict[str, Any]]:
    """dag_id → the message and push time of its current version, for every DAG at once."""
    rows = session.execute(
        select(Dag.dag_id, Version.message, Version.pushed_at).join(
            Version, Version.id == Dag.current_version_id
        )
    )
    return {
        dag_id: {"message": message or "", "pushed_at": iso(pushed_at)}
        for dag_id, message, pushed_at in rows
    }


def structure_history(session: Session, dag_id: str) -> list[dict[str, Any]]:
    """The versions where the DAG's structure changed, newest first."""
    rows = session.execute(
        select(Version.sha, Version.pushed_at, VersionDag.structure_hash)
        .join(VersionDag, VersionDag.version_id == Version.id)
        .where(VersionDag.dag_id == dag_id)
        .order_by(Version.id)
    ).all()
    changes: list[dict[str, Any]] = []
    for sha, pushed_at, structure_hash in rows:
        if not changes or changes[-1]["structure_hash"] != structure_hash:
            changes.append(
                {"sha": sha, "pushed_at": iso(pushed_at), "structure_hash": structure_hash}
            )
    return changes[::-1]


def version_contents(
    session: Session, version_ids: list[int]
) -> tuple[dict[int, list[str]], dict[int, list[dict[str, str]]]]:
    """DAG ids and file errors of many versions in two queries."""
    dags: dict[int, list[str]] = {i: [] for i in version_ids}
    errors: dict[int, list[dict[str, str]]] = {i: [] for i in version_ids}
    if not version_ids:
        return dags, errors
    for version_id, dag_id in session.execute(
        select(VersionDag.version_id, VersionDag.dag_id)
        .where(VersionDag.version_id.in_(version_ids))
        .order_by(VersionDag.dag_id)
    ):
        dags[version_id].append(dag_id)
    for e in session.scalars(
        select(VersionError)
        .where(VersionError.version_id.in_(version_ids))
        .order_by(VersionError.file)
    ):
        errors[e.version_id].append({"file": e.file, "error": e.summary, "traceback": e.error})
    return dags, errors


def version_dag(session: Session, repo_id: int, sha: str, dag_id: str) -> VersionDag | None:
    """The DAG as version `sha` defines it, or None when it doesn't (or failed to parse)."""
    return session.scalar(
        select(VersionDag)
        .join(Version, Version.id == VersionDag.version_id)
        .where(Version.repo_id == repo_id, Version.sha == sha, VersionDag.dag_id == dag_id)
    )


def tip_versions(session: Session) -> list[tuple[Repo, Version]]:
    """Each repo's tracked-ref tip as a recorded version (repos with no tip are left out)."""
    tracked = "refs/heads/" + Repo.track
    rows = session.execute(
        select(Repo, Version)
        .join(GitRef, (GitRef.repo_id == Repo.id) & (GitRef.name == tracked))
        .join(Version, (Version.repo_id == Repo.id) & (Version.sha == GitRef.value))
        .order_by(Repo.name)
    )
    return [(repo, version) for repo, version in rows]


def import_errors(session: Session) -> list[dict[str, Any]]:
    """The broken DAG files at each repo's tracked tip: what `pinflow dags --errors` shows."""
    tips = tip_versions(session)
    _, errors = version_contents(session, [v.id for _, v in tips])
    return [
        {"repo": repo.name, "sha": version.sha, **error}
        for repo, version in tips
        for error in errors[version.id]
    ]
