"""A PostgreSQL connection that went read-only or hangs counts as lost (issue 26).

After a failover the old primary may come back as a standby: connections the pool still
holds to it pass `pool_pre_ping` (`SELECT 1` works on a standby) and then refuse every write
with SQLSTATE 25006. Here a pooled connection is made read-only the way a demoted server
answers (`default_transaction_read_only` on that session), and a hung statement is cut by the
statement timeout: each time the pool drops the connection, the caller sees
`database_unavailable` (503, or a retried tick), and the next transaction gets a fresh one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from dagstore.core.db import Database, database_unavailable
from tests.support.pg import create_database, drop_database


@pytest.fixture
def pg(postgres_admin_url: str) -> Iterator[Database]:
    name = f"pinflow_ro_{uuid.uuid4().hex[:10]}"
    url = create_database(postgres_admin_url, name)
    db = Database(url)
    with db.write() as session:
        session.execute(text("CREATE TABLE t (i int)"))
    try:
        yield db
    finally:
        db.dispose()
        drop_database(postgres_admin_url, name)


def backend_pid(db: Database) -> int:
    with db.read() as session:
        return session.execute(text("SELECT pg_backend_pid()")).scalar_one()


def test_a_read_only_answer_drops_the_connection(pg: Database):
    pg.engine.pool.dispose()
    with pg.write() as session:  # the one pooled connection turns "standby"
        session.execute(text("SET SESSION default_transaction_read_only = on"))
    demoted = backend_pid(pg)
    with pytest.raises(DBAPIError) as caught, pg.write() as session:
        session.execute(text("INSERT INTO t VALUES (1)"))
    assert getattr(caught.value.orig, "sqlstate", None) == "25006"
    assert caught.value.connection_invalidated and database_unavailable(caught.value)
    with pg.write() as session:  # a fresh connection: the write goes through
        session.execute(text("INSERT INTO t VALUES (2)"))
    assert backend_pid(pg) != demoted
    with pg.read() as session:
        assert session.execute(text("SELECT array_agg(i) FROM t")).scalar_one() == [2]


def test_a_statement_cut_by_its_timeout_drops_the_connection(pg: Database):
    with pg.write() as session:
        slow = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
    with pytest.raises(DBAPIError) as caught, pg.write() as session:
        session.execute(text("SET LOCAL statement_timeout = 100"))
        session.execute(text("SELECT pg_sleep(5)"))
    assert getattr(caught.value.orig, "sqlstate", None) == "57014"
    assert database_unavailable(caught.value)
    assert backend_pid(pg) != slow


def test_every_connection_has_the_timeouts(pg: Database):
    with pg.read() as session:
        assert session.execute(text("SHOW statement_timeout")).scalar_one() == "1min"
