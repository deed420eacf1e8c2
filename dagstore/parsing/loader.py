"""Importing the DAG files of one version: the same way for parsing and for running tasks.

A version is an unpacked commit in its own folder. Its DAG folder (`dags/` when the repo has
one, else the root) and its root go first on `sys.path`, so `from helpers import x` beside a
DAG file and `from common.util import y` both work; each DAG file is imported under a module
name unique to the sha, so two versions of one file never mix in a process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dagstore.authoring.dag import DAG

DAG_FOLDER = "dags"
_SKIP_DIRS = {"__pycache__", "node_modules", "venv", ".venv"}


def dag_folder(root: Path) -> Path:
    candidate = root / DAG_FOLDER
    return candidate if candidate.is_dir() and not candidate.is_symlink() else root


def is_dag_file(path: Path) -> bool:
    """Like Airflow's safe mode: only files that mention both `pinflow` and `DAG` are imported,
    so helper modules run only when a DAG file imports them."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    return b"pinflow" in data and b"DAG" in data


def discover(root: Path) -> list[str]:
    """The DAG files of a version, as sorted paths relative to its root."""
    folder = dag_folder(root)
    found = []
    for path in folder.rglob("*.py"):
        rel_parts = path.relative_to(folder).parts
        if any(p.startswith(".") or p in _SKIP_DIRS for p in rel_parts[:-1]):
            continue
        if path.is_file() and not path.is_symlink() and is_dag_file(path):
            found.append(path.relative_to(root).as_posix())
    return sorted(found)


def module_name(sha: str, rel: str) -> str:
    stem = re.sub(r"\W", "_", rel.removesuffix(".py"))[:80]
    digest = hashlib.sha1(rel.encode()).hexdigest()[:8]
    return f"pinflow_dag_{sha[:12]}_{stem}_{digest}"


def put_version_on_path(root: Path) -> None:
    for entry in (str(root), str(dag_folder(root))):
        if entry in sys.path:
            sys.path.remove(entry)
    sys.path[:0] = [str(dag_folder(root)), str(root)] if dag_folder(root) != root else [str(root)]


def import_dag_file(root: Path, rel: str, sha: str) -> list[DAG]:
    """Import one DAG file of the version at `root`; returns the DAGs it defined."""
    from dagstore.authoring.dag import (
        collecting,  # only the processes that import DAG files need it
    )

    name = module_name(sha, rel)
    spec = importlib.util.spec_from_file_location(name, root / rel)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {rel}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with collecting() as dags:
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    for dag in dags:
        dag.fileloc = rel
    return list(dags)
