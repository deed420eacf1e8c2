"""How many bytes the database keeps of a repository's git objects."""

from __future__ import annotations

from sqlalchemy import func, select

from dagstore.core.db import Database
from dagstore.core.models import Repo as RepoRow
from dagstore.git.models import GitPack


def stored_bytes(database_url: str, repo: str) -> int:
    """What the database keeps of a repo's objects: pack bytes and their indexes."""
    db = Database(database_url)
    try:
        with db.read() as session:
            packs, indexes = session.execute(
                select(func.sum(GitPack.size), func.sum(func.length(GitPack.index_data)))
                .join(RepoRow, RepoRow.id == GitPack.repo_id)
                .where(RepoRow.name == repo)
            ).one()
        return int(packs or 0) + int(indexes or 0)
    finally:
        db.dispose()
