"""The UI's pages about runs: the runs list with its filters, one run (its tries as a table
and a Gantt chart, a try's log, clear and cancel). Each calls the HTTP API's own route
functions or `scheduler.views`' bounded queries.

Stable URLs: `/runs?dag_id=&state=&type=&since=&until=`, `/runs/{run_id}`,
`/runs/{run_id}?task=T&try=N` (a try's log).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import RedirectResponse, Response

from dagstore.api import repos as repos_api
from dagstore.api.auth import StoreDep
from dagstore.authoring.mapping import instance_label, split_label
from dagstore.core.db import db_time
from dagstore.core.errors import BadRequest, NotFound, PinflowError
from dagstore.parsing.dags import get_dag
from pinflow.ui.clock import seconds_of
from pinflow.ui.gantt import chart, is_slow
from pinflow.ui.pages import GRID_RUNS, dag_of
from pinflow.ui.render import error_page, page, url_part
from pinflow.ui.session import Viewer, ViewerDep
from scheduler import api as runs_api
from scheduler.runs import ACTIVE_RUN_STATES, RUN_STATES
from scheduler.taskstate import FAILED
from scheduler.views import list_runs, task_seconds

router = APIRouter(include_in_schema=False)
RUN_TYPES = ("scheduled", "manual", "backfill")
LIST_LIMIT = 200


# --- the runs list ----------------------------------------------------------------------------


@router.get("/runs")
def runs_page(
    request: Request,
    store: StoreDep,
    viewer: ViewerDep,
    dag_id: str = "",
    state: str = "",
    type: str = "",
    since: str = "",
    until: str = "",
    note: str = "",
):
    """Runs by logical date, latest first, filtered by DAG, state, type and logical date
    (`since` and `until` are UTC days, both included); a bad filter is named, with a 400."""
    filters = {"dag_id": dag_id, "state": state, "type": type, "since": since, "until": until}
    shown = {"filters": filters, "states": RUN_STATES, "types": RUN_TYPES, "note": note}
    try:
        if state and state not in RUN_STATES:
            raise BadRequest(f"state must be one of {', '.join(RUN_STATES)}, not {state!r}")
        if type and type not in RUN_TYPES:
            raise BadRequest(f"type must be one of {', '.join(RUN_TYPES)}, not {type!r}")
        low, high = _day("since", since), _day("until", until)
        with store.db.read() as session:
            if dag_id:
                get_dag(session, dag_id)  # "no DAG named x", not an empty list
            items = list_runs(
                session,
                dag_id=dag_id or None,
                state=state or None,
                run_type=type or None,
                since=low,
                until=high + timedelta(days=1) if high else None,
                limit=LIST_LIMIT,
            )
    except PinflowError as exc:
        return page(
            request, "runs.html", viewer, status=exc.status_code, runs=[], error=exc.detail, **shown
        )
    for run in items:
        run["seconds"] = seconds_of(run["started_at"], run["ended_at"])
    return page(request, "runs.html", viewer, runs=items, limit=LIST_LIMIT, error="", **shown)


def _day(name: str, value: str) -> datetime | None:
    if not value:
        return None
    try:
        day = datetime.strptime(value.strip(), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise BadRequest(f"{name} must be a date like 2026-11-01, not {value!r}") from None
    if day.year > 9000:  # a day later is still a date
        raise BadRequest(f"{name} must be a date before the year 9000, not {value!r}")
    return day


# --- one run ----------------------------------------------------------------------------------


def _run_context(
    store: StoreDep, viewer: Viewer, run_id: str, task: str, try_: int | None
) -> dict[str, Any]:
    run = runs_api.get_one_run(run_id, store, viewer.token)
    with store.db.read() as session:
        now = db_time(session)
        usual = task_seconds(session, run["dag_id"], GRID_RUNS)
    selected = next(
        (t for t in run["tasks"] if instance_label(t["task_id"], t["map_index"]) == task), None
    )
    if selected is None:
        selected = next((t for t in run["tasks"] if t["state"] in ("failed", "running")), None)
    for t in run["tasks"]:
        recent = usual.get(t["task_id"], [])
        for x in t["tries"]:
            x["seconds"] = seconds_of(x["started_at"], x["ended_at"])
            x["slow"] = x["state"] != "running" and is_slow(x["seconds"], recent)
    states = {t["state"] for t in run["tasks"]}
    return {
        "run": run,
        "selected": selected,
        "selected_try": try_ or (selected["try_number"] if selected else None),
        "active": run["state"] in ACTIVE_RUN_STATES,
        "run_seconds": seconds_of(run["started_at"], run["ended_at"]),
        "gantt": chart(run, now, usual),
        # What "Clear failed" would clear: the button only where there is some.
        "clear_failed": "failed"
        if states & {"failed", "upstream_failed"}
        else ("canceled" if states & FAILED else ""),
    }


@router.get("/runs/{run_id}")
def run_page(
    request: Request,
    run_id: str,
    store: StoreDep,
    viewer: ViewerDep,
    task: str = "",
    try_: Annotated[int | None, Query(alias="try", ge=1)] = None,
    error: str = "",
):
    try:
        context = _run_context(store, viewer, run_id, task, try_)
        with store.db.read() as session:
            dag = dag_of(session, context["run"]["dag_id"])
    except PinflowError as exc:
        return error_page(request, viewer, exc)
    changed = None
    current = dag.get("current_sha")
    if current and current != context["run"]["sha"]:
        spec = f"{context['run']['sha']}..{current}"
        changed = repos_api.get_diff(dag["repo"], spec, store, viewer.token)
    return page(request, "run.html", viewer, dag=dag, changed=changed, error=error, **context)


@router.get("/runs/{run_id}/fragment")
def run_fragment(
    request: Request,
    run_id: str,
    store: StoreDep,
    viewer: ViewerDep,
    task: str = "",
    try_: Annotated[int | None, Query(alias="try", ge=1)] = None,
):
    """The run's state, Gantt and tasks, polled while the run is active."""
    context = _run_context(store, viewer, run_id, task, try_)
    return page(request, "_run_tasks.html", viewer, **context)


@router.get("/runs/{run_id}/tasks/{task_id}/log")
def log_fragment(
    request: Request,
    run_id: str,
    task_id: str,
    store: StoreDep,
    viewer: ViewerDep,
    try_: Annotated[int, Query(alias="try", ge=1)] = 1,
):
    """A try's log, polled while the try runs."""
    try:
        name, map_index = split_label(task_id)  # `load[2]`: a mapped instance
        answer = runs_api.get_logs(run_id, name, store, viewer.token, try_, 0, map_index)
        text, ended = (
            bytes(answer.body).decode("utf-8", "replace"),
            answer.headers["X-Pinflow-Try-Ended"],
        )
        state = answer.headers["X-Pinflow-Try-State"]
    except NotFound as exc:
        text, ended, state = exc.detail, "false", "not started"
    return page(
        request,
        "_log.html",
        viewer,
        run_id=run_id,
        task_id=task_id,
        try_number=try_,
        text=text,
        ended=ended == "true",
        state=state,
    )


@router.post("/runs/{run_id}/clear")
def clear(
    request: Request,
    run_id: str,
    store: StoreDep,
    viewer: ViewerDep,
    csrf: Annotated[str, Form()],
    task: Annotated[str, Form()] = "",
    failed_only: Annotated[bool, Form()] = False,
    downstream: Annotated[bool, Form()] = False,
    on_latest: Annotated[bool, Form()] = False,
) -> Response:
    viewer.check(csrf)
    body = runs_api.ClearBody(
        task_ids=[task] if task else None,
        failed_only=failed_only,
        downstream=downstream,
        on_latest=on_latest,
    )
    try:
        runs_api.post_clear(run_id, body, store, request.app.state.enqueuer, viewer.token)
    except PinflowError as exc:
        return _back_to_run(run_id, exc.detail)
    return _back_to_run(run_id, "")


@router.post("/runs/{run_id}/cancel")
def cancel(
    run_id: str, store: StoreDep, viewer: ViewerDep, csrf: Annotated[str, Form()]
) -> Response:
    viewer.check(csrf)
    try:
        runs_api.post_cancel(run_id, store, viewer.token)
    except PinflowError as exc:
        return _back_to_run(run_id, exc.detail)
    return _back_to_run(run_id, "")


def _back_to_run(run_id: str, error: str) -> Response:
    suffix = f"?error={url_part(error)}" if error else ""
    return RedirectResponse(f"/runs/{url_part(run_id)}{suffix}", status_code=303)
