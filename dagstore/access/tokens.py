"""API tokens: what a bearer may do.

Only a hash of each token is stored; how scopes nest is in `dagstore.access.scopes`.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dagstore.access.scopes import SCOPES, grants
from dagstore.core.db import as_utc, db_now
from dagstore.core.errors import BadRequest, Forbidden, NotFound, Unauthorized
from dagstore.core.models import Token

TOKEN_PREFIX = "pf_"
LAST_USED_PRECISION = timedelta(minutes=5)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_token(session: Session, scope: str, name: str = "") -> str:
    """Store a new token's hash and return the secret: the only time it exists in clear."""
    return issue_token(session, scope, name)[1]


def issue_token(session: Session, scope: str, name: str = "") -> tuple[int, str]:
    """As `create_token`, with the new token's id (what `token revoke` takes)."""
    check_scope_name(scope)
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = Token(name=name, scope=scope, token_hash=hash_token(secret))
    session.add(token)
    session.flush()
    return token.id, secret


def check_scope_name(scope: str) -> str:
    if scope not in SCOPES:
        raise BadRequest(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    return scope


def revoke_token(session: Session, token_id: int) -> None:
    result = session.execute(
        update(Token)
        .where(Token.id == token_id, Token.revoked_at.is_(None))
        .values(revoked_at=db_now())
    )
    if result.rowcount == 0:
        raise NotFound(f"no active token with id {token_id}")


def authenticate(session: Session, secret: str | None, needed: str) -> Token:
    """The token behind `secret` if it may act with scope `needed`; raises 401/403 otherwise."""
    if not secret:
        raise Unauthorized("missing token")
    token = find_token(session, hash_token(secret))
    check_scope(token, needed)
    return token


def find_token(session: Session, token_hash: str) -> Token:
    """The live token with this hash; 401 when there is none (unknown or revoked)."""
    token = session.scalar(
        select(Token).where(Token.token_hash == token_hash, Token.revoked_at.is_(None))
    )
    if token is None:
        raise Unauthorized("invalid or revoked token")
    return token


def is_live(session: Session, secret: str) -> bool:
    """Whether `secret` is a token this database accepts (known, not revoked)."""
    try:
        find_token(session, hash_token(secret))
    except Unauthorized:
        return False
    return True


def use_is_stale(token: Token, now: datetime) -> bool:
    """Whether `token`'s last use is unknown or older than LAST_USED_PRECISION: only then is
    it written again, one small write per token every few minutes, not per request."""
    last = as_utc(token.last_used_at)
    return last is None or now - last >= LAST_USED_PRECISION


def note_use(session: Session, token: Token, now: datetime) -> None:
    """Record that `token` was used now (if no other server did within the precision)."""
    stale = Token.last_used_at.is_(None) | (Token.last_used_at < now - LAST_USED_PRECISION)
    session.execute(
        update(Token)
        .where(Token.id == token.id, stale)
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )


def list_tokens(session: Session) -> list[dict[str, Any]]:
    """Every token, newest first, without its secret (only a hash exists)."""
    rows = session.scalars(select(Token).order_by(Token.id.desc())).all()
    return [
        {
            "id": t.id,
            "name": t.name,
            "scope": t.scope,
            "created_at": t.created_at,
            "last_used_at": t.last_used_at,
            "revoked_at": t.revoked_at,
        }
        for t in rows
    ]


def check_scope(token: Token, needed: str) -> None:
    if not grants(token.scope, needed):
        raise Forbidden(f"token scope {token.scope!r} does not allow {needed!r}")
