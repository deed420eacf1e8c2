"""CLI commands about runs: trigger one (pinned), list them, read logs, pause DAGs."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.progress import Progress

from dagstore.authoring.mapping import instance_label, split_label
from dagstore.core.errors import BadRequest, NotFound
from pinflow.cli.client import ApiClient
from pinflow.cli.conf import parse_conf
from pinflow.cli.options import ApiUrl, Token, client_settings
from pinflow.cli.render import (
    Column,
    Format,
    Output,
    chosen,
    console,
    on_screen,
    say,
    short_time,
    show,
    table_of,
    unless_reader_gone,
)

TERMINAL_RUN_STATES = ("success", "failed", "canceled")
TERMINAL_TASK_STATES = ("success", "failed", "upstream_failed", "canceled", "skipped")
TIMED_OUT = 8  # `trigger --wait --timeout`: the run had not ended (pinflow.cli.EXIT_CODES)


def _client(api_url: str | None, token: str | None) -> ApiClient:
    return ApiClient(client_settings(api_url, token))


def _result(task: dict[str, Any]) -> str:
    if task.get("result") is None:
        return ""
    text = json.dumps(task["result"], default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def try_cell(task: dict[str, Any]) -> str:
    """`2/3`: try 2 of 3. After a clear (which grants retries + 1 more tries) the count
    since the clear follows: `4 (1/1 since clear)`, not `4/4`, which reads as used up."""
    number, most, retries = task["try_number"], task["max_tries"], task.get("retries")
    before = most - (retries + 1) if retries is not None else 0
    if before <= 0:
        return f"{number}/{most}"
    return f"{number} ({max(number - before, 0)}/{retries + 1} since clear)"


TASK_COLUMNS = [  # state, ids and times are never cut; the rest goes first (`drop`)
    Column("task", lambda t: instance_label(t["task_id"], t.get("map_index")), no_wrap=True),
    Column("state", lambda t: t["state"], no_wrap=True),
    Column("try", lambda t: try_cell(t), no_wrap=True),
    Column(
        "sha",
        lambda t: (
            ", ".join(dict.fromkeys(x["sha"][:12] for x in t.get("tries") or [])) or t["sha"][:12]
        ),
        no_wrap=True,
        drop=4,
    ),
    Column("worker", lambda t: t.get("worker") or "", drop=5),
    Column("started", lambda t: short_time(t.get("started_at")), no_wrap=True),
    Column("ended", lambda t: short_time(t.get("ended_at")), no_wrap=True, drop=3),
    Column("result", _result, drop=2),
    Column("error", lambda t: ((t.get("error") or "").strip().splitlines() or [""])[-1], drop=1),
]


def _run_state(run: dict[str, Any]) -> str:
    """The run's state; a backfill's run waiting for a slot says so."""
    return f"{run['state']} (held)" if run.get("held") else run["state"]


def _run_header(run: dict[str, Any]) -> str:
    shas = run.get("shas") or [run["sha"]]
    also = f"  (tries ran {', '.join(s[:12] for s in shas)})" if len(shas) > 1 else ""
    return (
        f"run {run['run_id']}  dag {run['dag_id']}  sha {run['sha'][:12]}  "
        f"state [bold]{_run_state(run)}[/bold]{also}"
    )


def _follow(client: ApiClient, run_id: str, output: Format | None, timeout: float | None) -> None:
    """Wait for the run to end, live on a terminal; then its tasks. Exit 0 on success, 1
    otherwise, TIMED_OUT when `timeout` passes first (the run goes on). A reader that stops
    reading (`| head -1`) changes none of that."""
    deadline = time.monotonic() + timeout if timeout else None
    live = Live(console=console, refresh_per_second=4) if chosen(output) is Format.table else None
    with live or contextlib.nullcontext():
        while True:
            run = client.get(f"/runs/{run_id}")
            if live is not None:
                live.update(table_of(run.get("tasks", []), TASK_COLUMNS))
            ended = run["state"] in TERMINAL_RUN_STATES
            if ended or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(0.5)
    with unless_reader_gone():
        _say_tasks(run, output, live is not None)
    if not ended:
        print(f"pinflow: run {run_id} still {run['state']} after {timeout:g} s", file=sys.stderr)
        raise typer.Exit(TIMED_OUT)
    raise typer.Exit(0 if run["state"] == "success" else 1)


def _say_tasks(run: dict[str, Any], output: Format | None, shown_live: bool) -> None:
    """The run's final tasks (a terminal has them on screen already), then its outcome."""
    if chosen(output) is Format.json:
        print(json.dumps(run, indent=2, default=str))
        return
    if not shown_live:
        show(run.get("tasks", []), TASK_COLUMNS, output)
    say(_run_header(run), output)


def trigger(
    dag_id: str,
    ref: Annotated[str | None, typer.Option(help="Branch or tag whose commit the run pins")] = None,
    sha: Annotated[str | None, typer.Option(help="The exact commit to run")] = None,
    conf: Annotated[str | None, typer.Option(help="JSON object passed to tasks")] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the run; exit 0 on success, 1 on failure")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(min=0.1, help=f"With --wait: give up after SECONDS (exit {TIMED_OUT})"),
    ] = None,
    output: Output = None,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Start a manual run, pinned to one commit (the DAG's current version by default)."""
    if timeout is not None and not wait:
        raise BadRequest("--timeout goes with --wait")
    body: dict[str, Any] = {}
    if conf is not None:
        body["conf"] = parse_conf(conf)
    if ref:
        body["ref"] = ref
    if sha:
        body["sha"] = sha
    client = _client(api_url, token)
    run = client.post(f"/dags/{dag_id}/runs", json=body)
    if chosen(output) is not Format.json:
        with unless_reader_gone():
            print(f"{run['run_id']} pinned to {run['sha']}", flush=True)
    if wait:
        _follow(client, run["run_id"], output, timeout)
    elif chosen(output) is Format.json:
        print(json.dumps(run, indent=2, default=str))


def runs(
    dag_id: Annotated[str | None, typer.Argument(help="Only this DAG's runs")] = None,
    state: Annotated[
        str | None, typer.Option(help="queued, running, success, failed or canceled")
    ] = None,
    limit: int = 20,
    output: Output = None,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Runs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if dag_id:
        params["dag_id"] = dag_id
    if state:
        params["state"] = state
    show(_client(api_url, token).get("/runs", params=params)["items"], RUN_COLUMNS, output)


RUN_COLUMNS = [
    Column("run_id", lambda r: r["run_id"], no_wrap=True),
    Column("dag", lambda r: r["dag_id"], no_wrap=True, drop=2),  # the run_id names it too
    Column("sha", lambda r: r["sha"][:12], no_wrap=True, drop=3),
    Column("state", _run_state, no_wrap=True),
    Column("logical date", lambda r: short_time(r["logical_date"]), no_wrap=True),
    Column("created by", lambda r: r["created_by"], drop=4),
]


def run(run_id: str, output: Output = None, api_url: ApiUrl = None, token: Token = None) -> None:
    """One run: its pinned sha, state, and every task with its tries and result."""
    data = _client(api_url, token).get(f"/runs/{run_id}")
    if chosen(output) is Format.json:
        print(json.dumps(data, indent=2, default=str))
        return
    say(_run_header(data), output)
    show(data.get("tasks", []), TASK_COLUMNS, output)


def logs(
    run_id: str,
    task_id: Annotated[str, typer.Argument(help="TASK, or TASK[i] for a mapped instance")],
    try_number: Annotated[
        int | None, typer.Option("--try", min=1, help="Which try (default: latest)")
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Print lines as they come; exit when the try ends (0: success)"
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Then the try's whole error, pinflow's own frames included"
        ),
    ] = False,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """A task's log; with --follow, while it runs."""
    client = _client(api_url, token)
    task_id, map_index = split_label(task_id)
    path = f"/runs/{run_id}/tasks/{task_id}/logs"
    params: dict[str, Any] = {"try": try_number} if try_number else {}
    if map_index >= 0:
        params["map_index"] = map_index
    if not follow:
        response = client.response("GET", path, params=params)
        text = response.text
        print(on_screen(text), end="" if text.endswith("\n") or not text else "\n")
        if verbose:
            _say_whole_error(client, run_id, task_id, int(response.headers["X-Pinflow-Try"]))
        return
    _task_of(client.get(f"/runs/{run_id}"), run_id, task_id)  # a typo is told at once
    offset = 0
    while True:
        try:
            response = client.response("GET", path, params={**params, "offset": offset})
        except NotFound:
            # The try has not started yet: wait for it, unless it never will.
            if not _never_starts(client.get(f"/runs/{run_id}"), run_id, task_id):
                time.sleep(0.5)
                continue
            # Asked again after the run was read, so the reason given is the present one (a
            # cancel between the two reads made the first answer's "(none)" stale).
            client.response("GET", path, params={**params, "offset": offset})
            continue
        params["try"] = int(response.headers["X-Pinflow-Try"])  # stay on the try we follow
        sys.stdout.write(on_screen(response.text))
        sys.stdout.flush()
        offset = int(response.headers["X-Pinflow-Log-Bytes"])
        if response.headers["X-Pinflow-Try-Ended"] == "true":
            state = response.headers["X-Pinflow-Try-State"]
            print(
                f"pinflow: stopped following: try {params['try']} of {task_id} ended ({state})",
                file=sys.stderr,
            )
            raise typer.Exit(0 if state == "success" else 1)
        time.sleep(0.5)


def _say_whole_error(client: ApiClient, run_id: str, task_id: str, try_number: int) -> None:
    """The log shows a traceback from the task's own code down (`runner.tracebacks`); the
    try's error keeps every frame."""
    task = _task_of(client.get(f"/runs/{run_id}"), run_id, task_id)
    error = next((t["error"] for t in task["tries"] if t["try_number"] == try_number), None)
    if error:
        print(f"pinflow: try {try_number}'s whole error, pinflow's own frames included:")
        print(on_screen(error), end="" if error.endswith("\n") else "\n")


def _task_of(run: dict[str, Any], run_id: str, task_id: str) -> dict[str, Any]:
    for task in run["tasks"]:
        if task["task_id"] == task_id:
            return task
    raise NotFound(f"run {run_id!r} has no task {task_id!r}")


def _never_starts(run: dict[str, Any], run_id: str, task_id: str) -> bool:
    """Whether the task's awaited try will never start: the run has ended, or the task did
    without it (upstream_failed, canceled, skipped)."""
    task = _task_of(run, run_id, task_id)
    return run["state"] in TERMINAL_RUN_STATES or task["state"] in TERMINAL_TASK_STATES


def clear(
    run_id: str,
    task: Annotated[
        list[str] | None,
        typer.Option("--task", help="A task to clear (repeat; TASK[i]: one instance); default all"),
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
    if run["held"]:
        print("the run waits for a slot of its backfill (max_active_runs) and starts in turn")
    if wait:
        _follow(client, run_id, None, None)


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
