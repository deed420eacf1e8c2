"""Trigger rules: whether a task runs, given the states of its upstream task instances.

Airflow's eight rules, with Airflow's meaning, decided in one place for the scheduler and for
`pinflow dags test` so that a test run and a real run agree. A mapped upstream counts once
per instance. A rule can decide before every upstream is done: `one_success` runs at the
first success, `all_success` is `upstream_failed` at the first failure and `skipped` at the
first skip (that is how a skip spreads: to downstreams whose rule needs success).

Stdlib only: every DAG file imports the authoring model.
"""

from __future__ import annotations

from collections.abc import Iterable

ALL_SUCCESS = "all_success"
ALL_FAILED = "all_failed"
ALL_DONE = "all_done"
ONE_SUCCESS = "one_success"
ONE_FAILED = "one_failed"
NONE_FAILED = "none_failed"
NONE_SKIPPED = "none_skipped"
ALWAYS = "always"
TRIGGER_RULES = (
    ALL_SUCCESS,
    ALL_DONE,
    ALL_FAILED,
    ONE_SUCCESS,
    ONE_FAILED,
    NONE_FAILED,
    NONE_SKIPPED,
    ALWAYS,
)
DEFAULT_RULE = ALL_SUCCESS

# What an upstream state counts as. `canceled` is a failure (only a clear after a cancel
# ever evaluates a rule against it); any state not listed is not done yet.
FAILED_STATES = frozenset({"failed", "upstream_failed", "canceled"})

# Decisions: wait for more upstreams to end, or the task's next state.
WAIT = "wait"
RUN = "run"
SKIP = "skipped"
UPSTREAM_FAILED = "upstream_failed"


def decide(rule: str | None, upstream: Iterable[str]) -> str:
    """WAIT, RUN, SKIP or UPSTREAM_FAILED for a task whose upstream instances are in the
    states `upstream`. A task without upstreams always runs (whatever its rule), as in Airflow;
    `always` runs at once, without waiting for its upstreams."""
    states = list(upstream)
    rule = rule or DEFAULT_RULE
    if not states or rule == ALWAYS:
        return RUN
    total = len(states)
    success = sum(state == "success" for state in states)
    skipped = sum(state == "skipped" for state in states)
    failed = sum(state in FAILED_STATES for state in states)
    all_done = success + skipped + failed == total
    if rule == ALL_SUCCESS:
        if failed:
            return UPSTREAM_FAILED
        if skipped:
            return SKIP
        return RUN if success == total else WAIT
    if rule == ALL_FAILED:
        if success or skipped:
            return SKIP
        return RUN if failed == total else WAIT
    if rule == ALL_DONE:
        return RUN if all_done else WAIT
    if rule == ONE_SUCCESS:
        if success:
            return RUN
        if not all_done:
            return WAIT
        return SKIP if skipped == total else UPSTREAM_FAILED
    if rule == ONE_FAILED:
        if failed:
            return RUN
        return SKIP if all_done else WAIT
    if rule == NONE_FAILED:
        if failed:
            return UPSTREAM_FAILED
        return RUN if all_done else WAIT
    if rule == NONE_SKIPPED:
        if skipped:
            return SKIP
        return RUN if all_done else WAIT
    raise ValueError(f"unknown trigger rule {rule!r} (known: {', '.join(TRIGGER_RULES)})")
