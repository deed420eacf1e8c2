"""The `pinflow` command. The only place that imports Typer.

Every error pinflow raises on purpose ends here as one line on stderr and a non-zero exit
code; no traceback reaches the user.
"""

from __future__ import annotations

import sys

import typer

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
