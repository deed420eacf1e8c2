"""Alembic environment: runs on the connection `pinflow.migrate` hands over."""

from __future__ import annotations

from alembic import context

import dagstore.core.models  # noqa: F401  (registers the store's tables)
import dagstore.git.models  # noqa: F401  (the git store's)
import scheduler.models  # noqa: F401  (and the scheduler's)
from dagstore.core.db import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` run by hand: build an engine from the ini URL
    from dagstore.core.db import make_engine

    connection = make_engine(context.config.get_main_option("sqlalchemy.url")).connect()


def _sqlite_foreign_keys(on: bool) -> None:
    """SQLite alters a table by copying it and dropping the old one (batch mode): with foreign
    keys on, that DROP deletes every row that points at it (a task_instances rebuild took each
    try with it). The pragma is a no-op inside a transaction, so it is set on the driver's
    connection before the migration's transaction begins."""
    connection.connection.driver_connection.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def _sqlite_check_foreign_keys() -> None:
    broken = connection.connection.driver_connection.execute("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(f"the migration left rows that point nowhere: {broken[:5]}")


batch = connection.dialect.name == "sqlite"
if batch and connection.in_transaction():
    # The pragma would be ignored and a table rebuild would delete the rows pointing at it.
    raise RuntimeError("SQLite migrations must start outside a transaction (foreign keys)")
applied: list[str] = []  # the steps this run took: at head there is nothing to check


def _applied(*, step: object, **_: object) -> None:
    applied.append(str(step))


context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=batch,
    on_version_apply=_applied,
)
if batch:
    _sqlite_foreign_keys(False)
try:
    with context.begin_transaction():
        context.run_migrations()
        if batch and applied:
            _sqlite_check_foreign_keys()  # inside: a broken migration is rolled back
    if batch:
        connection.commit()
finally:
    if batch:
        _sqlite_foreign_keys(True)
