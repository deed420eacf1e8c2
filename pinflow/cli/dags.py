"""CLI commands about DAGs: what is current, what is broken."""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from dagstore.core.errors import BadRequest
from dagstore.core.settings import Settings
from dagstore.core.terminal import printable
from pinflow.cli.client import ApiClient
from pinflow.cli.conf import parse_conf
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


dags_app = typer.Typer(help="DAGs: what is current, what is broken; test one locally.")


@dags_app.callback(invoke_without_command=True)
def dags(
    ctx: typer.Context,
    errors: Annotated[bool, typer.Option("--errors", help="Show broken DAG files instead")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="With --errors: each file's whole traceback")
    ] = False,
    output: Output = None,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """DAGs with their current version; with --errors, the import errors at each repo's tip."""
    if ctx.invoked_subcommand is not None:
        return
    client = ApiClient(client_settings(api_url, token))
    if errors:
        items = client.get("/import-errors")["items"]
        if chosen(output) is not Format.json:
            _say_empty_dags(client.get("/dags")["items"])
        if verbose and chosen(output) is not Format.json:
            for e in items:
                print(printable(f"{e['repo']} {e['sha'][:12]} {e['file']}: {e['error']}"))
                print(printable(e.get("traceback") or "", lines=True), end="\n\n")
            if not items:
                print("no import errors")
            return
        show(items, ERROR_COLUMNS, output, empty="no import errors")
        return
    show(client.get("/dags")["items"], DAG_COLUMNS, output)


def _say_empty_dags(dags: list[dict[str, Any]]) -> None:
    """DAGs accepted with no tasks (not errors: they parse, but never do anything), on stderr
    so the listing below stays what it was for scripts."""
    for dag in dags:
        if not dag["tasks"]:
            sha = (dag.get("current_sha") or "")[:12]
            print(
                printable(f"warning: DAG {dag['dag_id']!r} ({dag['repo']} {sha}) has no tasks"),
                file=sys.stderr,
            )


@dags_app.command("test")
def test(
    dag_id: str,
    path: Annotated[
        Path, typer.Option(help="The local checkout whose DAG files to run (default: here)")
    ] = Path("."),
    sha: Annotated[
        str | None, typer.Option(help="Run this version from the store instead (needs a token)")
    ] = None,
    conf: Annotated[str | None, typer.Option(help="JSON object passed to tasks")] = None,
    output: Output = None,
    api_url: ApiUrl = None,
    token: Token = None,
) -> None:
    """Run every task of DAG_ID once, in order, in this process: no scheduler, Redis, worker
    or database. Prints each task's log and result; exits 0 when all succeeded, 1 otherwise."""
    from runner.localtest import now_utc, run_dag

    body = parse_conf(conf)
    with tempfile.TemporaryDirectory(prefix="pinflow-dags-test-") as tmp:
        if sha is not None:
            repo, full, root = _fetch(client_settings(api_url, token), dag_id, sha, Path(tmp))
        else:
            repo, full, root = "local", "local", path.resolve()
            if not root.is_dir():
                raise BadRequest(f"{path} is not a folder")
        reports = []
        for report in run_dag(root, full, repo, dag_id, body, now_utc()):
            reports.append(report)
            if chosen(output) is not Format.json:
                _print_report(report)
    if chosen(output) is Format.json:
        print(json.dumps([asdict(r) for r in reports], indent=2, default=str))
    # as a run's state: a skipped task is no failure, a failed one always is
    failed = [r.label for r in reports if r.state not in ("success", "skipped")]
    if chosen(output) is not Format.json:
        skipped = sum(r.state == "skipped" for r in reports)
        summary = f"{len(reports) - len(failed) - skipped} of {len(reports)} tasks succeeded"
        summary += f", {skipped} skipped" if skipped else ""
        print(summary + (f"; not: {', '.join(failed)}" if failed else ""))
    raise typer.Exit(1 if failed else 0)


def _fetch(settings: Settings, dag_id: str, sha: str, into: Path) -> tuple[str, str, Path]:
    """(repo, full sha, folder) of the DAG's version `sha`, fetched and verified as a worker
    fetches it."""
    from runner.cache import VersionCache
    from runner.client import WorkerClient

    client = ApiClient(settings)
    repo = client.get(f"/dags/{dag_id}")["repo"]
    full = client.get(f"/repos/{repo}/resolve/{sha}")["sha"]
    cache = VersionCache(into, WorkerClient(settings.api_url, settings.token, max_wait=30))
    cache.ensure(repo, full)
    return repo, full, cache.path(repo, full)


def _print_report(report: Any) -> None:
    took = f" in {report.seconds:.3f} s" if report.seconds else ""
    print(f"--- {report.label}: {report.state}{took}")
    for line in report.log.splitlines():
        print(f"    {line}")
    if report.error:
        for line in report.error.rstrip().splitlines():
            print(f"    {line}")
    if report.state == "success":
        print(f"    result: {json.dumps(report.result, default=str)}")


def register(app: typer.Typer) -> None:
    app.add_typer(dags_app, name="dags")
