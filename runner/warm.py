"""DAG files imported once in the worker parent, so every forked work horse starts warm.

RQ forks a fresh work horse per task, so one task's globals never leak into the next. Without
this module each horse imports the task's DAG file again: for a DAG of 1,000 tasks that is
~40 ms per task, more than everything else at task start put together. Before forking, the
worker parent imports the job's DAG file (when its version is already in the local cache)
and the horse inherits the imported DAGs through fork. That is the same as a fresh import as
long as the parent never runs task code, and it never does: only the file's top level.

One version at a time per worker process: the sibling modules of DAG files (`helpers`,
`common.util`) are imported under their plain names, so two versions cannot share a process.
Switching to another version first drops every module loaded from the version cache and the
old version's folders from `sys.path`.

The DAG file's top level thus runs in the worker parent, as application code does under
gunicorn's `--preload` or Airflow's forking task runner. A file that fails or takes longer
than `IMPORT_TIMEOUT` at import is not warmed (the horse imports it and reports the error as
before), and `PINFLOW_WARM_DAGS=0` turns warming off.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagstore.loader import import_dag_file, put_version_on_path
from dagstore.protocol import JobPayload

if TYPE_CHECKING:
    from dagstore.dag import DAG

log = logging.getLogger("pinflow.worker")
IMPORT_TIMEOUT = 10.0
# Where a version's files are, or None while it is not (completely) in the local cache.
Locate = Callable[[str, str], Path | None]


class _ImportTimeout(BaseException):
    """Raised by SIGALRM in a DAG file's top level that runs too long in the worker parent."""


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise _ImportTimeout()


class WarmDags:
    def __init__(self) -> None:
        self.locate: Locate | None = None
        self.root: Path | None = None  # the version whose modules are loaded in this process
        self.sha = ""
        self.dags: dict[str, list[DAG]] = {}  # fileloc → DAGs, for `root`
        self.failed: set[str] = set()  # filelocs of `root` not to try again

    def enable(self, locate: Locate) -> None:
        self.locate = locate

    def prepare(self, payload: Any) -> None:
        """In the worker parent, before the fork: import the job's DAG file if we can.

        Never raises: whatever goes wrong here, the horse imports the file itself.
        """
        if self.locate is None:
            return
        try:
            job = JobPayload.model_validate(payload)
            root = self.locate(job.repo, job.sha)
            if root is None or job.fileloc in self.failed:
                return
            if root != self.root:
                self._switch(root, job.sha)
            if job.fileloc not in self.dags:
                self.dags[job.fileloc] = self._import(root, job.fileloc, job.sha)
                gc.freeze()  # kept until the version changes: out of the collector's sight
        except Exception as exc:  # noqa: BLE001 - the DAG file's top level may raise anything
            log.info("not warming %s: %s", payload, exc)

    def get(self, root: Path, fileloc: str, sha: str) -> list[DAG]:
        """Where the task runs: the DAGs of `fileloc` at `sha`, warm if imported before.

        A forked horse finds what its parent imported. A --no-fork worker runs every task
        here, so a task of another version first drops the previous version's modules, or
        its `helpers` would be found in `sys.modules` and used by the wrong version.
        """
        if root != self.root or sha != self.sha:
            self._switch(root, sha)
        put_version_on_path(root)  # first on sys.path, for the imports the task makes
        if fileloc not in self.dags:
            self.dags[fileloc] = import_dag_file(root, fileloc, sha)
        return self.dags[fileloc]

    def _import(self, root: Path, fileloc: str, sha: str) -> list[DAG]:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, IMPORT_TIMEOUT)
        try:
            put_version_on_path(root)
            return import_dag_file(root, fileloc, sha)
        except BaseException as exc:  # noqa: BLE001 - even SystemExit must not stop the worker
            self.failed.add(fileloc)
            raise RuntimeError(f"{fileloc} at {sha[:12]}: {type(exc).__name__}: {exc}") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def _switch(self, root: Path, sha: str) -> None:
        """Forget the warm version: its modules, its folders on sys.path."""
        if self.root is not None:
            old = str(self.root)
            for name, module in list(sys.modules.items()):
                if _loaded_from(module, old):
                    del sys.modules[name]
            sys.path[:] = [p for p in sys.path if not _under(p, old)]
            importlib.invalidate_caches()
            gc.unfreeze()  # the dropped modules hold cycles: let the collector have them
        self.root, self.sha = root, sha
        self.dags, self.failed = {}, set()


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)


def _loaded_from(module: Any, folder: str) -> bool:
    """A module or package (namespace packages have no `__file__`, only `__path__`) from
    `folder`."""
    places = [getattr(module, "__file__", None) or "", *(getattr(module, "__path__", None) or [])]
    return any(isinstance(p, str) and _under(p, folder) for p in places)


WARM = WarmDags()
