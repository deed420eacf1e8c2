"""Migration 0009 (issue 33) on both backends: from 0007 with runs and tries in it, up to the
run indexes that end in `id` and a try's log as head and tail, and back; and the schema at
head is the one the models declare."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text, update

from dagstore.core.db import Base, Database
from pinflow.migrate import alembic_config, upgrade
from scheduler.models import TaskTry
from tests.support.seed import running_run


def _run_indexes(db: Database) -> set[str]:
    return {ix["name"] for ix in inspect(db.engine).get_indexes("dag_runs")}


@pytest.fixture
def bare(database_url: str):
    database = Database(database_url)
    try:
        yield database
    finally:
        database.dispose()


def _downgrade(db: Database, revision: str) -> None:
    config = alembic_config(db)
    with db.engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
        conn.commit()


def test_0009_up_and_down_keeps_the_rows(bare: Database) -> None:
    upgrade(bare)
    running_run(bare, {"a": []})
    _downgrade(bare, "0007")
    assert {"ix_dag_runs_dag_state", "ix_dag_runs_state"} <= _run_indexes(bare)
    upgrade(bare)
    assert {"ix_dag_runs_dag_id", "ix_dag_runs_dag_state_id", "ix_dag_runs_state_id"} <= (
        _run_indexes(bare)
    )
    assert not {"ix_dag_runs_dag_state", "ix_dag_runs_state"} & _run_indexes(bare)
    with bare.read() as session:
        tries = session.execute(select(TaskTry.log_tail, TaskTry.log_bytes)).all()
    assert tries and all(tail == "" and written is None for tail, written in tries)


def test_models_match_the_migrations(bare: Database) -> None:
    import dagstore.git.models  # noqa: F401 - every table on the metadata
    import scheduler.models  # noqa: F401

    upgrade(bare)
    with bare.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_0009_down_keeps_a_cut_logs_tail(bare: Database) -> None:
    """Before 0009 a log is one column: going back must not drop the tail (the traceback)."""
    upgrade(bare)
    running_run(bare, {"a": []})
    with bare.write() as session:
        session.execute(update(TaskTry).values(log="the head\n", log_tail="Traceback: boom\n"))
    _downgrade(bare, "0008")
    with bare.engine.connect() as conn:
        logs = conn.execute(text("SELECT log FROM task_tries")).scalars().all()
    assert logs and all(
        log.startswith("the head\n") and log.endswith("Traceback: boom\n") for log in logs
    )
    upgrade(bare)


def test_0008_down_refuses_mapped_instances_older_code_cannot_read(bare: Database) -> None:
    from tests.support.authoring import drive, make_run, task

    upgrade(bare)
    pk = make_run(
        bare, [task("parts"), task("load", "parts", mapped=[{"arg": "p", "task": "parts"}])]
    )
    drive(bare, pk, lambda task_id, map_index, _: (True, [1, 2] if task_id == "parts" else 0))
    with pytest.raises(RuntimeError, match="cannot go below 0008: 2 task instances"):
        _downgrade(bare, "0007")
    with bare.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM task_instances")).scalar() == 3
