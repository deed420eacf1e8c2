"""Owed on_failure callbacks at the scheduler's level, on SQLite and PostgreSQL: a lost try
with no retry left owes one only when its pinned DAG names one; exactly one worker claims it
(job number, state, attempt), its credential fences heartbeat and finish; a callback whose
worker goes silent is due again with a new number, then given up; a due callback is enqueued
once per attempt (scheduler.callbacks, scheduler.callback_tries)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from dagstore.access.grants import TryGrant, issue_grant, parse_grant
from dagstore.core.db import Database, db_time
from dagstore.core.errors import Conflict, Forbidden
from dagstore.core.models import Repo, Version, VersionDag
from dagstore.core.protocol import FinishRequest
from scheduler.callback_tries import (
    MAX_ATTEMPTS,
    claim_callback,
    finish_callback,
    heartbeat_callback,
    recover_callbacks,
    requeue_callbacks,
)
from scheduler.enqueue import Enqueuer
from scheduler.grants import granted_version
from scheduler.models import TaskCallback, TaskInstance, TaskTry
from scheduler.taskstate import queue_ready
from scheduler.tries import claim, fail_lost
from tests.support.authoring import make_run, task

SHA = "a" * 40


def _pinned(db: Database, dag_id: str, structure: dict) -> None:
    """The version the run is pinned to, with the DAG's structure (on_failure or not)."""
    with db.write() as session:
        repo = session.scalar(select(Repo).where(Repo.name == "authored"))
        if repo is None:
            repo = Repo(name="authored", track="main", strict=False)
            session.add(repo)
            session.flush()
        version = session.scalar(select(Version).where(Version.repo_id == repo.id))
        if version is None:
            version = Version(repo_id=repo.id, sha=SHA, ref="refs/heads/main",
                              parse_state="parsed")  # fmt: skip
            session.add(version)
            session.flush()
        session.add(VersionDag(version_id=version.id, dag_id=dag_id, fileloc="dags/a.py",
                               structure=structure, structure_hash="h"))  # fmt: skip


def _lost(db: Database, dag_id: str, **dag: object) -> int:
    """A run of one task with no retry whose only try was judged lost; its ti id."""
    tasks = [task("only")]
    _pinned(db, dag_id, {"dag_id": dag_id, "tasks": tasks, **dag})
    pk = make_run(db, tasks, dag_id=dag_id, **dag)
    with db.write() as session:
        now = db_time(session)
        (job,) = queue_ready(session, now, run_pk=pk)
        claim(session, job.ti_id, job.try_number, "dead-worker", now)
    with db.write() as session:
        later = db_time(session) + timedelta(seconds=120)
        assert fail_lost(session, later, 60) == [job.ti_id]
    return job.ti_id


def _owed(db: Database, ti_id: int) -> TaskCallback | None:
    with db.read() as session:
        return session.scalar(select(TaskCallback).where(TaskCallback.ti_id == ti_id))


def _log(db: Database, ti_id: int) -> str:
    with db.read() as session:
        return session.scalar(select(TaskTry.log).where(TaskTry.ti_id == ti_id)) or ""


def _claim(db: Database, ti_id: int, number: int, worker: str, attempt: str):
    credential, digest = issue_grant(ti_id, 1)
    with db.write() as session:
        row, error = claim_callback(session, ti_id, 1, number, worker, db_time(session),
                                    attempt, digest)  # fmt: skip
    grant = parse_grant(credential)
    assert grant is not None
    return row, error, grant


def test_a_dag_without_on_failure_owes_nothing(db: Database, uid):
    ti_id = _lost(db, f"plain_{uid}")
    assert _owed(db, ti_id) is None
    with db.read() as session:
        assert session.get(TaskInstance, ti_id).state == "failed"


def test_a_task_callback_is_owed_too(db: Database, uid):
    dag_id = f"own_{uid}"
    tasks = [task("only", on_failure="alert")]
    _pinned(db, dag_id, {"dag_id": dag_id, "tasks": tasks})
    pk = make_run(db, tasks, dag_id=dag_id)
    with db.write() as session:
        now = db_time(session)
        (job,) = queue_ready(session, now, run_pk=pk)
        claim(session, job.ti_id, job.try_number, "dead", now)
    with db.write() as session:
        fail_lost(session, db_time(session) + timedelta(seconds=120), 60)
    owed = _owed(db, job.ti_id)
    assert owed is not None and owed.state == "due" and "lost" in owed.error


def test_exactly_one_worker_claims_and_its_credential_fences_the_rest(db: Database, uid):
    ti_id = _lost(db, f"cb_{uid}", on_failure="alert")
    owed = _owed(db, ti_id)
    assert owed is not None and (owed.state, owed.number, owed.try_number) == ("due", 1, 1)
    row, error, grant = _claim(db, ti_id, 1, "w1", "a" * 16)
    assert row.task_id == "only" and error.startswith("lost: no heartbeat")
    with pytest.raises(Conflict):
        _claim(db, ti_id, 1, "w2", "b" * 16)  # another worker's job for the same attempt
    with pytest.raises(Conflict):
        _claim(db, ti_id, 2, "w2", "c" * 16)  # a job for an attempt that is not due
    _, _, grant = _claim(db, ti_id, 1, "w1", "a" * 16)  # the same claim again: answered
    with db.read() as session:  # the credential reads the version while the callback runs
        assert granted_version(session, grant) == ("authored", SHA)
        stale = TryGrant(ti_id, 1, "0" * 64)
        assert granted_version(session, stale) is None
    with db.write() as session, pytest.raises(Forbidden):
        heartbeat_callback(session, ti_id, 1, 1, db_time(session), "0" * 64)
    with db.write() as session:
        held = heartbeat_callback(session, ti_id, 1, 1, db_time(session), grant.digest,
                                  0, "CALLBACK-LINE one\n")  # fmt: skip
        assert held == len("CALLBACK-LINE one\n")
    assert "CALLBACK-LINE one" in _log(db, ti_id)
    report = FinishRequest(try_number=1, state="success", log="CALLBACK-LINE one\ntwo\n")
    with db.write() as session:
        assert finish_callback(session, ti_id, 1, 1, db_time(session), grant.digest,
                               report) == "done"  # fmt: skip
    log = _log(db, ti_id)
    assert log.count("CALLBACK-LINE one") == 1 and "two\n" in log, log
    assert "on_failure callback (attempt 1) on worker w1" in log
    assert log.rstrip().endswith("end of on_failure callback (done) -----")
    with db.write() as session, pytest.raises(Conflict):  # a second finish changes nothing
        finish_callback(session, ti_id, 1, 1, db_time(session), grant.digest, report)
    with db.read() as session:
        assert session.get(TaskInstance, ti_id).state == "failed"
        assert granted_version(session, grant) is None  # done: the credential is dead


def test_a_silent_callback_is_due_again_then_given_up(db: Database, uid):
    ti_id = _lost(db, f"gone_{uid}", on_failure="alert")
    for number in range(1, MAX_ATTEMPTS + 1):
        _, _, grant = _claim(db, ti_id, number, f"w{number}", f"{number}" * 16)
        with db.write() as session:
            assert recover_callbacks(session, db_time(session), 60) == []  # alive yet
        with db.write() as session:
            later = db_time(session) + timedelta(seconds=120)
            assert recover_callbacks(session, later, 60) == [ti_id]
        owed = _owed(db, ti_id)
        assert owed is not None
        if number < MAX_ATTEMPTS:
            assert (owed.state, owed.number) == ("due", number + 1)
        with db.write() as session, pytest.raises(Conflict):  # the dead attempt is fenced
            heartbeat_callback(session, ti_id, 1, number, db_time(session), grant.digest)
    owed = _owed(db, ti_id)
    assert owed is not None and owed.state == "given_up"
    log = _log(db, ti_id)
    assert log.count("callback attempt") == MAX_ATTEMPTS  # each lost attempt says so once
    assert f"given up after {MAX_ATTEMPTS} attempts" in log


def test_a_due_callback_is_enqueued_once_per_attempt(db: Database, redis_url: str, uid):
    ti_id = _lost(db, f"q_{uid}", on_failure="alert")
    enqueuer = Enqueuer(redis_url)
    with db.read() as session:
        now = db_time(session)
        assert requeue_callbacks(session, enqueuer, now, 60) == 1
        assert requeue_callbacks(session, enqueuer, now, 60) == 0  # it waits in its queue
    job_ids = enqueuer.queue("default").get_job_ids()
    assert job_ids == [f"pinflow-ti-{ti_id}-try-1-callback-1"]
    job = enqueuer.queue("default").fetch_job(job_ids[0])
    assert job.kwargs["payload"]["callback"] == 1 and job.kwargs["payload"]["sha"] == SHA
    _claim(db, ti_id, 1, "w1", "a" * 16)
    with db.read() as session:  # running: nothing to enqueue
        assert requeue_callbacks(session, enqueuer, db_time(session), 60) == 0
