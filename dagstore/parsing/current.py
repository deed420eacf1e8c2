"""Which version of each DAG is current: the rules the scheduler relies on.

- A version's parse result is stored once: its DAGs with their structure, its broken files.
- A DAG's current version is the newest commit of its repo's tracked ref where it parsed
  cleanly: a broken push never takes a working DAG away from the scheduler.
- A DAG absent from the tracked ref's newest commit becomes inactive; its history stays.
- A dag_id owned by another repo is an error of the later definition, also when two repos
  push it at the same moment: the first to insert the DAG's row owns it (the unique dag_id
  decides), and the other's version records the conflict as its error, nothing else lost.
- A new current version that changes when the DAG runs (schedule, start or end date,
  catchup) makes the scheduler compute its next due time afresh.
"""

from __future__ import annotations

from dulwich.repo import Repo as GitRepo
from sqlalchemy import select
from sqlalchemy.orm import Session

from dagstore.core.db import db_now, insert_ignoring_duplicates
from dagstore.core.models import Dag, Repo, Version, VersionDag, VersionError
from dagstore.git.repo import ref_sha
from dagstore.parsing.parser import ParseResult
from dagstore.parsing.results import FileError, InvalidDag, check_dag

# The structure's fields the scheduler's timetable reads (`scheduler.timetable.due_runs`).
TIMETABLE_FIELDS = ("schedule", "start_date", "end_date", "catchup", "timezone")


def timetable_changed(old: dict | None, new: dict) -> bool:
    return any((old or {}).get(key) != new.get(key) for key in TIMETABLE_FIELDS)


def claimed_elsewhere(session: Session, repo: Repo, dag_ids: list[str]) -> dict[str, str]:
    """dag_id → name of the other repo that already defines it."""
    if not dag_ids:
        return {}
    rows = session.execute(
        select(Dag.dag_id, Repo.name)
        .join(Repo, Repo.id == Dag.repo_id)
        .where(Dag.dag_id.in_(dag_ids), Dag.repo_id != repo.id)
    )
    return dict(rows.all())


def defined_elsewhere(dag_id: str, owner: str) -> str:
    return f"DAG {dag_id!r} is already defined by repository {owner!r}"


def record_parse(session: Session, repo: Repo, version: Version, result: ParseResult) -> None:
    """Store a version's parse result (once; a second call for the same version is a no-op).
    Each DAG is checked again as it is stored (`check_dag`: whatever built `result`, only
    what passes the authoring rules reaches the tables the scheduler and the UI read)."""
    if version.parse_state == "parsed":
        return
    result.dags, invalid = _valid(result.dags)
    result.errors += invalid
    taken = claimed_elsewhere(session, repo, result.dag_ids)
    for dag in result.dags:
        if dag["dag_id"] in taken:
            message = defined_elsewhere(dag["dag_id"], taken[dag["dag_id"]])
            result.errors.append(FileError(dag["fileloc"], message, message))
            continue
        session.add(
            VersionDag(
                version_id=version.id,
                dag_id=dag["dag_id"],
                fileloc=dag["fileloc"],
                structure=dag,
                structure_hash=dag["structure_hash"],
            )
        )
    result.dags = [d for d in result.dags if d["dag_id"] not in taken]
    for error in result.errors:
        session.add(
            VersionError(
                version_id=version.id, file=error.file, summary=error.summary, error=error.error
            )
        )
    version.parse_state = "parsed"
    version.parsed_at = db_now()
    session.flush()


def _valid(dags: list[dict]) -> tuple[list[dict], list[FileError]]:
    kept, errors = [], []
    for dag in dags:
        file = dag.get("fileloc")
        try:
            if not isinstance(file, str):
                raise InvalidDag("it names no file")
            kept.append(check_dag(dag))
        except InvalidDag as exc:
            errors.append(FileError.of(str(file), f"invalid DAG, not kept: {exc}"))
    return kept, errors


def make_current(session: Session, repo: Repo, version: Version) -> dict[str, FileError]:
    """The tracked ref now points at `version` (parsed): apply the rules above.

    The caller holds the repo's row lock (`lock_repo`) and has checked that the tracked ref
    still points at this version, so two pushes applying at once cannot go backwards.
    """
    defined = {
        vd.dag_id: vd
        for vd in session.scalars(select(VersionDag).where(VersionDag.version_id == version.id))
    }
    broken = {
        e.file: e.summary
        for e in session.scalars(select(VersionError).where(VersionError.version_id == version.id))
    }
    existing = {d.dag_id: d for d in session.scalars(select(Dag).where(Dag.repo_id == repo.id))}
    new = [vd for dag_id, vd in defined.items() if dag_id not in existing]
    owned, lost = _claim_new_dags(session, repo, version, new) if new else ({}, {})
    existing.update(owned)
    for dag_id, vd in defined.items():
        row = existing.get(dag_id)
        if row is None:
            continue  # another repo owns it: an error of this version now
        if timetable_changed(row.structure, vd.structure):
            row.next_due_at = None  # computed again by the next scheduler that leases it
            row.schedule_ended = False
        row.fileloc = vd.fileloc
        row.current_version_id = version.id
        row.current_sha = version.sha
        row.structure = vd.structure
        row.structure_hash = vd.structure_hash
        row.schedule = vd.structure.get("schedule")
        row.is_active = True
        row.last_error = None
    for dag_id, row in existing.items():
        if dag_id in defined:
            continue
        if row.fileloc in broken:  # its file is broken now: keep the last good version
            row.last_error = f"{row.fileloc}: {broken[row.fileloc]} (at {version.sha[:7]})"
        else:
            row.is_active = False
    session.flush()
    return lost


def _claim_new_dags(
    session: Session, repo: Repo, version: Version, new: list[VersionDag]
) -> tuple[dict[str, Dag], dict[str, FileError]]:
    """Insert rows for DAGs new to `repo`; those another repo got first become errors.
    Returns (the rows `repo` owns, the errors by dag_id).

    INSERT ... ON CONFLICT DO NOTHING waits for a concurrent insert of the same dag_id and
    then skips it, so the loser's transaction goes on (a plain INSERT would abort it all).
    """
    insert_ignoring_duplicates(
        session,
        Dag.__table__,
        [
            {
                "dag_id": vd.dag_id,
                "repo_id": repo.id,
                "fileloc": vd.fileloc,
                "structure": vd.structure,
                "structure_hash": vd.structure_hash,
                "schedule": vd.structure.get("schedule"),
                "is_active": True,
                "is_paused": False,
            }
            for vd in new
        ],
    )
    ids = [vd.dag_id for vd in new]
    rows = session.execute(
        select(Dag, Repo.name).join(Repo, Repo.id == Dag.repo_id).where(Dag.dag_id.in_(ids))
    ).all()
    owned, lost = {}, {}
    for dag, owner in rows:
        if dag.repo_id == repo.id:
            owned[dag.dag_id] = dag
            continue
        vd = next(v for v in new if v.dag_id == dag.dag_id)
        message = defined_elsewhere(dag.dag_id, owner)
        lost[dag.dag_id] = FileError(vd.fileloc, message, message)
        session.add(
            VersionError(version_id=version.id, file=vd.fileloc, summary=message, error=message)
        )
        session.delete(vd)
    return owned, lost


def lock_repo(session: Session, repo_id: int) -> Repo:
    """Serialise 'make current' per repo (SQLite's BEGIN IMMEDIATE already does)."""
    return session.scalars(select(Repo).where(Repo.id == repo_id).with_for_update()).one()


def publish(session: Session, repo: Repo, git: GitRepo, result: ParseResult) -> None:
    """Store a parse result and, if its commit is the tracked ref's tip, make it current."""
    repo = lock_repo(session, repo.id)
    version = session.scalars(
        select(Version).where(Version.repo_id == repo.id, Version.sha == result.sha)
    ).one()
    record_parse(session, repo, version, result)
    if ref_sha(git, f"refs/heads/{repo.track}".encode()) == result.sha.encode():
        lost = make_current(session, repo, version)
        result.errors += lost.values()  # what the pusher reads says so too
        result.dags = [d for d in result.dags if d["dag_id"] not in lost]


def pending_tip(session: Session, repo: Repo, git: GitRepo) -> str | None:
    """The tracked tip's sha when it was recorded but never parsed (a crash, a parse error)."""
    tip = ref_sha(git, f"refs/heads/{repo.track}".encode())
    if tip is None:
        return None
    state = session.scalar(
        select(Version.parse_state).where(Version.repo_id == repo.id, Version.sha == tip.decode())
    )
    return tip.decode() if state == "pending" else None
