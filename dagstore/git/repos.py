"""The registry of store repositories: a database row and a bare git repo per name."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dagstore.core.db import iso
from dagstore.core.errors import Conflict, NotFound
from dagstore.core.models import Repo
from dagstore.core.names import validate_repo_name
from dagstore.git.repo import RepoStorage, validate_branch_name


def get_repo(session: Session, name: str) -> Repo:
    validate_repo_name(name)
    row = session.scalar(select(Repo).where(Repo.name == name))
    if row is None:
        raise NotFound(f"repository {name!r} does not exist")
    return row


def list_repos(session: Session) -> list[Repo]:
    return list(session.scalars(select(Repo).order_by(Repo.name)))


def create_repo(
    session: Session, storage: RepoStorage, name: str, track: str = "main", strict: bool = False
) -> Repo:
    """Create the row and its git HEAD in one transaction; the row's unique name settles a
    race of two servers."""
    validate_repo_name(name)
    validate_branch_name(track)
    if session.scalar(select(Repo.id).where(Repo.name == name)) is not None:
        raise Conflict(f"repository {name!r} already exists")
    row = Repo(name=name, track=track, strict=strict)
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"repository {name!r} already exists") from None
    storage.create(session, row.id, track)
    return row


def repo_json(row: Repo, api_url: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": row.name,
        "track": row.track,
        "strict": row.strict,
        "created_at": iso(row.created_at),
    }
    if api_url:
        body["git_url"] = f"{api_url}/git/{row.name}.git"
    return body
