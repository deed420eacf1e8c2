"""How the CLI shows things: one place for tables and time formats."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()


def short_time(value: str | None) -> str:
    """ISO-8601 UTC from the API → `2026-11-23 21:04:05` (seconds are enough to read)."""
    if not value:
        return ""
    return value.replace("T", " ").removesuffix("Z")[:19]


def table(*columns: str, no_wrap: tuple[str, ...] = ("sha",)) -> Table:
    t = Table()
    for name in columns:
        t.add_column(name, no_wrap=name in no_wrap)
    return t
