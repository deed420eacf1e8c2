"""CLI commands about DAGs: what is current, what is broken."""

from __future__ import annotations

from typing import Annotated

import typer

from pinflow.cli.client import ApiClient
from pinflow.cli.options import ApiUrl, Token, client_settings
from pinflow.cli.render import console, table


def dags(
    errors: Annotated[bool, typer.Option("--errors", help="Show broken DAG files instead")] = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """DAGs with their current version; with --errors, the import errors at each repo's tip."""
    client = ApiClient(client_settings(api_url, token))
    if errors:
        rows = table("repo", "sha", "file", "error", no_wrap=("sha", "file"))
        items = client.get("/import-errors")["items"]
        for e in items:
            rows.add_row(e["repo"], e["sha"][:12], e["file"], e["error"])
        console.print(rows if items else "no import errors")
        return
    rows = table(
        "dag_id",
        "repo",
        "schedule",
        "current sha",
        "tasks",
        "state",
        "last error",
        no_wrap=("dag_id", "current sha"),
    )
    for d in client.get("/dags")["items"]:
        state = "inactive" if not d["is_active"] else "paused" if d["is_paused"] else "active"
        rows.add_row(
            d["dag_id"],
            d["repo"],
            d["schedule"] or "manual",
            (d["current_sha"] or "")[:12],
            str(len(d["tasks"])),
            state,
            d["last_error"] or "",
        )
    console.print(rows)


def register(app: typer.Typer) -> None:
    app.command("dags")(dags)
