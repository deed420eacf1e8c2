"""The API server: the store's and the scheduler's routes, the git remote, one error handler."""

from __future__ import annotations

import gc

from a2wsgi import WSGIMiddleware
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy.exc import DataError, DBAPIError

import pinflow
from dagstore.api import healthz
from dagstore.api import router as store_router
from dagstore.api.archive_http import ArchiveFastPath
from dagstore.api.git_http import make_git_app
from dagstore.core.db import database_unavailable
from dagstore.core.errors import PinflowError
from dagstore.core.settings import Settings
from dagstore.store import StoreContext
from pinflow.headers import SecurityHeaders
from pinflow.metrics import router as metrics_router
from pinflow.metrics import watch as watch_system
from pinflow.openapi import install as install_openapi
from pinflow.ui.pages import router as ui_router
from pinflow.ui.render import STATIC as ui_static
from pinflow.ui.repos import router as ui_repos_router
from pinflow.ui.runs import router as ui_runs_router
from pinflow.ui.session import LoginRequired, on_login_required
from scheduler.api import router as runs_router
from scheduler.callback_api import router as callbacks_router
from scheduler.enqueue import Enqueuer
from scheduler.grants import granted_version
from scheduler.pools import router as pools_router


def create_app(settings: Settings | None = None) -> FastAPI:
    store = StoreContext.from_settings(settings or Settings.load())
    store.grant_version = granted_version
    _ = store.sandbox_probe.sandbox  # at start: says so now if pushed code cannot be parsed
    # /docs from Swagger UI files shipped in the package (the UI's /static), not a CDN: it
    # shows on a machine with no internet, and no third-party script runs on the API's origin.
    # ReDoc is left out rather than loaded from a CDN.
    app = FastAPI(title="pinflow", version=pinflow.__version__, docs_url=None, redoc_url=None)
    add_docs(app)
    app.state.store = store
    # With Redis, a finished task's downstream tasks are enqueued by the server at once;
    # without it, the scheduler's loop enqueues them at its next tick.
    app.state.enqueuer = Enqueuer(store.settings.redis_url) if store.settings.redis_url else None
    watch_system(store, app.state.enqueuer)

    @app.exception_handler(PinflowError)
    async def _pinflow_error(_: Request, exc: PinflowError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(DataError)
    async def _out_of_range(_: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried (a number too large, say).
        return JSONResponse({"detail": "a value in the request is out of range"}, status_code=400)

    @app.exception_handler(DBAPIError)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # The database restarted, is unreachable, fails over or answers read-only (a demoted
        # primary): the client should retry, not give up. Anything else is a bug: a 500.
        if not database_unavailable(exc):
            raise exc
        return JSONResponse(
            {"detail": "database unavailable, retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(RequestValidationError)
    async def _malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        # DESIGN.md: malformed input is a 400, whatever part of the request was wrong.
        return JSONResponse({"detail": _validation_detail(exc)}, status_code=400)

    app.include_router(store_router, prefix="/api/v1")
    app.include_router(runs_router, prefix="/api/v1")
    app.include_router(pools_router, prefix="/api/v1")
    app.include_router(callbacks_router, prefix="/api/v1")
    app.add_api_route("/healthz", healthz, include_in_schema=False)
    app.include_router(metrics_router)
    git = make_git_app(store)
    app.mount("/git", WSGIMiddleware(git, workers=8))  # type: ignore[arg-type]
    app.include_router(ui_router)  # the web UI at /, after the API so /api and /git win
    app.include_router(ui_repos_router)
    app.include_router(ui_runs_router)
    app.mount("/static", ui_static, name="static")
    app.add_exception_handler(LoginRequired, on_login_required)  # type: ignore[arg-type]
    install_openapi(app)  # the errors operations answer (pinflow.openapi), after every route
    # Ahead of routing: the cached archive GET, answered from memory (dagstore.api.archive_http).
    app.add_middleware(ArchiveFastPath, store=store)  # type: ignore[arg-type]
    app.add_middleware(SecurityHeaders)  # outermost: on every answer (pinflow.headers)
    return app


DOCS_ASSETS = "/static/swagger"  # pinflow/ui/static/swagger: Swagger UI, vendored (VERSION)


def add_docs(app: FastAPI) -> None:
    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="pinflow API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )


def server_app(settings: Settings | None = None) -> FastAPI:
    """The app of one `pinflow server` process (also uvicorn's factory for `--workers`)."""
    app = create_app(settings)
    # Everything loaded so far (FastAPI, SQLAlchemy, the routes) lives as long as the server:
    # out of the collector's sight, a full collection no longer walks it mid-request
    # (~100 ms stalls on a 2-core machine, seen as dispatch outliers in bench/dispatch.py).
    gc.collect()
    gc.freeze()
    return app


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":  # FastAPI says "1: JSON decode error"
            position = error.get("loc", ("body", "?"))[-1]
            reason = (error.get("ctx") or {}).get("error", "")
            parts.append(f"request body is not valid JSON (at character {position}: {reason})")
            continue
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", ""))
    return "; ".join(parts) or "malformed request"
