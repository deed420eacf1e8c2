"""How the UI's pages are rendered: the templates, their filters, the static files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from dagstore.authoring.mapping import instance_label
from dagstore.core.errors import PinflowError
from pinflow.ui.clock import ago, duration_text, seconds_of, time_tag
from pinflow.ui.patch import unified
from pinflow.ui.session import Viewer

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
# Templates change with a release, not while the server runs: no stat of every template file
# (and of each one it includes) at every render.
templates.env.auto_reload = False
STATIC = StaticFiles(directory=HERE / "static")


templates.env.filters["ago"] = ago
templates.env.filters["short"] = lambda sha: (sha or "")[:12]
templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
templates.env.filters["took"] = duration_text
templates.env.globals["when"] = time_tag
templates.env.globals["patch_rows"] = unified
templates.env.globals["duration"] = lambda start, end: duration_text(seconds_of(start, end))
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
