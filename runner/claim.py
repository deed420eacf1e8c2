"""Claiming a try in the RQ worker, before the fork, through the token agent.

The work horse must never hold the worker's token (`runner.agent`), so it cannot claim: the
RQ worker claims each job's try just before forking and the horse inherits the answer, whose
credential is good for that try alone. A --no-fork worker claims the same way in-process.

Whatever the claim's outcome, the job is still forked and run: a try someone else owns is
"dropped" by the horse as before, and an error (the API unreachable past the client's
patience, say) is raised in the horse, where RQ records it as the job's failure instead of
the worker's loop dying of it.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from dagstore.core.errors import Conflict, Forbidden, Unauthorized
from dagstore.core.protocol import JobPayload, TaskSpec
from runner.agent import AgentClient

log = logging.getLogger("pinflow.worker")


class Claimer(Protocol):
    def claim(
        self, ti_id: int, try_number: int, worker: str, attempt: str, callback: int = 0
    ) -> tuple[TaskSpec, float]: ...


@dataclass(frozen=True)
class Claimed:
    spec: TaskSpec
    sent: float  # time.monotonic() the winning request was sent: the heartbeat clock's start


@dataclass(frozen=True)
class Dropped:
    why: str


def claim_try(job: JobPayload, claimer: Claimer, worker: str) -> Claimed | Dropped:
    attempt = secrets.token_hex(16)  # the same on every retry of this claim
    try:
        spec, sent = claimer.claim(
            job.ti_id, job.try_number, worker, attempt, callback=job.callback
        )
    except Conflict as exc:  # someone else owns this try, or it is stale: not ours to run
        return Dropped(exc.detail)
    return Claimed(spec, sent)


def token_refused(outcome: object) -> bool:
    """Whether a claim failed because the API server refuses the worker's own token (401,
    403): no try of any task can be claimed with it, so the job must go back, not be run and
    failed."""
    return isinstance(outcome, (Unauthorized, Forbidden))


class PendingClaims:
    """Claims made in the RQ worker for the job it is about to run, by (ti_id, try)."""

    def __init__(self) -> None:
        self.agent: AgentClient | None = None
        self._pending: dict[tuple[int, int], Claimed | Dropped | Exception] = {}

    def enable(self, agent: AgentClient) -> None:
        self.agent = agent

    def forget_in_child(self) -> None:
        """In a forked horse, before any task code: no way back to the token agent."""
        if self.agent is not None and self.agent.forget_in_child():
            self.agent = None

    def drop_all(self) -> None:
        """In a forked process that must claim nothing and hold no try's credential (a warm
        fork server, `runner.forkserver`): no agent, no claims."""
        self.forget_in_child()
        self._pending.clear()

    def hand(self, claimed: Claimed) -> None:
        """In a horse forked by a warm fork server: the claim its RQ worker made and sent."""
        self._pending = {(claimed.spec.ti_id, claimed.spec.try_number): claimed}

    def prepare(self, payload: Any, worker: str) -> Claimed | Dropped | Exception | None:
        """In the RQ worker, before the fork: the claim's outcome (None when nothing was
        claimed: no agent, or a malformed payload). Never raises."""
        self._pending.clear()  # one job at a time: anything left is a job that never ran
        if self.agent is None:
            return None
        try:
            job = JobPayload.model_validate(payload)
        except ValueError:
            return None  # the horse reports the malformed payload
        try:
            outcome: Claimed | Dropped | Exception = claim_try(job, self.agent, worker)
        except Exception as exc:  # noqa: BLE001 - reported by the horse, as the job's failure
            outcome = exc
        self._pending[(job.ti_id, job.try_number)] = outcome
        return outcome

    def claimed(self, job: JobPayload) -> Claimed | Dropped | Exception | None:
        """In the worker, after the horse ran: the claim it made for this job, if any."""
        return self._pending.get((job.ti_id, job.try_number))

    def take(self, job: JobPayload) -> Claimed | Dropped:
        """In the horse: the claim its RQ worker made for this job."""
        outcome = self._pending.pop((job.ti_id, job.try_number), None)
        if outcome is None:
            raise RuntimeError(
                "this job was not claimed: pinflow's tasks run only in `pinflow worker`, "
                "whose token agent claims each try"
            )
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


CLAIMS = PendingClaims()
