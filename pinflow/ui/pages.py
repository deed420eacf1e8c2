"""The UI's pages about DAGs and runs, and logging in. Each calls the HTTP API's own route
functions (same services, same answers, same errors); the session's token is checked for the
scope each action needs.

Stable URLs, pasteable into a ticket: `/`, `/dags/{dag_id}`, `/runs/{run_id}`,
`/runs/{run_id}?task=T&try=N` (a try's log); versions, diffs and files are in `ui.repos`.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from dagstore.api import dags as dags_api
from dagstore.api.auth import StoreDep
from dagstore.core.errors import BadRequest, PinflowError
from dagstore.core.models import Repo
from dagstore.parsing.dags import current_versions, dag_json, get_dag
from pinflow.ui.durations import task_durations
from pinflow.ui.graph import drawing
from pinflow.ui.grid import duration_rows, grid_rows, grid_view
from pinflow.ui.render import error_page, page, url_part
from pinflow.ui.session import COOKIE, ViewerDep
from pinflow.ui.states import legend
from scheduler import api as runs_api
from scheduler.views import recent_runs, run_grid

router = APIRouter(include_in_schema=False)
GRID_RUNS = 25


# --- logging in -------------------------------------------------------------------------------


@router.get("/login")
def login_form(request: Request, next: str = "/", error: str = "") -> HTMLResponse:
    return page(request, "login.html", None, next=_local(next), error=error)


@router.post("/login")
def login(
    request: Request,
    store: StoreDep,
    token: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    try:
        store.tokens.authenticate(store.db, token.strip(), "read")
    except PinflowError as exc:
        return page(request, "login.html", None, status=401, next=_local(next), error=exc.detail)
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(
        COOKIE,
        token.strip(),
        httponly=True,
        samesite="strict",
        secure=_https(request, store.settings.public_url),
        path="/",
    )
    return response


@router.post("/logout")
def logout(viewer: ViewerDep, csrf: Annotated[str, Form()]) -> Response:
    viewer.check(csrf, "read")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _https(request: Request, public_url: str | None) -> bool:
    """Whether browsers reach this server over TLS: it says so itself (PINFLOW_PUBLIC_URL),
    or the request came over https, directly or through a proxy the server believes
    (PINFLOW_FORWARDED_ALLOW_IPS; uvicorn then takes its X-Forwarded-Proto)."""
    return request.url.scheme == "https" or (public_url or "").startswith("https://")


def _local(target: str) -> str:
    """Only paths of this site after login: never an open redirect."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


# --- DAGs -------------------------------------------------------------------------------------


@router.get("/")
def dags_page(
    request: Request, store: StoreDep, viewer: ViewerDep, q: str = "", state: str = ""
) -> HTMLResponse:
    items = dags_api.get_dags(store, viewer.token)["items"]
    if q:
        needle = q.lower()
        items = [
            d for d in items if needle in f"{d['dag_id']} {d['repo']} {' '.join(d['tags'])}".lower()
        ]
    with store.db.read() as session:
        versions = current_versions(session)
        runs = recent_runs(session, [d["dag_id"] for d in items], per_dag=5)
    rows = [
        {"dag": dag, "version": versions.get(dag["dag_id"]), "runs": runs[dag["dag_id"]]}
        for dag in items
        if not state or (runs[dag["dag_id"]] and runs[dag["dag_id"]][0]["state"] == state)
    ]
    errors = dags_api.get_import_errors(store, viewer.token)["items"]
    return page(request, "dags.html", viewer, rows=rows, errors=errors, q=q, state=state)


@router.post("/dags/{dag_id}/paused")
def set_paused(
    dag_id: str,
    store: StoreDep,
    viewer: ViewerDep,
    csrf: Annotated[str, Form()],
    paused: Annotated[str, Form()],
) -> Response:
    viewer.check(csrf)
    (runs_api.pause if paused == "true" else runs_api.unpause)(dag_id, store, viewer.token)
    return RedirectResponse("/", status_code=303)


def dag_of(session: Session, dag_id: str) -> dict[str, Any]:
    """The DAG as the API shows it, without its structure history (no page shows that)."""
    row = get_dag(session, dag_id)
    repo = session.get(Repo, row.repo_id)
    return dag_json(row, repo.name if repo else "")


@router.get("/dags/{dag_id}")
def dag_page(
    request: Request,
    dag_id: str,
    store: StoreDep,
    viewer: ViewerDep,
    error: str = "",
    run: str = "",
):
    """The DAG: its runs as a grid by logical date, its graph coloured by one run (`run`, the
    latest by default), each task's durations, and the forms to trigger and backfill."""
    with store.db.read() as session:
        try:
            dag = dag_of(session, dag_id)
        except PinflowError as exc:
            return error_page(request, viewer, exc)
        columns = run_grid(session, dag_id, GRID_RUNS)
    # The DAG's tasks, then any that only older runs have (removed since), once each.
    task_ids = list(dict.fromkeys(t["task_id"] for t in dag["tasks"]))
    known = set(task_ids)
    task_ids += [t for t in dict.fromkeys(i[0] for c in columns for i in c["instances"])
                 if t not in known]  # fmt: skip
    grid = grid_view(columns, task_ids)
    chosen = next((c for c in grid if c["run"]["run_id"] == run), None)
    if run and chosen is None:
        error = error or f"run {run!r} is not one of this DAG's latest {GRID_RUNS} runs"
    chosen = chosen or (grid[-1] if grid else None)  # the latest logical date
    instances = chosen["states"] if chosen else {}
    return page(
        request,
        "dag.html",
        viewer,
        dag=dag,
        grid=grid,
        task_ids=task_ids,
        grid_body=grid_rows(grid, task_ids),
        durations_body=duration_rows(task_durations(task_ids, columns)),
        chosen=chosen,
        graph=drawing(dag["tasks"], instances),
        legend=legend(s for c in grid for st in c["states"].values() for s in st),
        error=error,
    )


@router.post("/dags/{dag_id}/trigger")
def trigger(
    request: Request,
    dag_id: str,
    store: StoreDep,
    viewer: ViewerDep,
    csrf: Annotated[str, Form()],
    ref: Annotated[str, Form()] = "",
    sha: Annotated[str, Form()] = "",
    conf: Annotated[str, Form()] = "",
) -> Response:
    viewer.check(csrf)
    try:
        parsed = json.loads(conf) if conf.strip() else {}
        if not isinstance(parsed, dict):
            raise BadRequest("conf must be a JSON object")
        body = runs_api.TriggerRequest(
            ref=ref.strip() or None, sha=sha.strip() or None, conf=parsed
        )
        run = runs_api.post_run(dag_id, body, store, request.app.state.enqueuer, viewer.token)
    except json.JSONDecodeError as exc:
        return _back_to_dag(dag_id, f"conf is not valid JSON: {exc}")
    except PinflowError as exc:
        return _back_to_dag(dag_id, exc.detail)
    return RedirectResponse(f"/runs/{url_part(run['run_id'])}", status_code=303)


def _back_to_dag(dag_id: str, error: str) -> Response:
    return RedirectResponse(f"/dags/{url_part(dag_id)}?error={url_part(error)}", status_code=303)


@router.post("/dags/{dag_id}/backfill")
def backfill(
    request: Request,
    dag_id: str,
    store: StoreDep,
    viewer: ViewerDep,
    csrf: Annotated[str, Form()],
    start: Annotated[str, Form()] = "",
    end: Annotated[str, Form()] = "",
    ref: Annotated[str, Form()] = "",
    sha: Annotated[str, Form()] = "",
    max_active_runs: Annotated[str, Form()] = "",
) -> Response:
    """A backfill from the DAG page: dates are UTC days (or instants), both ends included;
    then the runs page shows the backfill's runs."""
    viewer.check(csrf)
    try:
        body = runs_api.BackfillBody(
            start=_form_instant("start", start),
            end=_form_instant("end", end, end_of_day=True),
            ref=ref.strip() or None,
            sha=sha.strip() or None,
            max_active_runs=_form_int("max active runs", max_active_runs),
        )
        made = runs_api.post_backfill(dag_id, body, store, request.app.state.enqueuer, viewer.token)
    except ValidationError as exc:
        return _back_to_dag(dag_id, "; ".join(e["msg"] for e in exc.errors()))
    except PinflowError as exc:
        return _back_to_dag(dag_id, exc.detail)
    note = f"backfill {made['id']}: {len(made['created'])} run(s) created"
    if made["skipped"]:
        note += f", {len(made['skipped'])} tick(s) skipped (they have a run already)"
    query = f"dag_id={url_part(dag_id)}&type=backfill&note={url_part(note)}"
    return RedirectResponse(f"/runs?{query}", status_code=303)


def _form_instant(name: str, value: str, end_of_day: bool = False) -> datetime:
    """`2026-11-01` (a UTC day: its start, or with `end_of_day` its last second) or an ISO
    instant; anything else is a clear 400."""
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day, time.max if end_of_day else time.min)
            return moment.replace(microsecond=0, tzinfo=UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name} must be a date like 2026-11-01, not {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _form_int(name: str, value: str) -> int | None:
    if not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {value!r}") from None
