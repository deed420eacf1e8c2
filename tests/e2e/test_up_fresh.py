"""`make up` on a fresh machine (issue 29, item 1): only python3, git and make, no bubblewrap
and no redis-server on PATH. The demo still runs to success, in a single-user mode the
banner announces with what to install; a busy port is said, with a non-zero exit, before
anything starts; `pinflow server` itself is never downgraded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from dagstore.core.errors import BadRequest
from dagstore.parsing.sandbox import SandboxProbe
from pinflow.upmode import parse_mode
from tests.e2e.test_up import end_up, start_up, wait_for
from tests.support.ports import free_port
from tests.support.server import PINFLOW

MISSING = ("bwrap", "redis-server", "redis-cli", "redis-sentinel", "redis-check-aof")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_path(tmp_path: Path) -> str:
    """A PATH like the system's, without bubblewrap and Redis."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        for entry in Path(folder).iterdir() if Path(folder).is_dir() else ():
            if entry.name not in MISSING and not (bin_dir / entry.name).exists():
                (bin_dir / entry.name).symlink_to(entry)
    path = str(bin_dir)
    assert subprocess.run(["which", "bwrap"], env={"PATH": path}).returncode != 0
    return path


def test_up_demo_succeeds_without_bubblewrap_and_says_how_code_is_parsed(
    tmp_path: Path, fresh_path: str
):
    home, port = tmp_path / "home", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINFLOW_")}
    env["PATH"] = fresh_path
    out = tmp_path / "up.log"
    log = out.open("wb")
    proc = start_up(home, port, env, log)
    try:
        token = wait_for(lambda: json.loads((home / "up-tokens.json").read_text())["admin"])
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
        )
        run_id = wait_for(lambda: "started run" in out.read_text() and out.read_text())
        run_id = run_id.split("started run ")[1].split()[0]
        done = wait_for(
            lambda: (
                (r := client.get(f"/runs/{run_id}").json())["state"] in ("success", "failed") and r
            )
        )
        assert done["state"] == "success", done
        said = out.read_text()
        assert "single-user mode" in said and "NOT SANDBOXED" in said, said
        assert "bubblewrap is not installed, so pushed code is parsed with your" in said
        assert "apt-get install bubblewrap" in said
        assert "could not start a run" not in said and "not parsed" not in said
        assert f"export PINFLOW_HOME={home}" in said
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        end_up(proc)
        log.close()


def test_up_refuses_a_busy_port_before_starting_anything(tmp_path: Path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINFLOW_")}
    with socket.socket() as other:  # someone else's server
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        for args, extra in (
            (["--port", str(port)], {}),
            ([], {"PINFLOW_UP_PORT": str(port)}),
        ):
            done = subprocess.run(
                [PINFLOW, "up", "--demo", "--home", str(home), *args],
                env={**env, **extra},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 5, done
            assert f"port {port} on 127.0.0.1 is busy" in done.stderr, done.stderr
            assert f"make up PORT={port + 1}" in done.stderr
            assert "pinflow is up" not in done.stdout and "Traceback" not in done.stderr
    assert not home.exists()


def test_make_up_passes_port():
    done = subprocess.run(
        ["make", "-n", "-C", str(ROOT), "up", "PORT=8751"], capture_output=True, text=True
    )
    assert "pinflow up --demo --port 8751" in done.stdout, done.stdout


def test_only_up_on_loopback_parses_unsandboxed_and_pinflow_server_never(
    fresh_path: str, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PATH", fresh_path)
    monkeypatch.delenv("PINFLOW_PARSE_SANDBOX", raising=False)
    mode = parse_mode("127.0.0.1")
    assert mode.single_user and mode.setting == "off"
    with pytest.raises(BadRequest, match="--host 0.0.0.0 would let others push code"):
        parse_mode("0.0.0.0")
    monkeypatch.setenv("PINFLOW_PARSE_SANDBOX", "on")
    with pytest.raises(BadRequest, match="PINFLOW_PARSE_SANDBOX=on but"):
        parse_mode("127.0.0.1")
    # The server's own probe still refuses to parse (no silent fallback).
    assert "not installed" in (SandboxProbe("on").sandbox.problem or "")
