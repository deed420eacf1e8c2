"""Running one try of a task in this process: import the pinned DAG file, call the task.

The DAG file is imported from the version folder exactly as the parser imported it
(`dagstore.parsing.loader`), or was imported so by the worker parent before the fork
(`runner.warm`).
The task gets its upstream results and its context, and a timeout is enforced with SIGALRM
(the job runs in RQ's forked work horse, on its main thread).
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagstore.core.protocol import TaskSpec
from runner import tracebacks
from runner.warm import WARM


class TaskTimeout(BaseException):
    """Raised inside the task's code when it runs past its timeout."""


@dataclass
class Outcome:
    success: bool
    result: Any = None
    error: str | None = None
    timed_out: bool = False
    shown: str | None = None  # the error as the task's log shows it (None: `error`)


def _on_alarm(_signum: int, _frame: Any) -> None:
    raise TaskTimeout()


def context_for(spec: TaskSpec) -> dict[str, Any]:
    return {
        "run_id": spec.run_id,
        "logical_date": spec.logical_date,
        "sha": spec.sha,
        "conf": spec.conf,
        "try_number": spec.try_number,
        "dag_id": spec.dag_id,
        "task_id": spec.task_id,
        "repo": spec.repo,
    }


def execute(spec: TaskSpec, version_root: Path) -> Outcome:
    """Call the task; every failure (import, task code, timeout, non-JSON result) is an Outcome."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    remaining = signal.setitimer(signal.ITIMER_REAL, 0)[0]  # RQ's own job alarm, restored after
    try:
        if spec.timeout:
            signal.setitimer(signal.ITIMER_REAL, spec.timeout)
        dags = {dag.dag_id: dag for dag in WARM.get(version_root, spec.fileloc, spec.sha)}
        dag = dags.get(spec.dag_id)
        if dag is None:
            return Outcome(
                False,
                error=f"{spec.fileloc} at {spec.sha[:12]} does not define DAG {spec.dag_id!r}",
            )
        task = dag.get_task(spec.task_id)
        result = task.call(spec.upstream_results, context_for(spec))
    except TaskTimeout:
        return Outcome(False, error=f"timed out after {spec.timeout:g} s", timed_out=True)
    except BaseException as exc:  # noqa: BLE001 - task code may raise anything, even exit
        full, users = tracebacks.full(exc, version_root), tracebacks.users(exc, version_root)
        return Outcome(False, error=full, shown=users)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if remaining:
            signal.setitimer(signal.ITIMER_REAL, remaining)
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return Outcome(
            False,
            error=f"the task's result is not JSON ({type(result).__name__}): "
            f"{exc}; return dicts, lists, strings, numbers, bools or None",
        )
    return Outcome(True, result=result)
