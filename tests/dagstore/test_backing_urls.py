"""Bad PINFLOW_DATABASE_URL and PINFLOW_REDIS_URL values (issue 26): one clear line at start
and a non-zero exit for every process that uses them, never a traceback; good ones parse."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dagstore.core.db import check_database_url
from dagstore.core.errors import BadRequest
from dagstore.core.redisconn import check_redis_url, parse_sentinel_url
from tests.support.ports import free_port
from tests.support.redis import redis_binary
from tests.support.sentinel import wait_ping
from tests.support.server import PINFLOW, pinflow_env


def test_sentinel_urls_parse():
    target = parse_sentinel_url("redis+sentinel://:s%40cret@h1:26379,h2:26380,[::1]:26381/jobs/3")
    assert target.sentinels == (("h1", 26379), ("h2", 26380), ("::1", 26381))
    assert (target.service, target.db, target.password) == ("jobs", 3, "s@cret")
    assert parse_sentinel_url("redis+sentinel://h1:1/svc").db == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h1:26379,h2/svc", "'h2' is not HOST:PORT"),
        ("redis+sentinel://h1:26379,,h2:1/svc", "'(empty)' is not HOST:PORT"),
        ("redis+sentinel://h1:99999/svc", "'h1:99999' is not HOST:PORT"),
        ("redis+sentinel://h1:26379", "must end in /SERVICE or /SERVICE/DB"),
        ("redis+sentinel://h1:26379/svc/x", "database 'x' is not a number"),
        ("redis+sentinel://h1:26379/svc/0/more", "must end in /SERVICE or /SERVICE/DB"),
        ("sentinel://h1:26379/svc", "must start with redis://"),
        ("redis://h1:notaport/0", "malformed"),
    ],
)
def test_bad_redis_urls(url: str, says: str):
    with pytest.raises(BadRequest, match=says.replace("(", r"\(").replace(")", r"\)")):
        check_redis_url(url)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://u@/db?host=h1:5432&host=h2:port", "host='h2:port' is not HOST or"),
        ("postgresql://u@/db?host=:5432", "host=':5432' is not HOST or"),
        ("postgresql://u@/db?host=h1&target_session_attrs=primary-ish", "target_session_attrs"),
        ("postgresql+psycopg//nonsense", "not a database URL"),
    ],
)
def test_bad_database_urls(url: str, says: str):
    with pytest.raises(ValueError, match=says):
        check_database_url(url)


def test_good_multi_host_database_url():
    check_database_url(
        "postgresql+psycopg://u@/db?host=10.0.0.1:5432&host=10.0.0.2:5433"
        "&target_session_attrs=read-write"
    )


@pytest.fixture
def lonely_sentinel(tmp_path: Path):
    """A real Sentinel that monitors nothing: it answers, and names no primary."""
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n")
    proc = subprocess.Popen(
        [redis_binary(), str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ping(port)
        yield port
    finally:
        proc.kill()
        proc.wait()


def run_pinflow(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PINFLOW, *args],
        env=pinflow_env(tmp_path, env.pop("PINFLOW_DATABASE_URL", ""), **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line(result: subprocess.CompletedProcess, says: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert says in lines[0], lines[0]


@pytest.mark.parametrize("command", ["server", "scheduler", "worker"])
def test_a_sentinel_naming_no_primary_stops_every_process_at_start(
    tmp_path: Path, lonely_sentinel: int, command: str
):
    dead = free_port()  # a Sentinel that is down does not decide: the one that answers does
    result = run_pinflow(
        tmp_path,
        command,
        PINFLOW_REDIS_URL=f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{lonely_sentinel}/nosuch",
        PINFLOW_DATABASE_URL=f"sqlite:///{tmp_path}/p.db",
        PINFLOW_TOKEN="pf_unused",
    )
    assert_one_line(result, f"127.0.0.1:{lonely_sentinel} names no primary for service 'nosuch'")


@pytest.mark.parametrize("command", ["server", "scheduler", "worker"])
def test_a_malformed_sentinel_url_stops_every_process_at_start(tmp_path: Path, command: str):
    result = run_pinflow(
        tmp_path,
        command,
        PINFLOW_REDIS_URL="redis+sentinel://127.0.0.1:26379,127.0.0.1/pinflow",
        PINFLOW_DATABASE_URL=f"sqlite:///{tmp_path}/p.db",
        PINFLOW_TOKEN="pf_unused",
    )
    assert_one_line(result, "'127.0.0.1' is not HOST:PORT")


@pytest.mark.parametrize("command", [["server"], ["scheduler"], ["db", "upgrade"]])
def test_a_malformed_multi_host_database_url_stops_at_start(tmp_path: Path, command: list[str]):
    result = run_pinflow(
        tmp_path,
        *command,
        PINFLOW_DATABASE_URL="postgresql://pinflow@/pinflow?host=db1:5432&host=db2:x",
        PINFLOW_REDIS_URL="redis://127.0.0.1:1/0",
    )
    assert_one_line(result, "host='db2:x' is not HOST or HOST:PORT")
