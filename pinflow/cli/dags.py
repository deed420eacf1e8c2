"""CLI commands about DAGs: what is current, what is broken."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pinflow.cli.client import ApiClient
from pinflow.cli.options import ApiUrl, Token, client_settings
from pinflow.cli.render import Column, Format, Output, chosen, show


def _state(d: dict[str, Any]) -> str:
    return "inactive" if not d["is_active"] else "paused" if d["is_paused"] else "active"


DAG_COLUMNS = [
    Column("dag_id", lambda d: d["dag_id"], no_wrap=True),
    Column("repo", lambda d: d["repo"]),
    Column("schedule", lambda d: d["schedule"] or "manual"),
    Column("current sha", lambda d: (d["current_sha"] or "")[:12], no_wrap=True),
    Column("tasks", lambda d: str(len(d["tasks"]))),
    Column("state", _state),
    Column("last error", lambda d: d["last_error"] or ""),
]
ERROR_COLUMNS = [
    Column("repo", lambda e: e["repo"]),
    Column("sha", lambda e: e["sha"][:12], no_wrap=True),
    Column("file", lambda e: e["file"], no_wrap=True),
    Column("error", lambda e: e["error"]),
]


def dags(
    errors: Annotated[bool, typer.Option("--errors", help="Show broken DAG files instead")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="With --errors: each file's whole traceback")
    ] = False,
    output: Output = None,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """DAGs with their current version; with --errors, the import errors at each repo's tip."""
    client = ApiClient(client_settings(api_url, token))
    if errors:
        items = client.get("/import-errors")["items"]
        if verbose and chosen(output) is not Format.json:
            for e in items:
                print(f"{e['repo']} {e['sha'][:12]} {e['file']}: {e['error']}")
                print(e.get("traceback") or "", end="\n\n")
            if not items:
                print("no import errors")
            return
        show(items, ERROR_COLUMNS, output, empty="no import errors")
        return
    show(client.get("/dags")["items"], DAG_COLUMNS, output)


def register(app: typer.Typer) -> None:
    app.command("dags")(dags)
