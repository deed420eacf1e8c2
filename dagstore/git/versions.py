"""Versions: every commit the store received, recorded once per repo.

Recording walks from a ref's new tip back to what is already known, so a push of five commits
records five versions, and running it again (after a crash between the ref update and the
database write, say) records only what is missing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dulwich.objects import Commit
from dulwich.repo import Repo
from dulwich.walk import Walker
from sqlalchemy import select
from sqlalchemy.orm import Session

from dagstore.core.db import insert_ignoring_duplicates, iso
from dagstore.core.models import Repo as RepoRow
from dagstore.core.models import Version

MAX_NEW_COMMITS_PER_REF = 10_000
ZERO_SHA = b"0" * 40


def new_commits(repo: Repo, new: bytes, exclude: list[bytes]) -> list[Commit]:
    """Commits reachable from `new` but not from `exclude`, oldest first."""
    walker = Walker(
        repo.object_store,
        include=[new],
        exclude=[sha for sha in exclude if sha != ZERO_SHA and sha in repo.object_store],
        max_entries=MAX_NEW_COMMITS_PER_REF,
    )
    return [entry.commit for entry in walker][::-1]


def record_ref_update(
    session: Session, repo: Repo, repo_row: RepoRow, ref: str, old: bytes, new: bytes
) -> list[str]:
    """Record the commits a ref update brought in; returns the shas not seen before."""
    if new == ZERO_SHA:
        return []
    exclude = (
        [old]
        if old != ZERO_SHA
        else [
            sha for name, sha in repo.get_refs().items() if name != ref.encode() and name != b"HEAD"
        ]
    )
    return _record(session, repo_row, ref, new_commits(repo, new, exclude))


def _record(session: Session, repo_row: RepoRow, ref: str, commits: list[Commit]) -> list[str]:
    """Version rows for those of `commits` that have none; returns their shas."""
    shas = [c.id.decode() for c in commits]
    known = (
        set(
            session.scalars(
                select(Version.sha).where(Version.repo_id == repo_row.id, Version.sha.in_(shas))
            )
        )
        if shas
        else set()
    )
    rows = [_version_row(repo_row.id, ref, c) for c in commits if c.id.decode() not in known]
    insert_ignoring_duplicates(session, Version.__table__, rows)
    return [row["sha"] for row in rows]


def reconcile(session: Session, repo: Repo, repo_row: RepoRow) -> int:
    """Record every commit reachable from any ref that has no version row yet.

    A ref whose tip is recorded was recorded with all it reaches (pushes record the whole
    range), so only refs with an unrecorded tip are walked, and only down to recorded tips.
    """
    refs = {
        name: sha
        for name, sha in repo.get_refs().items()
        if name != b"HEAD" and not name.startswith(b"refs/pinflow/")
    }
    known = set(
        session.scalars(
            select(Version.sha).where(
                Version.repo_id == repo_row.id,
                Version.sha.in_([sha.decode() for sha in refs.values()]),
            )
        )
    )
    recorded = [sha for sha in refs.values() if sha.decode() in known]
    added = 0
    for name, sha in sorted(refs.items()):
        if sha.decode() in known:
            continue
        added += len(_record(session, repo_row, name.decode(), new_commits(repo, sha, recorded)))
    return added


def _version_row(repo_id: int, ref: str, commit: Commit) -> dict[str, Any]:
    return {
        "repo_id": repo_id,
        "sha": commit.id.decode(),
        "ref": ref,
        "author": commit.author.decode("utf-8", "replace")[:255],
        "message": commit.message.decode("utf-8", "replace"),
        "committed_at": datetime.fromtimestamp(commit.commit_time, UTC),
    }


def list_versions(session: Session, repo_row: RepoRow, limit: int = 100) -> list[Version]:
    return list(
        session.scalars(
            select(Version)
            .where(Version.repo_id == repo_row.id)
            .order_by(Version.pushed_at.desc(), Version.id.desc())
            .limit(limit)
        )
    )


def version_json(version: Version, dags: list[str], errors: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "sha": version.sha,
        "ref": version.ref,
        "pushed_at": iso(version.pushed_at),
        "committed_at": iso(version.committed_at),
        "author": version.author,
        "message": version.message,
        "parse_state": version.parse_state,
        "dags": dags,
        "errors": errors,
    }
