"""Task states as the pages show them: one CSS class per state name (`s-<state>`, colours in
`static/pinflow.css`), a legend built from the list of states, and one state standing for a
group of instances (a mapped task's, issue 28).

The list is the API's own (`scheduler.shapes.TaskState`), so a state added there (`skipped`,
say) is in every legend at once, and a state the list does not know yet still renders: it
gets its class and the neutral colour until the stylesheet names one for it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import get_args

from scheduler.shapes import TaskState

TASK_STATES: tuple[str, ...] = get_args(TaskState)

# Which state a group of instances shows: what needs a person's eye first.
_FIRST = ("failed", "upstream_failed", "running", "up_for_retry", "queued", "scheduled")
_LAST = ("canceled", "skipped", "success", "none")


def _rank(state: str) -> int:
    if state in _FIRST:
        return _FIRST.index(state)
    if state in _LAST:
        return 100 + _LAST.index(state)
    return 50  # a state this list does not know: between the urgent and the settled


def group_state(states: Iterable[str]) -> str:
    """The one state a group of instances (a mapped task's) is shown with."""
    if isinstance(states, list) and len(states) == 1:  # an unmapped task: 5,000 on a grid
        return states[0]
    return min(states, key=_rank, default="none")


def group_title(states: list[str]) -> str:
    """`3 success, 1 failed` for a mapped task's instances; the state alone for one."""
    if len(states) == 1:
        return states[0]
    counts = Counter(states)
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda i: _rank(i[0])))


def legend(seen: Iterable[str] = ()) -> list[str]:
    """Every known state, then any other state present on the page."""
    extra = sorted(set(seen) - set(TASK_STATES))
    return [*TASK_STATES, *extra]
