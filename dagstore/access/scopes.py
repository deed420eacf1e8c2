"""Token scopes and how they nest (import-cheap: the CLI lists them in its help).

`admin` implies every scope; `push` implies `read` (whoever may publish a version may fetch it
back), and so does `worker` (a worker fetches the versions it runs).
"""

from __future__ import annotations

SCOPES = ("read", "push", "trigger", "worker", "admin")
IMPLIED: dict[str, frozenset[str]] = {
    "read": frozenset({"read"}),
    "push": frozenset({"push", "read"}),
    "trigger": frozenset({"trigger"}),
    "worker": frozenset({"worker", "read"}),
    "admin": frozenset(SCOPES),
}


def grants(scope: str, needed: str) -> bool:
    return needed in IMPLIED.get(scope, frozenset())
