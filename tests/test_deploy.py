"""compose.yaml, checked without Docker: valid against the Compose Specification's schema,
the promised topology, and every pinflow command in it a real one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import typer
import yaml

from pinflow.cli import app

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_valid_against_the_compose_specification():
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(COMPOSE), key=str)
    assert errors == [], [e.message for e in errors]


def test_topology():
    assert {"postgres-a", "postgres-b", "redis-a", "redis-b", "migrate", "lb"} <= set(SERVICES)
    assert {"sentinel1", "sentinel2", "sentinel3"} <= set(SERVICES)  # issue 26: HA
    by_command: dict[str, list[str]] = {}
    for name, service in SERVICES.items():
        if "build" in service:
            by_command.setdefault(service["command"][0], []).append(name)
    assert len(by_command["server"]) == 2
    assert len(by_command["scheduler"]) == 2
    assert len(by_command["worker"]) == 3
    assert by_command["db"] == ["migrate"]
    for name, service in SERVICES.items():
        assert "healthcheck" in service or name in by_command.get("scheduler", []) + by_command.get(
            "worker", []
        ) + ["migrate"], f"{name} has no health check"
    mounted: dict[str, list[str]] = {}  # named volume → the API servers that mount it
    for name in by_command["server"]:
        for volume in SERVICES[name].get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume["source"]
            mounted.setdefault(source, []).append(name)
    shared = {v: names for v, names in mounted.items() if len(names) > 1}
    assert shared == {}, f"API servers share a volume (issue 13: nothing shared): {shared}"
    assert "store" not in COMPOSE.get("volumes", {})
    upstreams = re.findall(r"server (\w+):8740", (ROOT / "deploy/nginx.conf").read_text())
    assert sorted(upstreams) == sorted(by_command["server"])
    for name in by_command["worker"]:
        env = SERVICES[name]["environment"]
        assert env["PINFLOW_DATABASE_URL"] == "" and "PINFLOW_TOKEN" in env
    assert (ROOT / "Dockerfile").read_text().count('ENTRYPOINT ["pinflow"]') == 1


def _check_command(args: list[str]) -> None:
    """Parse `pinflow ARGS` with the real CLI definition; raises on an unknown command/option."""
    command = typer.main.get_command(app)
    info_name = "pinflow"
    while True:
        ctx = command.make_context(info_name, list(args), resilient_parsing=False)
        if not hasattr(command, "resolve_command"):  # a leaf command, not a group
            return
        # Click 8.2 keeps a group's subcommand in `_protected_args` (the public name is
        # deprecated and empty there); older Clicks in `protected_args`.
        rest = [*(getattr(ctx, "_protected_args", None) or ctx.protected_args or []), *ctx.args]
        name, command, args = command.resolve_command(ctx, rest)
        info_name = name


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if "build" in s))
def test_every_service_command_is_a_real_pinflow_command(name):
    _check_command(SERVICES[name]["command"])


def test_the_checker_refuses_wrong_commands():
    # Typer vendors its own click, so match the message rather than click's class.
    with pytest.raises(Exception, match="No such command"):
        _check_command(["servr"])
    with pytest.raises(Exception, match="No such option"):
        _check_command(["worker", "--no-such-flag"])
