"""Bring the schema up to date with Alembic; safe when several processes start at once.

Concurrent starters are serialised: PostgreSQL by an advisory lock held on the migrating
connection, SQLite by an exclusive file lock beside the database file. The second process
then finds the schema at head and does nothing.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dagstore.core.db import Database

_ADVISORY_LOCK_ID = 0x70696E666C6F77  # "pinflow"


def alembic_config(db: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    return config


@contextmanager
def _sqlite_file_lock(db: Database) -> Iterator[None]:
    database = make_url(db.url).database
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_suffix(".migrate-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def upgrade(db: Database, revision: str = "head") -> None:
    config = alembic_config(db)
    if db.is_sqlite:
        with _sqlite_file_lock(db), db.engine.connect() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
        return
    with db.engine.connect() as conn:
        # A migration (and the wait for another process's) may take longer than the
        # statement timeout every other statement has (dagstore.core.db): none here.
        conn.execute(text("SET statement_timeout = 0"))
        conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _ADVISORY_LOCK_ID})
        conn.commit()
        try:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            conn.commit()
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _ADVISORY_LOCK_ID})
            conn.execute(text("RESET statement_timeout"))
            conn.commit()


def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def missing_database(db: Database) -> str | None:
    """Where the database should be, if it does not exist yet (never creating it): for the
    commands that only use a database, which must not leave a new empty one behind in
    whatever folder they were run from. None when it exists and has pinflow's schema."""
    url = make_url(db.url)
    if db.is_sqlite:
        if url.database and url.database != ":memory:" and not Path(url.database).exists():
            return url.database
        return None
    if current_revision(db) is None:
        return url.render_as_string(hide_password=True)
    return None

