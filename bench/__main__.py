"""Run every `bench/*.py` module's `main()` in turn: this is what `make bench` calls.

Modules are found by listing the package rather than by a hand-kept list, so a new benchmark
only needs a `main()`, which returns its goals (`bench._stats.Goal`) for the closing summary
table. One failing benchmark does not hide the figures of the others; the exit status says
whether all of them ran. `python -m bench fetch dispatch` runs only the named ones.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

from rich.console import Console
from rich.table import Table

import bench
from bench._stats import Goal


def benchmark_modules() -> list[str]:
    """Names of the benchmark modules, skipping private ones (`_x.py`, `__main__`)."""
    return sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )


def run_one(name: str) -> list[Goal] | None:
    """Import `bench.<name>` and call its `main()`: its goals, or None when it raised."""
    print(f"== bench.{name} ==", flush=True)
    try:
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "main", None)
        if entry is None:
            print(f"bench.{name}: no main(), skipped", flush=True)
            return []
        return list(entry() or [])
    except Exception:
        traceback.print_exc()
        return None


def summary(goals: list[Goal]) -> Table:
    table = Table(title="goals, this run")
    columns = ("benchmark", "measure", "before (recorded)", "this run", "goal", "verdict")
    for column in columns:
        table.add_column(column, justify="left" if column in ("benchmark", "measure") else "right")
    for goal in goals:
        verdict = "[green]met[/]" if goal.met else "[red]NOT met[/]"
        table.add_row(goal.benchmark, goal.name, goal.before or "—", goal.value, goal.target,
                      verdict)  # fmt: skip
    return table


def main(names: list[str] | None = None) -> int:
    goals: list[Goal] = []
    failed = []
    for name in names or benchmark_modules():
        result = run_one(name)
        if result is None:
            failed.append(name)
        else:
            goals += result
    Console(width=max(Console().width, 120)).print(summary(goals))
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
