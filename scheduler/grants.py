"""Whether a try credential (`dagstore.access.grants`) is live: the scheduler's side of the check.

A credential works only for the try it names while that try is the task instance's current
one and its hash is the stored one; the conditional updates of heartbeat and finish refuse
anything for a try that is no longer running, so a credential ends with its try.
"""

from __future__ import annotations

import hmac

from sqlalchemy import select
from sqlalchemy.orm import Session

from dagstore.access.grants import TryGrant
from dagstore.core.errors import Forbidden
from dagstore.core.models import Token
from scheduler.callbacks import callback_version, version_select
from scheduler.models import TaskInstance


def granted_version(session: Session, grant: TryGrant) -> tuple[str, str] | None:
    """(repo, sha) the grant's try runs, while that try is running under this credential."""
    row = session.execute(
        version_select().where(
            TaskInstance.id == grant.ti_id,
            TaskInstance.try_number == grant.try_number,
            TaskInstance.state == "running",
            TaskInstance.grant_hash == grant.digest,
        )
    ).one_or_none()
    if row is None:  # or the failed try's on_failure callback, running under it
        return callback_version(session, grant)
    return (row.name, row.sha)


def try_digest(who: Token | TryGrant, ti_id: int, try_number: int) -> str | None:
    """The credential hash a worker's request must match, or None for a worker token, which
    may act on any try. A credential naming another try is refused here, before any query;
    whether it is the live one is part of the conditional update that it guards (one
    statement instead of a read and a write), and `explain_refusal` says why it failed."""
    if not isinstance(who, TryGrant):
        return None
    if (who.ti_id, who.try_number) != (ti_id, try_number):
        raise Forbidden(
            f"this credential is for try {who.try_number} of task instance {who.ti_id} only"
        )
    return who.digest


def explain_refusal(session: Session, digest: str | None, ti_id: int, try_number: int) -> None:
    """After a conditional update refused a credential's request: 403 if the credential is
    not this try's (never issued, or replaced by a repeated claim). Otherwise the try itself
    is the reason (retried since, ended, gone), which the caller answers with 409 or 404, as
    it does a late worker: its task is stopped at once."""
    if digest is None:
        return
    current = session.execute(
        select(TaskInstance.try_number, TaskInstance.grant_hash).where(TaskInstance.id == ti_id)
    ).one_or_none()
    if current is None or current.try_number != try_number:
        return
    if current.grant_hash is None or not hmac.compare_digest(current.grant_hash, digest):
        raise Forbidden("this try credential was never issued or has been replaced")
