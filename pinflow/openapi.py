"""The API's OpenAPI document as the API behaves: its error answers, not FastAPI's 422.

FastAPI documents a 422 for every operation with parameters, while pinflow answers malformed
input with a 400 (DESIGN.md), and documents none of the 401/403/404/409/503 that operations do
answer. Each operation here gets the errors it can give, derived from what its entry says it takes:
parameters → 400; a bearer token → 401 and 403; path parameters (a repo, a DAG, a run) → 404;
a body → 413 too; the database → 503. 409s are declared by the routes that can conflict. Every
error has DESIGN.md's shape, `{"detail": "..."}`. An operation without a summary gets the
first sentence of its docstring.

Operation ids are the names a generated client's methods get: FastAPI's default
(`get_dags_api_v1_dags_get`) becomes `list_dags`; a route not in OPERATION_IDS keeps its
function's name.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel


class ErrorBody(BaseModel):
    """Every error pinflow answers on purpose."""

    detail: str


MEANING = {
    400: "Malformed input: a value of the wrong type or shape, out of range, or not valid JSON",
    401: "No token, or an unknown or revoked one",
    403: "The token's scope does not allow this",
    404: "What the path names does not exist",
    409: "The state does not allow it now (see the operation's description)",
    413: "The request body is too large",
    503: "The database is unavailable: retry shortly",
}
_REF = {"$ref": "#/components/schemas/ErrorBody"}

# route function name → operation id
OPERATION_IDS = {
    "healthz": "get_health",
    "get_repos": "list_repos",
    "post_repo": "create_repo",
    "get_refs": "list_refs",
    "get_versions": "list_versions",
    "get_resolve": "resolve_ref",
    "get_archive": "download_archive",
    "get_archive_auth": "authorize_archive",
    "get_diff": "get_diff",
    "get_tree": "get_tree",
    "get_file": "get_file",
    "get_dags": "list_dags",
    "get_one_dag": "get_dag",
    "get_import_errors": "list_import_errors",
    "post_run": "trigger_run",
    "get_runs": "list_runs",
    "get_one_run": "get_run",
    "post_backfill": "create_backfill",
    "get_backfill": "get_backfill",
    "post_clear": "clear_tasks",
    "post_cancel": "cancel_run",
    "get_logs": "get_task_log",
    "pause": "pause_dag",
    "unpause": "unpause_dag",
    "post_claim": "claim_try",
    "post_heartbeat": "heartbeat_try",
    "post_finish": "finish_try",
}


def operation_id(default: str, path: str, method: str) -> str:
    """The id of FastAPI's `default` ({function}{path}_{method}, non-word characters as _)."""
    suffix = re.sub(r"\W", "_", path) + "_" + method.lower()
    name = default.removesuffix(suffix) if default.endswith(suffix) else default
    return OPERATION_IDS.get(name, name)


def errors_of(operation: dict[str, Any]) -> set[int]:
    """The errors an operation can answer, from what it takes (as its OpenAPI entry says:
    parameters, a body, a bearer token) and what its route declared (409)."""
    params = operation.get("parameters", [])
    codes = {503}
    if params or "requestBody" in operation:
        codes.add(400)
    if any(p.get("in") == "path" for p in params):
        codes.add(404)
    if "requestBody" in operation:
        codes.add(413)
    if operation.get("security"):
        codes |= {401, 403}
    return codes | {int(c) for c in operation["responses"] if c.isdigit() and int(c) in MEANING}


def summary_of(operation: dict[str, Any]) -> str | None:
    """The first sentence of the operation's description (its route's docstring)."""
    doc = operation.get("description", "").strip()
    if not doc:
        return None
    first = " ".join(doc.split("\n\n")[0].split()).split(". ")[0]
    for cut in ("; ", ": "):  # the rest of the sentence belongs in the description
        first = first.split(cut)[0]
    return first.rstrip(".")


def build(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema()
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            operation["operationId"] = operation_id(operation["operationId"], path, method)
            responses = operation["responses"]
            responses.pop("422", None)
            for code in sorted(errors_of(operation)):
                entry = responses.setdefault(str(code), {})
                entry.setdefault("description", MEANING[code])
                # A route that documents its own error body (/healthz's 503) keeps it.
                entry.setdefault("content", {"application/json": {"schema": _REF}})
            operation["summary"] = summary_of(operation) or operation.get("summary", "")
    app.openapi_schema = schema
    return schema


def install(app: FastAPI) -> None:
    """Serve `build(app)` at /openapi.json (and to /docs)."""
    app.openapi = lambda: build(app)  # type: ignore[method-assign]
