"""Routes for DAGs: current structure, history, import errors."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from dagstore.api import shapes
from dagstore.api.auth import ReadToken, StoreDep
from dagstore.core.models import Repo
from dagstore.parsing.dags import dag_json, get_dag, import_errors, list_dags, structure_history

router = APIRouter(tags=["dags"])


@router.get("/dags", response_model=shapes.DagList)
def get_dags(store: StoreDep, _: ReadToken, active: bool | None = None) -> dict[str, Any]:
    """DAGs with their current version, schedule and state."""
    with store.db.read() as session:
        rows = list_dags(session)
        items = [dag_json(row, repo) for row, repo in rows]
    if active is not None:
        items = [d for d in items if d["is_active"] == active]
    return {"items": items}


@router.get("/dags/{dag_id}", response_model=shapes.DagDetail)
def get_one_dag(dag_id: str, store: StoreDep, _: ReadToken) -> dict[str, Any]:
    """One DAG with its current version, its tasks, and the versions its structure changed in."""
    with store.db.read() as session:
        row = get_dag(session, dag_id)
        repo = session.get(Repo, row.repo_id)
        body = dag_json(row, repo.name if repo else "")
        body["versions"] = structure_history(session, dag_id)
        return body


@router.get("/import-errors", response_model=shapes.BrokenDagFileList)
def get_import_errors(store: StoreDep, _: ReadToken) -> dict[str, Any]:
    """Broken DAG files at each repo's tracked tip."""
    with store.db.read() as session:
        return {"items": import_errors(session)}
