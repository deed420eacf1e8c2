"""The DAG files a process has imported, one version at a time, and importing one safely.

RQ forks a fresh work horse per task, so one task's globals never leak into the next. A horse
that imports the task's DAG file itself pays for it at every task: for a DAG of 1,000 tasks
~40 ms, more than everything else at task start put together (and a DAG file that imports
pandas, far more). A warm fork server (`runner.forkserver`) imports it once with `load` and
forks the horses of that version's tries, which find it here with `get`; a --no-fork worker
keeps what its tasks imported the same way. Never the RQ worker of a forking worker: it holds
the token agent's socket, and a DAG file's top level is task code.

One version at a time per process: the sibling modules of DAG files (`helpers`,
`common.util`) are imported under their plain names, so two versions cannot share a process.
Switching to another version first drops every module loaded from the version cache and the
old version's folders from `sys.path`.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagstore.parsing.loader import import_dag_file, put_version_on_path

if TYPE_CHECKING:
    from dagstore.authoring.dag import DAG

log = logging.getLogger("pinflow.worker")
IMPORT_TIMEOUT = 10.0


class _ImportTimeout(BaseException):
    """Raised by SIGALRM in a DAG file's top level that runs too long in a fork server."""


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise _ImportTimeout()


class WarmDags:
    def __init__(self) -> None:
        self.root: Path | None = None  # the version whose modules are loaded in this process
        self.sha = ""
        self.dags: dict[str, list[DAG]] = {}  # fileloc → DAGs, for `root`
        self.failed: set[str] = set()  # filelocs of `root` not to try again

    def load(self, root: Path, fileloc: str, sha: str) -> str | None:
        """Import `fileloc` of the version at `root` ahead of its tasks, within
        IMPORT_TIMEOUT: None when it is imported, else why not (then the horse imports it
        itself and reports the error as its task's). Never raises."""
        if root != self.root or sha != self.sha:
            self._switch(root, sha)
        if fileloc in self.dags:
            return None
        if fileloc in self.failed:
            return f"{fileloc} at {sha[:12]} failed before"
        try:
            self.dags[fileloc] = self._import(root, fileloc, sha)
        except Exception as exc:  # noqa: BLE001 - the DAG file's top level may raise anything
            log.info("not warming %s: %s", fileloc, exc)
            return str(exc)
        gc.freeze()  # kept until the version changes: out of the collector's sight
        return None

    def get(self, root: Path, fileloc: str, sha: str) -> list[DAG]:
        """Where the task runs: the DAGs of `fileloc` at `sha`, warm if imported before.

        A horse forked by a fork server finds what the server imported. A --no-fork worker
        runs every task here, so a task of another version first drops the previous version's
        modules, or its `helpers` would be found in `sys.modules` and used by the wrong one.
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
