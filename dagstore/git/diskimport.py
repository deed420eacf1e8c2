"""Moving repositories from disk into the database (installations from before issue 13).

`pinflow db upgrade` (and every server start) finds each store repo that still has its bare
repository under `$PINFLOW_HOME/repos/NAME.git` and copies it in: every object reachable from
its refs, keep refs included, in one pack, each object checked against its name; then its
refs. Run again, it finds the refs equal and does nothing. A repo whose refs in the database
moved on since (pushes after the upgrade) is left alone, with a warning. The folders on disk
are never deleted: the user does that once they trust the copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dulwich.errors import NotGitRepository
from dulwich.refs import SYMREF
from dulwich.repo import BaseRepo, Repo

from dagstore.git.repack import pack_reachable
from dagstore.git.repo import RepoStorage
from dagstore.git.repos import list_repos

log = logging.getLogger("pinflow.import")


@dataclass(frozen=True)
class Imported:
    name: str
    objects: int
    refs: int


def _raw_refs(repo: BaseRepo) -> dict[bytes, bytes]:
    """Every ref with its stored value (symbolic refs as `ref: ...`), HEAD included."""
    values = {}
    for name in repo.refs.allkeys():
        value = repo.refs.read_ref(name)
        if value is not None:
            values[name] = value
    return values


def import_repository(storage: RepoStorage, name: str, source: BaseRepo) -> Imported | None:
    """Copy `source` into the store's repo `name`; None when there was nothing to do."""
    with storage.open(name) as target:
        wanted = _raw_refs(source)
        present = _raw_refs(target)
        if all(present.get(ref) == value for ref, value in wanted.items()):
            return None  # imported before
        moved_on = {
            ref
            for ref, value in present.items()
            if ref != b"HEAD" and wanted.get(ref) not in (None, value)
        }
        if moved_on or any(ref not in wanted for ref in present if ref != b"HEAD"):
            log.warning(
                "repository %s: refs in the database differ from %s; not imported",
                name,
                getattr(source, "path", "the source"),
            )
            return None
        shas = sorted({v for v in source.refs.as_dict().values()})
        pack = pack_reachable(source.object_store, shas, target.object_store)
        for ref, value in sorted(wanted.items()):
            if value.startswith(SYMREF):
                target.refs.set_symbolic_ref(ref, value[len(SYMREF) :])
            else:
                target.refs.set_if_equals(ref, None, value)
        return Imported(name, len(pack.index) if pack is not None else 0, len(wanted))


def import_disk_repositories(storage: RepoStorage, repos_dir: Path) -> list[Imported]:
    """Every store repo still on disk under `repos_dir`, copied in (see the module docstring)."""
    if not repos_dir.is_dir():
        return []
    with storage.db.read() as session:
        names = [row.name for row in list_repos(session)]
    done = []
    for name in names:
        path = repos_dir / f"{name}.git"
        if not path.is_dir():
            continue
        try:
            source = Repo(str(path))
        except NotGitRepository:
            continue
        with source:
            result = import_repository(storage, name, source)
        if result is not None:
            log.warning(
                "imported repository %s from %s: %d objects checked, %d refs; the folder "
                "is no longer used and can be deleted",
                name,
                path,
                result.objects,
                result.refs,
            )
            done.append(result)
    return done
