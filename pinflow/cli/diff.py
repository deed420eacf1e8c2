"""`pinflow diff`: what changed between the commit a run used and today's, or any two."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from dagstore.core.errors import BadRequest
from dagstore.core.terminal import printable
from pinflow.cli.client import ApiClient
from pinflow.cli.options import ApiUrl, Token, client_settings
from pinflow.cli.render import console

STYLES = (("+++", "bold"), ("---", "bold"), ("+", "green"), ("-", "red"), ("@@", "cyan"))


def diff(
    target: Annotated[str, typer.Argument(help="A run id, or a repository (then BASE HEAD)")],
    base: Annotated[str | None, typer.Argument(help="With a repository: the older commit")] = None,
    head: Annotated[str | None, typer.Argument(help="With a repository: the newer commit")] = None,
    to: Annotated[
        str | None, typer.Option(help="With a run: compare with this ref or sha, not current")
    ] = None,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """What changed between a run's commit and its DAG's current version (`diff RUN_ID`), or
    between two commits of a repository (`diff REPO BASE HEAD`)."""
    client = ApiClient(client_settings(api_url, token))
    if base is not None or head is not None:
        if base is None or head is None or to is not None:
            raise BadRequest("give REPO BASE HEAD, or RUN_ID [--to REF]")
        repo = target
    else:
        run = client.get(f"/runs/{target}")
        dag = client.get(f"/dags/{run['dag_id']}")
        repo, base, head = dag["repo"], run["sha"], to or dag["current_sha"]
        if head is None:
            raise BadRequest(f"DAG {run['dag_id']!r} has no current version; give --to")
    body = client.get(f"/repos/{repo}/diff/{base}..{head}")
    console.print(f"[bold]{repo}[/bold] {body['base'][:12]}..{body['head'][:12]}")
    for dag_change in body["dags"]:
        console.print(Text(_dag_line(dag_change), style="yellow"))
    if not body["files"]:
        console.print("no file changed")
    for f in body["files"]:
        _print_patch(f)


def _dag_line(change: dict[str, Any]) -> str:
    if change["change"] != "changed":
        return f"DAG {change['dag_id']}: {change['change']}"
    parts = []
    if change["tasks_added"]:
        parts.append("tasks added " + ", ".join(change["tasks_added"]))
    if change["tasks_removed"]:
        parts.append("tasks removed " + ", ".join(change["tasks_removed"]))
    for task_id, keys in change["tasks_changed"].items():
        parts.append(f"task {task_id}: {', '.join(keys)}")
    if change["settings_changed"]:
        parts.append(", ".join(change["settings_changed"]) + " changed")
    return f"DAG {change['dag_id']}: " + ("; ".join(parts) or "changed")


def _print_patch(f: dict[str, Any]) -> None:
    title = f"{f['old_path']} → {f['path']}" if f.get("old_path") else f["path"]
    console.print(Text(printable(f"{f['status']}: {title}"), style="bold"))
    for line in f["patch"].splitlines():  # the pushed files' own bytes: escapes shown, not run
        style = next((s for prefix, s in STYLES if line.startswith(prefix)), "")
        console.print(Text(printable(line, lines=True), style=style), soft_wrap=True)
    if f["truncated"]:
        console.print(Text("[patch truncated]", style="yellow"))


def register(app: typer.Typer) -> None:
    app.command("diff")(diff)
