"""`--conf JSON`: what a run's tasks get as `conf`, checked the same way by every command."""

from __future__ import annotations

import json
from typing import Any

from dagstore.core.errors import BadRequest


def parse_conf(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"--conf is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("--conf must be a JSON object")
    return value
