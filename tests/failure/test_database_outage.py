"""A database outage seen from the CLI, the API and a starting scheduler (issue 26).

While PostgreSQL is stopped the API answers 503 with Retry-After (never a 500, never a hang
past the connect timeout); `pinflow runs` started during the outage asks again until the
database is back and then succeeds, instead of failing with "server unavailable"; a
scheduler started during the outage waits for the database instead of exiting.
"""

from __future__ import annotations

import subprocess
import time

import httpx

from tests.failure.test_crashes import own_postgres  # noqa: F401 - a fixture
from tests.support.cluster import Cluster
from tests.support.pg import PostgresCluster, create_database
from tests.support.server import PINFLOW, pinflow_env


def test_cli_reads_ride_out_a_database_restart(own_postgres: PostgresCluster, tmp_path):  # noqa: F811
    url = create_database(own_postgres.url("postgres"), "pinflow")
    home = tmp_path / "home"
    home.mkdir()
    cluster = Cluster(home, url, "postgresql")
    try:
        cluster.start(schedulers=0, workers=0)
        assert cluster.server is not None
        own_postgres.halt()
        try:
            started = time.monotonic()
            answer = httpx.get(
                f"{cluster.server.url}/api/v1/runs",
                headers={"Authorization": f"Bearer {cluster.tokens['read']}"},
                timeout=30,
            )
            assert answer.status_code == 503, answer.text
            assert answer.headers["Retry-After"] and time.monotonic() - started < 15
            env = pinflow_env(
                home, "", PINFLOW_API_URL=cluster.server.url, PINFLOW_TOKEN=cluster.tokens["read"]
            )
            cli = subprocess.Popen(
                [PINFLOW, "runs", "-o", "json"], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            scheduler = cluster.add_scheduler("late")
            deadline = time.monotonic() + 60  # until both met the outage
            while "the database unavailable" not in scheduler.log():
                assert time.monotonic() < deadline and scheduler.alive, scheduler.log()
                time.sleep(0.1)
            assert cli.poll() is None, cli.communicate()
        finally:
            own_postgres.resume()
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err
        assert out.strip().startswith("["), out
        deadline = time.monotonic() + 60
        while "scheduler late started" not in scheduler.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scheduler.alive and "scheduler late started" in scheduler.log(), scheduler.log()
        assert "the database is back" in scheduler.log(), scheduler.log()
    finally:
        cluster.stop()
