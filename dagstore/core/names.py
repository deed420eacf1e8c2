"""What a repository name and a full sha may look like: the checks the store and workers share.

A module of its own, importing nothing heavy: `pinflow worker` checks every name and sha it is
asked to fetch, and each module its parent imports makes every forked work horse's fork
dearer (page tables to copy, pages to fault in); dulwich and SQLAlchemy were ~20 MB of a worker
that never opens a git repository or a database.
"""

from __future__ import annotations

import re

from dagstore.core.errors import BadRequest

REPO_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
FULL_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def validate_repo_name(name: str) -> str:
    if not REPO_NAME_RE.match(name) or name.endswith((".git", ".lock", ".")) or ".." in name:
        raise BadRequest(
            f"invalid repository name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 100 characters, not ending in .git)"
        )
    return name


def validate_full_sha(sha: str) -> str:
    if not FULL_SHA_RE.match(sha):
        raise BadRequest(f"invalid sha {sha!r}: a full 40-character lowercase hex sha is required")
    return sha
