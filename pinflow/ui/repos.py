"""The UI's pages about a repository's versions: the list, diffs between two, and files.
Each calls the HTTP API's own route functions.

Stable URLs: `/repos/{repo}/versions`, `/repos/{repo}/diff?base=A&head=B[&view=split]`,
`/repos/{repo}/files/{sha}`, `/repos/{repo}/files/{sha}/{path}`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, guess_lexer_for_filename
from pygments.util import ClassNotFound

from dagstore.api import repos as repos_api
from dagstore.api.auth import StoreDep
from dagstore.core.errors import PinflowError
from pinflow.ui.render import error_page, page
from pinflow.ui.session import ViewerDep

router = APIRouter(include_in_schema=False)


@router.get("/repos/{repo}/versions")
def versions_page(request: Request, repo: str, store: StoreDep, viewer: ViewerDep):
    try:
        items = repos_api.get_versions(repo, store, viewer.token, limit=200)["items"]
    except PinflowError as exc:
        return error_page(request, viewer, exc)
    return page(request, "versions.html", viewer, repo=repo, versions=items)


@router.get("/repos/{repo}/diff")
def diff_page(
    request: Request,
    repo: str,
    store: StoreDep,
    viewer: ViewerDep,
    base: str,
    head: str,
    view: str = "unified",
):
    try:
        body = repos_api.get_diff(repo, f"{base}..{head}", store, viewer.token)
    except PinflowError as exc:
        return error_page(request, viewer, exc)
    files = [{**f, "rows": _side_by_side(f["patch"])} for f in body["files"]]
    return page(
        request, "diff.html", viewer, repo=repo, diff=body, files=files, view=view == "split"
    )


def _side_by_side(patch: str) -> list[tuple[str, str, str]]:
    """(kind, left, right) rows of a unified patch, for the side-by-side view."""
    rows: list[tuple[str, str, str]] = []
    removed: list[str] = []
    added: list[str] = []

    def flush() -> None:
        for i in range(max(len(removed), len(added))):
            left = removed[i] if i < len(removed) else ""
            right = added[i] if i < len(added) else ""
            rows.append(("change", left, right))
        removed.clear()
        added.clear()

    for line in patch.splitlines()[2:]:
        if line.startswith(("---", "+++", "index ")):
            continue
        if line.startswith("@@"):
            flush()
            rows.append(("hunk", line, line))
        elif line.startswith("-"):
            removed.append(line[1:])
        elif line.startswith("+"):
            added.append(line[1:])
        else:
            flush()
            rows.append(("same", line[1:], line[1:]))
    flush()
    return rows


@router.get("/repos/{repo}/files/{sha}")
def tree_page(request: Request, repo: str, sha: str, store: StoreDep, viewer: ViewerDep):
    try:
        tree = repos_api.get_tree(repo, sha, store, viewer.token)
    except PinflowError as exc:
        return error_page(request, viewer, exc)
    return page(request, "tree.html", viewer, repo=repo, sha=sha, files=tree["files"])


@router.get("/repos/{repo}/files/{sha}/{path:path}")
def file_page(request: Request, repo: str, sha: str, path: str, store: StoreDep, viewer: ViewerDep):
    try:
        data = bytes(repos_api.get_file(repo, sha, path, store, viewer.token).body)
    except PinflowError as exc:
        return error_page(request, viewer, exc)
    text = data.decode("utf-8", "replace")
    try:
        lexer = guess_lexer_for_filename(path, text)
    except ClassNotFound:
        lexer = TextLexer()
    formatter = HtmlFormatter(linenos="table", cssclass="code")
    return page(
        request,
        "file.html",
        viewer,
        repo=repo,
        sha=sha,
        path=path,
        code=highlight(text, lexer, formatter),
        style=formatter.get_style_defs(".code"),
    )
