"""The UI's pages about a repository's versions: the list, diffs between two, and files.
Each calls the HTTP API's own route functions.

Stable URLs: `/repos/{repo}/versions`, `/repos/{repo}/diff?base=A&head=B[&view=split]`,
`/repos/{repo}/files/{ref}`, `/repos/{repo}/files/{ref}/{path}`; every A, B and ref a branch,
a tag, a full or a short sha, as the CLI takes them.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, guess_lexer_for_filename
from pygments.util import ClassNotFound

from dagstore.api import repos as repos_api
from dagstore.api.auth import StoreDep
from dagstore.core.errors import BadRequest, PinflowError
from pinflow.ui.patch import side_by_side
from pinflow.ui.render import error_page, page
from pinflow.ui.session import Viewer, ViewerDep

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
    base: str = "",
    head: str = "",
    view: str = "unified",
):
    """BASE..HEAD: branches, tags, full or short shas, as the CLI takes them."""
    try:
        if not base.strip() or not head.strip():
            raise BadRequest("give two commits to compare: ?base=REF&head=REF (branch, tag or sha)")
        body = repos_api.get_diff(repo, f"{base.strip()}..{head.strip()}", store, viewer.token)
    except PinflowError as exc:
        return error_page(request, viewer, exc)
    files = [{**f, "rows": side_by_side(f["patch"])} for f in body["files"]]
    return page(
        request,
        "diff.html",
        viewer,
        repo=repo,
        diff=body,
        files=files,
        view=view == "split",
        asked={"base": base, "head": head},
    )


def _resolve(repo: str, ref: str, store: StoreDep, viewer: Viewer) -> str:
    """A branch, tag, full or short sha → the full sha (a clear 404 or 400 otherwise)."""
    return repos_api.get_resolve(repo, ref, store, viewer.token)["sha"]


@router.get("/repos/{repo}/files/{ref}")
def tree_page(request: Request, repo: str, ref: str, store: StoreDep, viewer: ViewerDep):
    try:
        sha = _resolve(repo, ref, store, viewer)
        tree = repos_api.get_tree(repo, sha, store, viewer.token)
    except PinflowError as exc:
        return error_page(request, viewer, exc)
    return page(request, "tree.html", viewer, repo=repo, ref=ref, sha=sha, files=tree["files"])


@router.get("/repos/{repo}/files/{ref}/{path:path}")
def file_page(request: Request, repo: str, ref: str, path: str, store: StoreDep, viewer: ViewerDep):
    try:
        sha = _resolve(repo, ref, store, viewer)
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
        ref=ref,
        sha=sha,
        path=path,
        code=highlight(text, lexer, formatter),
        style=formatter.get_style_defs(".code"),
    )
