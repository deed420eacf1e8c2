"""Task options and the bounds of what authors write: one rule for `@task(...)`, `.override(...)`
and a DAG's `default_args`, checked where they are written (the store checks the same bounds
again on what a parse reports: `dagstore.parsing.results`).

Stdlib only: every DAG file imports the authoring model.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from dagstore.authoring.rules import DEFAULT_RULE, TRIGGER_RULES

ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,249}")
ID_RULE = "use letters, digits, '_', '.', '-'; not starting with '.' or '-'; at most 250 characters"
OPTION_NAMES = ("retries", "retry_delay", "timeout", "queue", "pool", "trigger_rule", "on_failure")
MAX_RETRIES = 1000
MAX_SECONDS = 10 * 366 * 86400.0  # a retry delay, a timeout, a dagrun_timeout: ten years
DEFAULT_OPTIONS: dict[str, Any] = {
    "retries": 0,
    "retry_delay": 0.0,
    "timeout": None,
    "queue": "default",
    "pool": None,
    "trigger_rule": DEFAULT_RULE,
    "on_failure": None,
}


class _Unset(enum.Enum):
    """Tells "not given" from an explicit None (`timeout=None` overrides a default timeout)."""

    UNSET = "UNSET"


UNSET = _Unset.UNSET


def valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def seconds(name: str, value: object, allow_none: bool) -> float | None:
    """A duration as float seconds (a number or a timedelta), at most MAX_SECONDS."""
    if value is None and allow_none:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value) or abs(value) > MAX_SECONDS:
            raise ValueError(f"{name} must be at most {MAX_SECONDS:g} seconds, got {value!r}")
        return float(value)
    kind = "seconds, a timedelta or None" if allow_none else "seconds or a timedelta"
    raise ValueError(f"{name} must be {kind}, got {value!r}")


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise task options (durations to float seconds); ValueError says what is wrong.

    Kept separate from the DAG so that both `default_args` and `@task(...)` go through one rule.
    """
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(f"unknown task option(s) {', '.join(map(repr, unknown))}")
    out: dict[str, Any] = {}
    for name, value in options.items():
        if value is not UNSET:
            out[name] = _CHECKS[name](value)
    return out


def _retries(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"retries must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"retries must be >= 0 (negative retries), got {value}")
    if value > MAX_RETRIES:
        raise ValueError(f"retries must be at most {MAX_RETRIES}, got {value}")
    return value


def _retry_delay(value: object) -> float:
    delay = seconds("retry_delay", value, allow_none=False)
    if delay is None or delay < 0:
        raise ValueError(f"retry_delay must be >= 0, got {value!r}")
    return delay


def _timeout(value: object) -> float | None:
    limit = seconds("timeout", value, allow_none=True)
    if limit is not None and limit <= 0:
        raise ValueError(f"timeout must be > 0 or None, got {value!r}")
    return limit


def _queue(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"queue must be a non-empty string, got {value!r}")
    return value


def _pool(value: object) -> str | None:
    if value is not None and not valid_id(value):
        raise ValueError(f"pool must be a pool name or None ({ID_RULE}), got {value!r}")
    return value  # type: ignore[return-value]


def _trigger_rule(value: object) -> str:
    if value not in TRIGGER_RULES:
        raise ValueError(f"unknown trigger_rule {value!r} (one of: {', '.join(TRIGGER_RULES)})")
    return value  # type: ignore[return-value]


def _on_failure(value: object) -> Any:
    if value is not None and not callable(value):
        raise ValueError(f"on_failure must be a function taking the context, got {value!r}")
    return value


_CHECKS = {
    "retries": _retries,
    "retry_delay": _retry_delay,
    "timeout": _timeout,
    "queue": _queue,
    "pool": _pool,
    "trigger_rule": _trigger_rule,
    "on_failure": _on_failure,
}


def callable_name(function: object) -> str:
    """How the structure names a function: its qualified name without the module (DAG modules
    are named per commit, and the structure hash must not change just because the commit did)."""
    return str(getattr(function, "__qualname__", None) or type(function).__qualname__)
