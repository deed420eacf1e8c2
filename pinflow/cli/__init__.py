"""The `pinflow` command. The only place that imports Typer.

Every error pinflow raises on purpose ends here as one line on stderr and a non-zero exit
code; no traceback reaches the user.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer
import typer.core

from dagstore.core.errors import PinflowError
from dagstore.core.terminal import printable
from pinflow.cli import dags, diff, pools, runs, server, store
from pinflow.cli.render import drop_stdout

app = typer.Typer(
    name="pinflow",
    help="Run DAG code on many machines, every run pinned to one git commit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _flag_type(display):  # type: ignore[no-untyped-def]
    """Typer's rich help writes every flag as `--help <bool>`, as if it took a value; a
    flag takes none, so none is shown (click's plain help does the same)."""

    def display_type_rich(self: typer.core.TyperOption, ctx: object) -> str | None:
        return None if self.is_flag or self.count else display(self, ctx)

    return display_type_rich


typer.core.TyperOption.display_type_rich = _flag_type(typer.core.TyperOption.display_type_rich)


def _show_version(wanted: bool) -> None:
    if wanted:
        try:
            print(f"pinflow {version('pinflow')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("pinflow (not installed: version unknown)")
        raise typer.Exit(0)


@app.callback()
def _options(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit"
        ),
    ] = False,
) -> None:
    """Run DAG code on many machines, every run pinned to one git commit."""


store.register(app)
dags.register(app)
runs.register(app)
diff.register(app)
server.register(app)
pools.register(app)

# 7 is not used; 8: `trigger --wait --timeout` elapsed (pinflow.cli.runs.TIMED_OUT).
EXIT_CODES = {400: 2, 401: 3, 403: 3, 404: 4, 409: 5, 503: 6}


def main() -> None:
    try:
        app()
    except PinflowError as exc:
        print(printable(f"pinflow: {exc.detail}"), file=sys.stderr)  # may quote pushed text
        sys.exit(EXIT_CODES.get(exc.status_code, 1))
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `pinflow runs | head -1`: the reader had what it wanted
        drop_stdout()
        sys.exit(0)
