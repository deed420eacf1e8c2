"""Samples and how the benchmarks print them."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Measure:
    """Samples of one operation, in seconds."""

    name: str
    samples: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=10, method="inclusive")[8]


def repeat(name: str, reps: int, run: Callable[[int], float], note: str = "") -> Measure:
    """Call `run(i)` `reps` times; `run` returns the seconds of the part worth timing."""
    return Measure(name, [run(i) for i in range(reps)], note)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def summary_cells(m: Measure) -> list[str]:
    """name, n, median, p90, min, max (ms): the columns every timing table shows."""
    return [
        m.name,
        str(len(m.samples)),
        ms(m.median),
        ms(m.p90),
        ms(min(m.samples)),
        ms(max(m.samples)),
    ]


def kib(size: int) -> str:
    return f"{size / 1024:,.0f} KiB"


@dataclass(frozen=True)
class Goal:
    """One of issue 8's goals as a benchmark measured it; `make bench` prints them together.

    Every benchmark's `main()` returns its goals, so the closing summary shows in one table
    which claims held on this machine in this run, next to the figures that decide it.
    """

    benchmark: str  # e.g. "version fetch"
    name: str  # what is compared, e.g. "git clone / cold fetch (medians)"
    value: str  # the measured figure, formatted, e.g. "2.4x"
    target: str  # the goal, e.g. ">= 3x"
    met: bool
    # The figure recorded before the current round of work (BENCHMARKS.md), e.g. issue 17's
    # "today" column: printed beside this run's value so the summary shows the change.
    before: str = ""
