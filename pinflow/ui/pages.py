"""The UI's pages about DAGs and runs, and logging in. Each calls the HTTP API's own route
functions (same services, same answers, same errors); the session's token is checked for the
scope each action needs.

Stable URLs, pasteable into a ticket: `/`, `/dags/{dag_id}`, `/runs/{run_id}`,
`/runs/{run_id}?task=T&try=N` (a try's log); versions, diffs and files are in `ui.repos`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from dagstore.api import dags as dags_api
from dagstore.api import repos as repos_api
from dagstore.api.auth import StoreDep
from dagstore.authoring.mapping import instance_label, split_label
from dagstore.core.errors import BadRequest, NotFound, PinflowError
from dagstore.core.models import Repo
from dagstore.parsing.dags import current_versions, dag_json, get_dag
from pinflow.ui.render import error_page, page, url_part
from pinflow.ui.session import COOKIE, Viewer, ViewerDep
from scheduler import api as runs_api
from scheduler.views import recent_runs, run_grid

router = APIRouter(include_in_schema=False)
GRID_RUNS = 25
ACTIVE = ("queued", "running")


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


def _dag(session: Session, dag_id: str) -> dict[str, Any]:
    """The DAG as the API shows it, without its structure history (no page shows that)."""
    row = get_dag(session, dag_id)
    repo = session.get(Repo, row.repo_id)
    return dag_json(row, repo.name if repo else "")


@router.get("/dags/{dag_id}")
def dag_page(request: Request, dag_id: str, store: StoreDep, viewer: ViewerDep, error: str = ""):
    with store.db.read() as session:
        try:
            dag = _dag(session, dag_id)
        except PinflowError as exc:
            return error_page(request, viewer, exc)
        columns = run_grid(session, dag_id, GRID_RUNS)
    task_ids = [t["task_id"] for t in dag["tasks"]]
    for col in columns:
        task_ids += [t for t in col["states"] if t not in task_ids]
    grid = [
        {**col, "changed": i > 0 and col["run"]["sha"] != columns[i - 1]["run"]["sha"]}
        for i, col in enumerate(columns)
    ]
    return page(
        request,
        "dag.html",
        viewer,
        dag=dag,
        grid=grid,
        task_ids=task_ids,
        levels=_levels(dag["tasks"]),
        error=error,
    )


def _levels(tasks: list[dict]) -> list[list[dict]]:
    """The task graph drawn as levels: a task sits one level below its deepest upstream."""
    depth: dict[str, int] = {}
    by_id = {t["task_id"]: t for t in tasks}

    def level(task_id: str, seen: frozenset[str] = frozenset()) -> int:
        if task_id not in depth:
            ups = [u for u in by_id[task_id].get("upstream", []) if u in by_id and u not in seen]
            depth[task_id] = 1 + max((level(u, seen | {task_id}) for u in ups), default=-1)
        return depth[task_id]

    levels: list[list[dict]] = []
    for task in tasks:
        n = level(task["task_id"])
        while len(levels) <= n:
            levels.append([])
        levels[n].append(task)
    return levels


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


# --- runs -------------------------------------------------------------------------------------


def _run_context(store: StoreDep, viewer: Viewer, run_id: str, task: str, try_: int | None):
    run = runs_api.get_one_run(run_id, store, viewer.token)
    selected = next(
        (t for t in run["tasks"] if instance_label(t["task_id"], t["map_index"]) == task), None
    )
    if selected is None:
        selected = next((t for t in run["tasks"] if t["state"] in ("failed", "running")), None)
    wanted = try_ or (selected["try_number"] if selected else None)
    return {
        "run": run,
        "selected": selected,
        "selected_try": wanted,
        "active": run["state"] in ACTIVE,
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
            dag = _dag(session, context["run"]["dag_id"])
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
    """The run's state and tasks, polled while the run is active."""
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
