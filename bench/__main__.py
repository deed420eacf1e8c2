"""Run every `bench/*.py` module's `main()` in turn: this is what `make bench` calls.

Modules are found by listing the package rather than by a hand-kept list, so a new benchmark
only needs a `main()`. One failing benchmark does not hide the figures of the others; the exit
status says whether all of them ran.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

import bench


def benchmark_modules() -> list[str]:
    """Names of the benchmark modules, skipping private ones (`_x.py`, `__main__`)."""
    return sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )


def run_one(name: str) -> bool:
    """Import `bench.<name>` and call its `main()`; True when it finished without raising."""
    print(f"== bench.{name} ==", flush=True)
    try:
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "main", None)
        if entry is None:
            print(f"bench.{name}: no main(), skipped", flush=True)
            return True
        entry()
    except Exception:
        traceback.print_exc()
        return False
    return True


def main() -> int:
    failed = [name for name in benchmark_modules() if not run_one(name)]
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
