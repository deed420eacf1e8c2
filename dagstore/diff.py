"""What changed between two commits of a store repo: files with unified diffs, and DAGs.

dulwich's own machinery (tree_changes with rename detection, write_object_diff) reads the
objects from the store's database: no checkout, no `git` process. A binary file is marked, not
shown; a patch past MAX_PATCH_BYTES is cut at a line end and flagged, so one huge generated
file cannot make the answer huge.

DAG changes come from the structures the store recorded when it parsed each commit: a DAG
added or removed, tasks added or removed, and which settings changed (schedule, retries...).
"""

from __future__ import annotations

import io
from typing import Any

from dulwich.diff_tree import RenameDetector, tree_changes
from dulwich.patch import write_object_diff
from dulwich.repo import BaseRepo
from sqlalchemy import select
from sqlalchemy.orm import Session

from dagstore.core.models import Version, VersionDag
from dagstore.git.repo import get_commit

MAX_PATCH_BYTES = 256 * 1024
MAX_FILES = 2000
STATUS = {"add": "added", "modify": "modified", "delete": "deleted", "rename": "renamed"}
DAG_SETTINGS = ("schedule", "start_date", "end_date", "catchup", "max_active_runs", "tags")
TASK_SETTINGS = ("upstream", "retries", "retry_delay", "timeout", "queue", "function")


def diff_files(repo: BaseRepo, base: str, head: str) -> dict[str, Any]:
    """Files that differ from `base` to `head` (full shas of commits in `repo`)."""
    store = repo.object_store
    old_tree, new_tree = get_commit(repo, base).tree, get_commit(repo, head).tree
    files: list[dict[str, Any]] = []
    truncated_list = False
    for change in tree_changes(store, old_tree, new_tree, rename_detector=RenameDetector(store)):
        if len(files) >= MAX_FILES:
            truncated_list = True
            break
        old, new = _entry(change.old), _entry(change.new)
        out = io.BytesIO()
        write_object_diff(out, store, old, new)
        patch, binary, truncated = _patch_text(out.getvalue())
        path = (new[0] or old[0] or b"").decode("utf-8", "replace")
        entry: dict[str, Any] = {
            "path": path,
            "status": STATUS.get(change.type, "modified"),
            "binary": binary,
            "patch": patch,
            "truncated": truncated,
        }
        if change.type == "rename":
            entry["old_path"] = (old[0] or b"").decode("utf-8", "replace")
        files.append(entry)
    return {"base": base, "head": head, "files": files, "files_truncated": truncated_list}


def _entry(entry: Any) -> tuple[bytes | None, int | None, bytes | None]:
    if entry is None:
        return (None, None, None)
    return (entry.path, entry.mode, entry.sha)


def _patch_text(raw: bytes) -> tuple[str, bool, bool]:
    binary = b"\nBinary files " in raw or raw.startswith(b"Binary files ")
    truncated = len(raw) > MAX_PATCH_BYTES
    if truncated:
        raw = raw[: raw.rfind(b"\n", 0, MAX_PATCH_BYTES) + 1]
    return raw.decode("utf-8", "replace"), binary, truncated


def diff_dags(session: Session, repo_id: int, base: str, head: str) -> list[dict[str, Any]]:
    """DAGs added, removed or changed in structure, as the store parsed each commit.
    A commit that was never parsed (not a tracked tip, say) counts as defining no DAGs."""
    before, after = _structures(session, repo_id, base), _structures(session, repo_id, head)
    changes = []
    for dag_id in sorted(before.keys() | after.keys()):
        old, new = before.get(dag_id), after.get(dag_id)
        if old == new:
            continue
        if old is None or new is None:
            changes.append({"dag_id": dag_id, "change": "added" if old is None else "removed"})
            continue
        old_tasks = {t["task_id"]: t for t in old.get("tasks", [])}
        new_tasks = {t["task_id"]: t for t in new.get("tasks", [])}
        changed_tasks = {
            task_id: [k for k in TASK_SETTINGS if old_tasks[task_id].get(k) != task.get(k)]
            for task_id, task in new_tasks.items()
            if task_id in old_tasks and old_tasks[task_id] != task
        }
        changes.append(
            {
                "dag_id": dag_id,
                "change": "changed",
                "tasks_added": sorted(new_tasks.keys() - old_tasks.keys()),
                "tasks_removed": sorted(old_tasks.keys() - new_tasks.keys()),
                "tasks_changed": changed_tasks,
                "settings_changed": [k for k in DAG_SETTINGS if old.get(k) != new.get(k)],
            }
        )
    return changes


def _structures(session: Session, repo_id: int, sha: str) -> dict[str, dict[str, Any]]:
    rows = session.execute(
        select(VersionDag.dag_id, VersionDag.structure)
        .join(Version, Version.id == VersionDag.version_id)
        .where(Version.repo_id == repo_id, Version.sha == sha)
    )
    return {dag_id: structure for dag_id, structure in rows}
