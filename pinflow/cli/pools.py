"""`pinflow pool set NAME SLOTS`, `pinflow pool list`, `pinflow pool delete NAME`: over the API."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from dagstore.authoring.options import ID_PATTERN
from pinflow.cli.client import ApiClient
from pinflow.cli.options import ApiUrl, Token, client_settings
from pinflow.cli.render import Column, Output, show

pool_app = typer.Typer(help="Pools: how many tasks that name one run at once, across DAGs.")

POOL_COLUMNS = [
    Column("NAME", lambda p: p["name"], no_wrap=True),
    Column("SLOTS", lambda p: str(p["slots"])),
    Column("RUNNING", lambda p: str(p["running"])),
    Column("QUEUED", lambda p: str(p["queued"])),
    Column("OPEN", lambda p: str(p["open"])),
    Column("DESCRIPTION", lambda p: p["description"]),
]


def _client(api_url: str | None, token: str | None) -> ApiClient:
    return ApiClient(client_settings(api_url, token))


def _pool_name(name: str) -> str:
    """A pool is named as a task's `pool=` names it: said here, not as a server's redirect."""
    if not ID_PATTERN.fullmatch(name):
        raise typer.BadParameter(f"{name!r} is not a pool name (letters, digits, . _ -)")
    return name


PoolName = Annotated[str, typer.Argument(callback=_pool_name, help="the pool's name")]


@pool_app.command("set")
def pool_set(
    name: PoolName,
    slots: Annotated[int, typer.Argument(min=0, help="tasks at once; 0 holds them all")],
    description: Annotated[str, typer.Option(help="what the pool guards")] = "",
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Create pool NAME or change its slots (admin token)."""
    pool = _client(api_url, token).request(
        "PUT", f"/pools/{quote(name, safe='')}", json={"slots": slots, "description": description}
    )
    print(f"pool {pool['name']}: {pool['slots']} slots ({pool['open']} open)")


@pool_app.command("list")
def pool_list(output: Output = None, api_url: ApiUrl = None, token: Token = None) -> None:
    """Pools with their slots and how many are taken."""
    show(_client(api_url, token).get("/pools")["items"], POOL_COLUMNS, output, empty="no pools")


@pool_app.command("delete")
def pool_delete(name: PoolName, api_url: ApiUrl = None, token: Token = None) -> None:
    """Remove pool NAME (admin token); tasks naming it wait until it exists again."""
    _client(api_url, token).request("DELETE", f"/pools/{quote(name, safe='')}")
    print(f"deleted pool {name}")


def register(app: typer.Typer) -> None:
    app.add_typer(pool_app, name="pool")
