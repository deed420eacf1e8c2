"""Manual runs: pinned to the commit the caller names, or to the DAG's current version."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dagstore.core.db import db_time
from dagstore.core.errors import BadRequest, Conflict, NotFound
from dagstore.core.models import Repo, Version, VersionDag, VersionError
from dagstore.git.repo import SHORT_SHA_RE, resolve_commit
from dagstore.parsing.current import publish
from dagstore.parsing.dags import get_dag, version_dag
from dagstore.parsing.parser import parse_commit
from dagstore.store import StoreContext
from scheduler.models import DagRun
from scheduler.runs import create_run
from scheduler.taskstate import schedule_ready


def resolve_target(
    store: StoreContext, dag_id: str, ref: str | None, sha: str | None
) -> tuple[Repo, str]:
    """(repo, full sha) a manual run should pin; parses that commit first if never parsed."""
    if ref and sha:
        raise BadRequest("give either ref or sha, not both")
    if sha and not SHORT_SHA_RE.match(sha.strip()):
        raise BadRequest(
            f"{sha!r} is not a commit sha (4 to 40 hex digits): to run what a branch or tag "
            f"names now, give it as ref (--ref {sha})"
        )
    with store.db.read() as session:
        dag = get_dag(session, dag_id)
        repo = session.get(Repo, dag.repo_id)
        assert repo is not None
        if not ref and not sha:
            if dag.current_sha is None:
                raise Conflict(f"DAG {dag_id!r} has no version that parsed cleanly")
            return repo, dag.current_sha
    with store.storage.open(repo.name) as git:
        full = resolve_commit(git, (ref or sha or "").strip())
        with store.db.read() as session:
            state = session.scalar(
                select(Version.parse_state).where(Version.repo_id == repo.id, Version.sha == full)
            )
        if state is None:
            raise NotFound(f"commit {full[:12]} was never pushed to repository {repo.name!r}")
        if state == "pending":
            result = parse_commit(git, repo.name, full, store.archives, store.parse_limits)
            with store.db.write() as session:
                publish(session, repo, git, result)
    return repo, full


def pinned_dag(session: Session, repo: Repo, dag_id: str, sha: str) -> VersionDag:
    """The DAG as commit `sha` defines it; 400 saying why when it does not."""
    vd = version_dag(session, repo.id, sha, dag_id)
    if vd is None:
        errors = session.scalars(
            select(VersionError.file + ": " + VersionError.summary)
            .join(Version, Version.id == VersionError.version_id)
            .where(Version.repo_id == repo.id, Version.sha == sha)
        ).all()
        why = f" (errors there: {'; '.join(errors)})" if errors else ""
        raise BadRequest(f"DAG {dag_id!r} does not exist or failed to parse at {sha[:12]}{why}")
    return vd


def trigger(
    session: Session, repo: Repo, dag_id: str, sha: str, conf: dict[str, Any], who: str
) -> DagRun:
    """Create a manual run of `dag_id` as commit `sha` defines it (in the caller's transaction)."""
    vd = pinned_dag(session, repo, dag_id, sha)
    now = db_time(session)
    run = create_run(
        session,
        dag_id=dag_id,
        repo_id=repo.id,
        sha=sha,
        fileloc=vd.fileloc,
        structure=vd.structure,
        logical_date=now,
        run_type="manual",
        created_by=who,
        conf=conf,
    )
    schedule_ready(session, run, now)
    return run
