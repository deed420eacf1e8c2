"""Fixtures that start real parts on free loopback ports and always stop them.

Backends: every test that asks for `database_url` (directly or through `store_server`) runs on
SQLite and on PostgreSQL. PostgreSQL comes from PINFLOW_TEST_DATABASE_URL, or from a throwaway
cluster this session starts with initdb/pg_ctl. Without either, PostgreSQL tests are skipped
locally and fail under CI=true, so CI can never pass by silently skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from dagstore.core.db import Database
from dagstore.core.settings import normalise_database_url
from pinflow.migrate import upgrade
from tests.support.cluster import Cluster
from tests.support.pg import PostgresCluster, find_pg_bin
from tests.support.redis import RedisServer
from tests.support.server import ServerProcess, make_tokens

BACKENDS = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):  # `make test` runs the suite with -n
        from tests.support.xdist_groups import XdistGroups

        config.pluginmanager.register(XdistGroups(), "pinflow-xdist-groups")


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("PINFLOW_TEST_DATABASE_URL")
    if url:
        yield normalise_database_url(url)
        return
    bin_dir = find_pg_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is required under CI (initdb/pg_ctl not found)")
        pytest.skip("PostgreSQL not installed (initdb/pg_ctl not found)")
    cluster = PostgresCluster(bin_dir)
    cluster.start()
    try:
        yield cluster.url("postgres")
    finally:
        cluster.stop()


def _database_for(request: pytest.FixtureRequest, backend: str, tmp_dir: str) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_dir}/pinflow.db"
        return
    from tests.support.pg import create_database, drop_database

    admin_url = request.getfixturevalue("postgres_admin_url")
    name = f"pinflow_test_{uuid.uuid4().hex[:12]}"
    url = create_database(admin_url, name)
    try:
        yield url
    finally:
        drop_database(admin_url, name)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    yield from _database_for(request, request.param, str(tmp_path))


def serve(
    request: pytest.FixtureRequest, factory: pytest.TempPathFactory, **env: str
) -> Iterator[ServerProcess]:
    """A real `pinflow server` on the backend of `request.param`, stopped afterwards."""
    home = factory.mktemp("home")
    for url in _database_for(request, request.param, str(home)):
        server = ServerProcess(home=home, database_url=url, backend=request.param, extra_env=env)
        server.tokens = make_tokens(url)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def store_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One API server per module and backend; tests use their own repo names."""
    yield from serve(request, tmp_path_factory)


def cluster_for(
    request: pytest.FixtureRequest,
    factory: pytest.TempPathFactory,
    schedulers: int = 1,
    workers: int = 1,
    worker_args: tuple[str, ...] = (),
    **env: str,
) -> Iterator[Cluster]:
    """Server, schedulers, workers and a redis-server on the backend of `request.param`."""
    home = factory.mktemp("cluster")
    for url in _database_for(request, request.param, str(home)):
        cluster = Cluster(home, url, request.param, **env)
        cluster.worker_args = list(worker_args)
        try:
            cluster.start(schedulers=schedulers, workers=workers)
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    """A migrated database on each backend, for tests that call pinflow's code in-process."""
    database = Database(database_url)
    upgrade(database)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A private redis-server for one test."""
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.cleanup()


@pytest.fixture
def repo_name() -> str:
    return f"r{uuid.uuid4().hex[:10]}"


@pytest.fixture
def uid() -> str:
    """A suffix for names that are global on a server, like dag ids."""
    return uuid.uuid4().hex[:8]
