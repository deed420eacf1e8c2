"""The database: engine, sessions, and the clock every lease and heartbeat is judged by.

SQLite (default) and PostgreSQL behave alike here on purpose:
- SQLite runs in WAL mode with a busy timeout, and write transactions start with
  `BEGIN IMMEDIATE`: a deferred transaction that reads and then writes can fail at once with
  "database is locked" (its lock upgrade ignores the busy timeout), see PITFALLS.md.
- Read-only sessions keep SQLite's deferred BEGIN so readers never queue behind writers.
- `db_now()` is the database's clock, so machines whose clocks drift still agree.

PostgreSQL may fail over (issue 26): the URL may name several hosts in libpq's form
(`?host=H1:P1&host=H2:P2&target_session_attrs=read-write`), so a new connection goes to
whichever host is primary now. A pooled connection to an old primary that came back as a
standby still answers `SELECT 1` (so `pool_pre_ping` keeps it) but refuses every write with
SQLSTATE 25006; that answer, and a statement cut by its timeout, count as a lost connection
(`_on_error`): the pool drops it and every connection as old, and the caller sees the same
"database unavailable" as for a dropped connection (`database_unavailable`): the API answers
503, the scheduler retries its tick. Connect and statement timeouts and TCP keepalives keep a
dead or hung host from hanging anyone.

Callers own transactions (`with db.write() as s:`); helpers take a session and never commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, create_engine, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.functions import FunctionElement

_READ_OPTION = "pinflow_read_only"


class Base(DeclarativeBase):
    """Declarative base shared by every table (store and scheduler alike)."""


class db_now(FunctionElement):  # noqa: N801 - reads like the SQL function it stands for
    """The database's current UTC time, with sub-second precision on every backend."""

    type = DateTime(timezone=True)
    inherit_cache = True


@compiles(db_now)
def _db_now_default(element: Any, compiler: Any, **kw: Any) -> str:
    return "now()"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


SQLITE_POOL_SIZE = 40


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # As many pooled connections as the server has request threads (anyio's 40): with
        # SQLAlchemy's default 5, a burst of requests opened and closed overflow connections,
        # each paying the connect-time PRAGMAs (half of a cached archive request's time).
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=10,
        )
        _configure_sqlite(engine)
        return engine
    engine = create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=PG_CONNECT_ARGS
    )
    event.listen(engine, "handle_error", _on_error)
    return engine


CONNECT_TIMEOUT = 5  # seconds to reach one host (libpq tries the next one after it)
STATEMENT_TIMEOUT_MS = 60_000  # no statement of pinflow's takes near this; a hung one is cut
PG_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    # A host that vanished without a word (power, network) is noticed in ~10 s, not hours.
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}
# SQLSTATEs that mean "this connection can no longer serve pinflow": 25006, a read-only
# transaction (a demoted primary, or a standby reached through a stale address); 57014, a
# statement cut by its timeout (a host that hangs); 57P01-57P03, the server shutting down or
# not accepting connections yet.
LOST_SQLSTATES = frozenset({"25006", "57014", "57P01", "57P02", "57P03"})


def _on_error(context: Any) -> None:
    sqlstate = getattr(context.original_exception, "sqlstate", None)
    if sqlstate in LOST_SQLSTATES:
        context.is_disconnect = True


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database is away (down, failing over, read-only, hung) rather
    than that the statement was wrong: the caller should answer 503 or retry later."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def database_down(exc: BaseException) -> bool:
    """Narrower than `database_unavailable`, for a process that starts: the database cannot
    be reached or is not primary yet (worth waiting for), not refusing who we are (a wrong
    password or database name is an error to report, not to wait out)."""
    if not database_unavailable(exc):
        return False
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return sqlstate is None or sqlstate in LOST_SQLSTATES


PG_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")


def check_database_url(url: str) -> None:
    """At start: a URL pinflow cannot use is a ValueError with one clear line (a malformed
    URL, a `host=` that is not HOST[:PORT] or a socket folder, an unknown
    target_session_attrs)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"PINFLOW_DATABASE_URL is not a database URL: {_redacted(url)}") from None
    if parsed.get_backend_name() != "postgresql":
        return
    hosts = parsed.query.get("host", ())
    for host in (hosts,) if isinstance(hosts, str) else hosts:
        name, sep, port = host.rpartition(":")
        if host.startswith("/"):
            continue  # a Unix socket folder
        if not name and sep or sep and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"PINFLOW_DATABASE_URL: host={host!r} is not HOST or HOST:PORT")
    attrs = parsed.query.get("target_session_attrs")
    if attrs is not None and attrs not in PG_SESSION_ATTRS:
        raise ValueError(
            f"PINFLOW_DATABASE_URL: target_session_attrs={attrs!r} is not one of "
            f"{', '.join(PG_SESSION_ATTRS)}"
        )
    if parsed.port is not None and not isinstance(parsed.port, int):
        raise ValueError("PINFLOW_DATABASE_URL: the port is not a number")


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}...@{rest.rpartition('@')[2]}" if "@" in rest else url


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take BEGIN away from pysqlite so the "begin" hook below decides its kind.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(_READ_OPTION, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class Database:
    """An engine and the two kinds of session pinflow uses."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._write = sessionmaker(self.engine, expire_on_commit=False)
        self._read = sessionmaker(
            self.engine.execution_options(**{_READ_OPTION: True}), expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that may write; committed on success, rolled back on error."""
        with self._write.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A transaction that only reads; never takes SQLite's write lock."""
        with self._read.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def db_time(session: Session) -> datetime:
    """The database's clock now, as aware UTC: deadlines computed from it agree across hosts."""
    from sqlalchemy import select

    if session.get_bind().dialect.name == "sqlite":
        # SQLite's clock is this host's clock (its file is local): no round trip for it.
        # Milliseconds, like `db_now()` on SQLite, so values taken either way compare alike.
        now = datetime.now(UTC)
        return now.replace(microsecond=now.microsecond // 1000 * 1000)
    value = session.execute(select(db_now())).scalar_one()
    if isinstance(value, str):  # SQLite hands the function's text back as is
        value = datetime.fromisoformat(value)
    result = as_utc(value)
    assert result is not None
    return result


def upsert_insert(session: Session, table: Any) -> Any:
    """The backend's own INSERT, the one with `on_conflict_do_nothing()`."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    return insert(table)


def insert_ignoring_duplicates(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on both backends: two servers may record at once."""
    if not rows:
        return
    session.execute(upsert_insert(session, table).on_conflict_do_nothing(), rows)
