"""How `make test` spreads the suite over pytest-xdist processes.

The suite waits on real processes (servers, clusters, redis-server, PostgreSQL) far more than
it computes, so it runs in several processes even on 2 cores. The unit xdist hands out is a
module's tests on one backend: they share that module's module-scoped server or cluster, which
then starts once, as in a run without xdist, and the sqlite and postgresql halves of a long
end-to-end module run side by side. (xdist's own `--dist loadgroup` marks cannot do this with
pytest 9: it renames a test through an attribute pytest no longer reads.)

Groups are handed out longest first, as far as the order of collection can tell: the
end-to-end modules lead, since a long group picked up last would finish alone.

The processes share one throwaway PostgreSQL, started by xdist's controller before it starts
them (they inherit PINFLOW_TEST_DATABASE_URL): every test makes a database of its own in it, so
one cluster serves all, and 4 initdb runs side by side on 2 cores would only add load.
"""

from __future__ import annotations

import os
import re

import pytest
from xdist.scheduler import LoadScopeScheduling

from tests.support.pg import PostgresCluster, find_pg_bin

BACKENDS = ("sqlite", "postgresql")
_PARAMS = re.compile(r"\[(.*)\]$")


def group_of(nodeid: str) -> str:
    """`tests/e2e/test_runs.py::test_x[postgresql]` → `tests/e2e/test_runs.py:postgresql`."""
    module, _, rest = nodeid.partition("::")
    params = _PARAMS.search(rest)
    if params:
        for backend in BACKENDS:
            if backend in re.split(r"[-\[\]]", params[1]):
                return f"{module}:{backend}"
    return module


class ModuleBackendScheduling(LoadScopeScheduling):
    """xdist's load-by-scope scheduling, the scope being a module on one backend."""

    def __init__(self, config: pytest.Config, log=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(config, log)
        # Keep collection order (end-to-end first), not xdist's largest-count-first order:
        # a group's length is its processes' waits, not its number of tests.
        config.option.loadscopereorder = False

    def _split_scope(self, nodeid: str) -> str:
        return group_of(nodeid)


class XdistGroups:
    """Registered by tests/conftest.py when pytest-xdist is installed."""

    postgres: PostgresCluster | None = None

    @pytest.hookimpl
    def pytest_configure(self, config: pytest.Config) -> None:
        """In xdist's controller of a parallel run: one PostgreSQL for all its processes
        (unless one is given); the session fixture `postgres_admin_url` then uses it."""
        parallel = not hasattr(config, "workerinput") and config.getoption("numprocesses")
        if not parallel or os.environ.get("PINFLOW_TEST_DATABASE_URL"):
            return
        bin_dir = find_pg_bin()
        if bin_dir is None:
            return  # the fixture in each process skips, or fails under CI, as it says
        self.postgres = PostgresCluster(bin_dir)
        self.postgres.start()
        os.environ["PINFLOW_TEST_DATABASE_URL"] = self.postgres.url("postgres")

    @pytest.hookimpl
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.postgres is not None:
            os.environ.pop("PINFLOW_TEST_DATABASE_URL", None)
            self.postgres.stop()
            self.postgres = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log):  # type: ignore[no-untyped-def]
        return ModuleBackendScheduling(config, log)

    @pytest.hookimpl
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        if hasattr(config, "workerinput"):  # an xdist worker: the order work is handed out
            items.sort(key=lambda item: not item.nodeid.startswith("tests/e2e/"))
