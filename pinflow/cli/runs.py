"""CLI commands about runs: trigger one (pinned), list them, read logs, pause DAGs."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.live import Live

from dagstore.errors import BadRequest
from pinflow.cli.client import ApiClient
from pinflow.cli.options import ApiUrl, Token, client_settings
from pinflow.cli.render import console, short_time, table

TERMINAL_RUN_STATES = ("success", "failed")


def _client(api_url: str | None, token: str | None) -> ApiClient:
    return ApiClient(client_settings(api_url, token))


def _tasks_table(run: dict[str, Any]):
    rows = table("task", "state", "try", "worker", "started", "ended", "error", no_wrap=("task",))
    for t in run.get("tasks", []):
        error = (t.get("error") or "").strip().splitlines()
        rows.add_row(
            t["task_id"],
            t["state"],
            f"{t['try_number']}/{t['max_tries']}",
            t.get("worker") or "",
            short_time(t.get("started_at")),
            short_time(t.get("ended_at")),
            error[-1] if error else "",
        )
    return rows


def _run_header(run: dict[str, Any]) -> str:
    return (
        f"run {run['run_id']}  dag {run['dag_id']}  sha {run['sha'][:12]}  "
        f"state [bold]{run['state']}[/bold]"
    )


def trigger(
    dag_id: str,
    ref: Annotated[str | None, typer.Option(help="Branch or tag whose commit the run pins")] = None,
    sha: Annotated[str | None, typer.Option(help="The exact commit to run")] = None,
    conf: Annotated[str | None, typer.Option(help="JSON object passed to tasks")] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the run; exit 0 on success, 1 on failure")
    ] = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Start a manual run, pinned to one commit (the DAG's current version by default)."""
    body: dict[str, Any] = {}
    if conf is not None:
        try:
            body["conf"] = json.loads(conf)
        except json.JSONDecodeError as exc:
            raise BadRequest(f"--conf is not valid JSON: {exc}") from None
        if not isinstance(body["conf"], dict):
            raise BadRequest("--conf must be a JSON object")
    if ref:
        body["ref"] = ref
    if sha:
        body["sha"] = sha
    client = _client(api_url, token)
    run = client.post(f"/dags/{dag_id}/runs", json=body)
    print(f"{run['run_id']} pinned to {run['sha']}")
    if not wait:
        return
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            run = client.get(f"/runs/{run['run_id']}")
            live.update(_tasks_table(run))
            if run["state"] in TERMINAL_RUN_STATES:
                break
            time.sleep(0.5)
    console.print(_run_header(run))
    raise typer.Exit(0 if run["state"] == "success" else 1)


def runs(
    dag_id: Annotated[str | None, typer.Argument(help="Only this DAG's runs")] = None,
    state: Annotated[str | None, typer.Option(help="queued, running, success or failed")] = None,
    limit: int = 20,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Runs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if dag_id:
        params["dag_id"] = dag_id
    if state:
        params["state"] = state
    rows = table(
        "run_id", "dag", "sha", "state", "logical date", "created by", no_wrap=("run_id", "sha")
    )
    for r in _client(api_url, token).get("/runs", params=params)["items"]:
        rows.add_row(
            r["run_id"],
            r["dag_id"],
            r["sha"][:12],
            r["state"],
            short_time(r["logical_date"]),
            r["created_by"],
        )
    console.print(rows)


def run(run_id: str, api_url: ApiUrl = None, token: Token = None) -> None:
    """One run: its pinned sha, state, and every task with its tries."""
    data = _client(api_url, token).get(f"/runs/{run_id}")
    console.print(_run_header(data))
    console.print(_tasks_table(data))


def logs(
    run_id: str,
    task_id: str,
    try_number: Annotated[
        int | None, typer.Option("--try", help="Which try (default: latest)")
    ] = None,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """A task's log."""
    params = {"try": try_number} if try_number else {}
    text = _client(api_url, token).get(f"/runs/{run_id}/tasks/{task_id}/logs", params=params)
    print(text, end="" if text.endswith("\n") or not text else "\n")


def pause(dag_id: str, api_url: ApiUrl = None, token: Token = None) -> None:
    """Stop scheduled runs of a DAG (manual runs still work)."""
    _client(api_url, token).post(f"/dags/{dag_id}/pause")
    print(f"paused {dag_id}")


def unpause(dag_id: str, api_url: ApiUrl = None, token: Token = None) -> None:
    """Resume scheduled runs of a DAG."""
    _client(api_url, token).post(f"/dags/{dag_id}/unpause")
    print(f"unpaused {dag_id}")


def register(app: typer.Typer) -> None:
    for command in (trigger, runs, run, logs, pause, unpause):
        app.command(command.__name__)(command)
