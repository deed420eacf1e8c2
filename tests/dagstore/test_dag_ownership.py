"""Two repos publishing the same dag_id at the same moment (issue 12, finding 7).

The first to insert the DAG owns it; the other's version is recorded all the same, with the
conflict as its error. Before, the loser's whole post-receive transaction was rolled back on
PostgreSQL (a unique violation), so its versions appeared only at a later push.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from dagstore.authoring.dag import DAG, collecting
from dagstore.core.db import Database
from dagstore.core.models import Dag, Repo, Version, VersionDag, VersionError
from dagstore.git.repo import RepoStorage
from dagstore.git.repos import create_repo
from dagstore.git.versions import ZERO_SHA, record_ref_update
from dagstore.parsing.current import publish
from dagstore.parsing.parser import ParseResult
from tests.support.git import Git
from tests.support.race import race
from tests.support.store import storage_for, write_commits


def pushed(db: Database, storage: RepoStorage, name: str, work: Path) -> tuple[Repo, str]:
    """A store repo with one commit in it, its version recorded."""
    with db.write() as session:
        row = create_repo(session, storage, name)
    git = Git(work).init()
    sha = git.commit("first", **{"dags/shared.py": f"# {name}\n"})
    write_commits(storage, name, git)
    with db.write() as session, storage.open(name) as repo:
        record_ref_update(session, repo, row, "refs/heads/main", ZERO_SHA, sha.encode())
    return row, sha


def publisher(storage: RepoStorage, row: Repo, sha: str):
    """Publishes what a parse of DAG "shared" returns (the store checks it: a whole one)."""
    with collecting() as found, DAG("shared", description=sha):
        pass
    dag = found[0].to_structure() | {"fileloc": "dags/shared.py"}

    def run(session):
        with storage.open(row.name) as repo:
            publish(session, row, repo, ParseResult(sha, dags=[dict(dag)]))

    return run


def test_the_same_dag_id_from_two_repos_at_once(db: Database, tmp_path: Path):
    storage = storage_for(db, tmp_path)
    first, first_sha = pushed(db, storage, "one", tmp_path / "one")
    second, second_sha = pushed(db, storage, "two", tmp_path / "two")
    race(db, publisher(storage, first, first_sha), publisher(storage, second, second_sha))
    with db.read() as session:
        owner = session.scalar(select(Repo.name).join(Dag, Dag.repo_id == Repo.id))
        assert owner == "one"
        state, errors, defined = session.execute(
            select(Version.parse_state, VersionError.summary, VersionDag.id)
            .outerjoin(VersionError, VersionError.version_id == Version.id)
            .outerjoin(VersionDag, VersionDag.version_id == Version.id)
            .where(Version.sha == second_sha)
        ).one()
    assert state == "parsed"
    assert errors == "DAG 'shared' is already defined by repository 'one'"
    assert defined is None
