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


def kib(size: int) -> str:
    return f"{size / 1024:,.0f} KiB"
