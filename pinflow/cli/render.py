"""How the CLI shows things: one place for listings, tables and time formats.

Every listing prints in one of three ways (`--output`): a table for a terminal; plain aligned
columns with nothing cut when stdout is a pipe or a file (rich would squeeze its table into 80
columns and cut cells to `s…`, so nothing could be read or grepped); or JSON, the API's own
items, for scripts. Table and plain cells show control characters written out (`\x1b`),
never raw: much of what they show was written by whoever pushed (`dagstore.core.terminal`); JSON
escapes them itself.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dagstore.core.terminal import printable

console = Console()


class Format(StrEnum):
    table = "table"
    plain = "plain"
    json = "json"


Output = Annotated[
    Format | None,
    typer.Option(
        "--output",
        "-o",
        help="table (default on a terminal), plain (default in a pipe: aligned columns, "
        "nothing cut) or json (the API's items, for scripts)",
    ),
]


@dataclass(frozen=True)
class Column:
    """`no_wrap`: never cut nor wrapped (states, ids, times); other columns wrap. `drop`:
    when the table is wider than the terminal, columns are left out, highest `drop` first
    (as `kubectl get` and `gh run list` do); 0 is never left out."""

    name: str
    cell: Callable[[dict[str, Any]], str]
    no_wrap: bool = False
    drop: int = 0


WRAPPED_MIN = 12  # the narrowest a wrapping column is let be before columns are dropped


def chosen(output: Format | None) -> Format:
    return output or (Format.table if sys.stdout.isatty() else Format.plain)


def show(
    items: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    output: Format | None,
    empty: str | None = None,
) -> None:
    """Print `items` (the API's shapes) as the chosen format; `empty` when there are none."""
    how = chosen(output)
    if how is Format.json:
        print(json.dumps(list(items), indent=2, default=str))
        return
    if not items and empty:
        print(empty)
        return
    if how is Format.plain:
        rows = [[printable(column.cell(item), lines=True) for column in columns] for item in items]
        print(plain_table([c.name for c in columns], rows), end="")
        return
    console.print(table_of(items, columns), crop=False)


def table_of(
    items: Sequence[dict[str, Any]], columns: Sequence[Column], width: int | None = None
) -> Table:
    """The rich table of `items` (what `show` prints on a terminal; `Live` updates it),
    fitted to `width` (the terminal's): columns left out by their `drop` until what is never
    cut fits whole; wider than the terminal only when even that does not fit."""
    cells = [[printable(c.cell(item), lines=True) for c in columns] for item in items]
    natural = [
        max(len(line) for text in [c.name, *(row[i] for row in cells)] for line in text.split("\n"))
        for i, c in enumerate(columns)
    ]
    need = [n if c.no_wrap else min(n, WRAPPED_MIN) for c, n in zip(columns, natural, strict=True)]
    shown = list(range(len(columns)))
    width = width or console.width

    def needed() -> int:  # rich's default box: a border and two spaces per column
        return sum(need[i] for i in shown) + 3 * len(shown) + 1

    for i in sorted((i for i, c in enumerate(columns) if c.drop), key=lambda i: -columns[i].drop):
        if needed() <= width:
            break
        shown.remove(i)
    rendered = Table(width=needed() if needed() > width else None)
    for i in shown:
        column = columns[i]
        if column.no_wrap:
            rendered.add_column(column.name, no_wrap=True, min_width=natural[i])
        else:
            rendered.add_column(column.name, overflow="fold")
    for row in cells:  # Text, not markup: a "[link=...]" in a cell stays text
        rendered.add_row(*(Text(row[i]) for i in shown))
    return rendered


@contextmanager
def unless_reader_gone() -> Iterator[None]:
    """Output to a reader that has gone (`| head -1`) is dropped, not an error: the exit code
    still says what happened (a run that succeeded exits 0). stdout then points at /dev/null,
    so the interpreter's last flush does not fail either."""
    try:
        yield
    except BrokenPipeError:
        drop_stdout()


def drop_stdout() -> None:
    """Point stdout at /dev/null: its reader has gone, and nothing written may fail now."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def say(markup: str, output: Format | None) -> None:
    """One line of rich markup: styled on a terminal, plain text in a pipe."""
    if chosen(output) is Format.table:
        console.print(markup)
    else:
        print(Text.from_markup(markup).plain)


def on_screen(text: str) -> str:
    """A log as it comes, for stdout: written out escapes on a terminal, the exact text in a
    pipe or a file (`pinflow logs ... > x.log` keeps what the task wrote)."""
    return printable(text, lines=True) if sys.stdout.isatty() else text


def plain_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart; a cell's line breaks become
    spaces, so each row stays one line for grep."""
    cells = [list(header)] + [[" ".join(str(c).split()) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"


def short_time(value: str | None) -> str:
    """ISO-8601 UTC from the API → `2026-11-23 21:04:05` (seconds are enough to read)."""
    if not value:
        return ""
    return value.replace("T", " ").removesuffix("Z")[:19]
