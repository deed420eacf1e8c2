"""CLI commands about runs: trigger one (pinned), list them, read logs, pause DAGs."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.progress import Progress

from dagstore.errors import BadRequest, NotFound
from pinflow.cli.client import ApiClient
from pinflow.cli.options import ApiUrl, Token, client_settings
from pinflow.cli.render import console, short_time, table

TERMINAL_RUN_STATES = ("success", "failed", "canceled")


def _client(api_url: str | None, token: str | None) -> ApiClient:
    return ApiClient(client_settings(api_url, token))


def _tasks_table(run: dict[str, Any]):
    rows = table(
        "task",
        "state",
        "try",
        "sha",
        "worker",
        "started",
        "ended",
        "error",
        no_wrap=("task", "sha"),
    )
    for t in run.get("tasks", []):
        error = (t.get("error") or "").strip().splitlines()
        tries = t.get("tries") or []
        rows.add_row(
            t["task_id"],
            t["state"],
            f"{t['try_number']}/{t['max_tries']}",
            ", ".join(dict.fromkeys(x["sha"][:12] for x in tries)) or t["sha"][:12],
            t.get("worker") or "",
            short_time(t.get("started_at")),
            short_time(t.get("ended_at")),
            error[-1] if error else "",
        )
    return rows


def _run_header(run: dict[str, Any]) -> str:
    shas = run.get("shas") or [run["sha"]]
    also = f"  (tries ran {', '.join(s[:12] for s in shas)})" if len(shas) > 1 else ""
    return (
        f"run {run['run_id']}  dag {run['dag_id']}  sha {run['sha'][:12]}  "
        f"state [bold]{run['state']}[/bold]{also}"
    )


def _follow(client: ApiClient, run_id: str) -> None:
    """Show the run's tasks live until it ends; exit 0 on success, 1 otherwise."""
    with Live(console=console, refresh_per_second=4) as live:
        while True:
            run = client.get(f"/runs/{run_id}")
            live.update(_tasks_table(run))
            if run["state"] in TERMINAL_RUN_STATES:
                break
            time.sleep(0.5)
    console.print(_run_header(run))
    raise typer.Exit(0 if run["state"] == "success" else 1)


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
    if wait:
        _follow(client, run["run_id"])


def runs(
    dag_id: Annotated[str | None, typer.Argument(help="Only this DAG's runs")] = None,
    state: Annotated[
        str | None, typer.Option(help="queued, running, success, failed or canceled")
    ] = None,
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
        int | None, typer.Option("--try", min=1, help="Which try (default: latest)")
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Print lines as they come; exit when the try ends (0: success)"
        ),
    ] = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """A task's log; with --follow, while it runs."""
    client = _client(api_url, token)
    path = f"/runs/{run_id}/tasks/{task_id}/logs"
    params: dict[str, Any] = {"try": try_number} if try_number else {}
    if not follow:
        text = client.get(path, params=params)
        print(text, end="" if text.endswith("\n") or not text else "\n")
        return
    run = client.get(f"/runs/{run_id}")
    if task_id not in {t["task_id"] for t in run["tasks"]}:
        raise NotFound(f"run {run_id!r} has no task {task_id!r}")
    offset = 0
    while True:
        try:
            response = client.response("GET", path, params={**params, "offset": offset})
        except NotFound:  # the try has not started yet: wait for it
            time.sleep(0.5)
            continue
        params["try"] = int(response.headers["X-Pinflow-Try"])  # stay on the try we follow
        sys.stdout.write(response.text)
        sys.stdout.flush()
        offset = int(response.headers["X-Pinflow-Log-Bytes"])
        if response.headers["X-Pinflow-Try-Ended"] == "true":
            raise typer.Exit(0 if response.headers["X-Pinflow-Try-State"] == "success" else 1)
        time.sleep(0.5)


def clear(
    run_id: str,
    task: Annotated[
        list[str] | None, typer.Option("--task", help="A task to clear (repeat); default: all")
    ] = None,
    failed: Annotated[
        bool, typer.Option("--failed", help="Only failed, upstream_failed or canceled tasks")
    ] = False,
    downstream: Annotated[
        bool, typer.Option("--downstream", help="And every task below the cleared ones")
    ] = False,
    on_latest: Annotated[
        bool,
        typer.Option(
            "--on-latest", help="Run them on the DAG's current version, not the run's own sha"
        ),
    ] = False,
    wait: Annotated[
        bool, typer.Option(help="Follow the run; exit 0 on success, 1 otherwise")
    ] = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Run tasks of a run again, each with a new try, on the run's own sha by default."""
    client = _client(api_url, token)
    body = {
        "task_ids": task or None,
        "failed_only": failed,
        "downstream": downstream,
        "on_latest": on_latest,
    }
    run = client.post(f"/runs/{run_id}/clear", json=body)
    sha = next((t["sha"] for t in run["tasks"] if t["task_id"] in run["cleared"]), run["sha"])
    print(f"cleared {', '.join(run['cleared'])} of {run_id}; they run {sha}")
    if wait:
        _follow(client, run_id)


def backfill(
    dag_id: str,
    start: Annotated[str, typer.Option(help="First logical date (ISO date or time, UTC)")],
    end: Annotated[str, typer.Option(help="Last logical date, included")],
    sha: Annotated[str | None, typer.Option(help="The commit every run pins")] = None,
    ref: Annotated[str | None, typer.Option(help="Pin what this branch or tag names now")] = None,
    max_active_runs: Annotated[
        int | None, typer.Option(help="Runs at a time (default: the DAG's max_active_runs)")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Show progress; exit 0 when every run succeeded, 1 otherwise")
    ] = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """One run per schedule tick from --start to --end, pinned to one commit; ticks that
    have a run already are skipped."""
    client = _client(api_url, token)
    body: dict[str, Any] = {"start": start, "end": end, "sha": sha, "ref": ref}
    if max_active_runs is not None:
        body["max_active_runs"] = max_active_runs
    made = client.post(f"/dags/{dag_id}/backfill", json=body)
    print(
        f"backfill {made['id']}: {len(made['created'])} run(s) of {dag_id} pinned to "
        f"{made['sha']}, {made['max_active_runs']} at a time"
    )
    for skip in made["skipped"]:
        print(f"skipped {skip['logical_date']}: it has run {skip['run_id']}")
    if not wait or not made["created"]:
        return
    with Progress(console=console, transient=False) as progress:
        bar = progress.add_task(f"backfill {made['id']}", total=made["runs"])
        while True:
            state = client.get(f"/backfills/{made['id']}")
            progress.update(bar, completed=state["done"])
            if state["done"] >= state["runs"]:
                break
            time.sleep(0.5)
    states = state["states"]
    console.print(", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    raise typer.Exit(0 if set(states) == {"success"} else 1)


def cancel(run_id: str, api_url: ApiUrl = None, token: Token = None) -> None:
    """Cancel a run: nothing more of it starts, running tasks are stopped by their workers."""
    run = _client(api_url, token).post(f"/runs/{run_id}/cancel")
    print(f"canceled {run_id} ({run['canceled_tasks']} task(s) stopped or kept from starting)")


def pause(dag_id: str, api_url: ApiUrl = None, token: Token = None) -> None:
    """Stop scheduled runs of a DAG (manual runs still work)."""
    _client(api_url, token).post(f"/dags/{dag_id}/pause")
    print(f"paused {dag_id}")


def unpause(dag_id: str, api_url: ApiUrl = None, token: Token = None) -> None:
    """Resume scheduled runs of a DAG."""
    _client(api_url, token).post(f"/dags/{dag_id}/unpause")
    print(f"unpaused {dag_id}")


def register(app: typer.Typer) -> None:
    for command in (trigger, runs, run, logs, clear, cancel, backfill, pause, unpause):
        app.command(command.__name__)(command)
