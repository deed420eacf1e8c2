"""Try credentials: what a task's own process holds instead of the worker's token.

Task code runs in the work horse, so anything the horse holds, the task can read. The worker's
long-lived token therefore never enters it (`runner.agent` keeps it in another process); the
claim answer carries a credential bound to that one try instead. It lets its holder heartbeat
and finish that try and download that try's version, nothing else, and it dies with the try:
the server honours it only while the try it names is the task instance's current, running
try and its hash is the one the claim stored (a repeated claim of the same try stores a new
one). Only the hash is kept, like tokens (`dagstore.access.tokens`).

The check against the try's state belongs to the scheduler, which owns task instances; the
store asks it through `StoreContext.grant_version` (wired by `pinflow.app`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from dagstore.access.tokens import hash_token

GRANT_PREFIX = "pftry_"
_GRANT = re.compile(rf"{GRANT_PREFIX}(\d{{1,18}})_(\d{{1,9}})_[A-Za-z0-9_-]{{32,64}}")


@dataclass(frozen=True)
class TryGrant:
    ti_id: int
    try_number: int
    digest: str  # sha256 of the credential, as the claim stored it


def issue_grant(ti_id: int, try_number: int) -> tuple[str, str]:
    """A new credential for one try, and the hash to store with it."""
    credential = f"{GRANT_PREFIX}{ti_id}_{try_number}_{secrets.token_urlsafe(32)}"
    return credential, hash_token(credential)


def parse_grant(secret: str) -> TryGrant | None:
    """The try a credential names, or None when `secret` is not one (a token, say)."""
    match = _GRANT.fullmatch(secret)
    if match is None:
        return None
    return TryGrant(int(match[1]), int(match[2]), hash_token(secret))


# (repo, sha) of the version a live grant may read, or None when the grant is not live.
GrantVersion = Callable[[Session, TryGrant], "tuple[str, str] | None"]
