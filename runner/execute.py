"""Running one try of a task in this process: import the pinned DAG file, call the task.

The DAG file is imported from the version folder exactly as the parser imported it
(`dagstore.parsing.loader`), or was imported so by the worker parent before the fork
(`runner.warm`).
The task gets its upstream results and its context (a mapped instance its elements), and a
timeout is enforced with SIGALRM (the job runs in RQ's forked work horse, on its main thread).
A branch task's result is checked here (ids of direct downstreams), so a bad one fails the
try instead of skipping the wrong tasks. A try that fails for good (its last try) runs the
task's (or the DAG's) `on_failure` callback right after, in this process, on the same
commit, with the task's context and `error`: its output goes to the try's log, and a callback
that raises is logged and changes nothing else.
"""

from __future__ import annotations

import json
import signal
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagstore.authoring.branching import result_error
from dagstore.authoring.mapping import MapCall
from dagstore.core.protocol import CALLBACK_TIMEOUT, TaskSpec
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
        "map_index": spec.map_index,
    }


def is_final(spec: TaskSpec) -> bool:
    """Whether a failure of this try fails the task for good (no retry left)."""
    return spec.max_tries is not None and spec.try_number >= spec.max_tries


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
        map_call = MapCall(spec.map_values, spec.map_positions) if task.mapped else None
        result = task.call(spec.upstream_results, context_for(spec), map_call)
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
    if task.is_branch:
        wrong = result_error(task.task_id, task.downstream_task_ids, result)
        if wrong is not None:
            return Outcome(False, error=wrong)
    return Outcome(True, result=result)


def run_on_failure(spec: TaskSpec, version_root: Path, error: str) -> str | None:
    """Call the failed task's on_failure callback (its own, else its DAG's) with the task's
    context and `error`; returns what went wrong with the callback, or None. Printed lines
    go wherever the caller captures output (the try's log)."""
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    remaining = signal.setitimer(signal.ITIMER_REAL, 0)[0]
    try:
        dags = {dag.dag_id: dag for dag in WARM.get(version_root, spec.fileloc, spec.sha)}
        dag = dags.get(spec.dag_id)
        task = dag.tasks.get(spec.task_id) if dag is not None else None
        callback = dag.on_failure_for(task) if dag is not None and task is not None else None
        if callback is None:
            return None
        print(f"pinflow: running on_failure callback {getattr(callback, '__qualname__', '?')}")
        signal.setitimer(signal.ITIMER_REAL, CALLBACK_TIMEOUT)
        callback({**context_for(spec), "error": error})
        return None
    except TaskTimeout:
        return f"on_failure callback timed out after {CALLBACK_TIMEOUT:g} s"
    except BaseException as exc:  # noqa: BLE001 - callback code may raise anything
        trace = "".join(traceback.format_exception(exc)).replace(f"{version_root}/", "")
        return f"on_failure callback raised (the task's state is unchanged):\n{trace}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if remaining:
            signal.setitimer(signal.ITIMER_REAL, remaining)
