"""pinflow: run DAG code on many machines, every run pinned to one git commit.

`from pinflow import DAG, task` is the whole authoring surface. It is resolved lazily so that
`import pinflow` (by every DAG file, on every worker and in every parse) stays cheap and the
CLI or server modules never drag the authoring code in, nor the other way round.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DAG", "task"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "DAG":
        from dagstore.authoring.dag import DAG

        return DAG
    if name == "task":
        from dagstore.authoring.task import task

        return task
    raise AttributeError(f"module 'pinflow' has no attribute {name!r}")
