"""How the UI's pages are rendered: the templates, their filters, the static files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from dagstore.authoring.mapping import instance_label
from dagstore.core.errors import PinflowError
from pinflow.ui.session import Viewer

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
STATIC = StaticFiles(directory=HERE / "static")


def _ago(value: str | None) -> str:
    if not value:
        return ""
    then = datetime.fromisoformat(value.replace("Z", "+00:00"))
    seconds = int((datetime.now(UTC) - then).total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if abs(seconds) >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _duration(start: str | None, end: str | None) -> str:
    if not start or not end:
        return ""
    a = datetime.fromisoformat(start.replace("Z", "+00:00"))
    b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    return f"{(b - a).total_seconds():.1f} s"


templates.env.filters["ago"] = _ago
templates.env.filters["short"] = lambda sha: (sha or "")[:12]
templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
templates.env.globals["duration"] = _duration
# a task instance as people name it: `load`, `load[2]` for a mapped one
templates.env.filters["label"] = lambda t: instance_label(t["task_id"], t.get("map_index"))


def url_part(value: object) -> str:
    """One path segment or query value of a URL, every reserved character escaped, "/"
    included: a DAG or run id stays one segment (`zz/../payroll` must never become a path
    that the browser resolves to another DAG's)."""
    return quote(str(value), safe="")


def url_path(path: str) -> str:
    """A repository file's path in a URL: each of its segments escaped, the "/"s kept."""
    return "/".join(url_part(part) for part in path.split("/"))


templates.env.globals["quote"] = url_part
templates.env.globals["quote_path"] = url_path


def page(request: Request, name: str, viewer: Viewer | None, status: int = 200, **context: Any):
    return templates.TemplateResponse(
        request, name, {"viewer": viewer, **context}, status_code=status
    )


def error_page(request: Request, viewer: Viewer | None, exc: PinflowError) -> HTMLResponse:
    return page(request, "error.html", viewer, status=exc.status_code, detail=exc.detail)


def can(viewer: Viewer | None, scope: str) -> bool:
    return viewer is not None and viewer.may(scope)


templates.env.globals["can"] = can
