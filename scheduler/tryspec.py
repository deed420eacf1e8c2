"""The `TaskSpec` a claim answers, from the row the claim read (`tries._CLAIM_READ`): one
builder for a try's claim (`scheduler.api`) and a callback's (`scheduler.callback_api`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from dagstore.core.db import iso
from dagstore.core.protocol import TaskSpec


def spec_of(
    row: Row[Any],
    ti_id: int,
    try_number: int,
    credential: str,
    heartbeat_timeout: float,
    **more: Any,
) -> TaskSpec:
    """What the worker needs to run the claimed try (or its callback); `more`: the fields
    that differ (upstream results and mapped elements for a try, the error for a callback)."""
    fields: dict[str, Any] = {
        "ti_id": ti_id,
        "try_number": try_number,
        "run_id": row.run_id,
        "dag_id": row.dag_id,
        "task_id": row.task_id,
        "repo": row.repo,
        "sha": row.sha,
        "fileloc": row.fileloc,
        "logical_date": iso(row.logical_date) or "",
        "conf": row.conf or {},
        "timeout": row.timeout,
        "upstream_results": {},
        "heartbeat_interval": max(1.0, heartbeat_timeout / 6),
        "heartbeat_timeout": heartbeat_timeout,
        "credential": credential,
        "map_index": row.map_index,
        "max_tries": row.max_tries,
    }
    return TaskSpec(**(fields | more))
