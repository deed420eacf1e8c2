"""Verified tokens, remembered for a few seconds by each server process.

Every worker request (claim, heartbeat, finish, archive download) and every git request
carries a token; looking it up is a read transaction, ~12% of the API server's CPU under a
busy fan-out (BENCHMARKS.md). Remembering a verified token for `ttl` seconds removes that,
at a price stated plainly: a revoked token keeps working for up to `ttl` seconds on a server
that saw it just before (`PINFLOW_TOKEN_CACHE_SECONDS`, default 5; 0 turns the cache off).
Unknown and revoked tokens are never remembered, and the scope is checked on every request.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from dagstore.access.tokens import check_scope, find_token, hash_token, note_use, use_is_stale
from dagstore.core.db import Database, db_time
from dagstore.core.errors import Unauthorized
from dagstore.core.models import Token

MAX_ENTRIES = 10_000


class TokenCache:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Token]] = {}
        self._lock = threading.Lock()

    def authenticate(self, db: Database, secret: str | None, needed: str) -> Token:
        """The token behind `secret` if it may act with scope `needed`; raises 401/403."""
        if not secret:
            raise Unauthorized("missing token")
        key = hash_token(secret)
        now = time.monotonic()
        token = self._live(key, now)
        if token is None:
            with db.read() as session:
                token = find_token(session, key)
                session.expunge(token)  # kept beyond the session: plain, read-only values
            if use_is_stale(token, datetime.now(UTC)):
                with db.write() as session:
                    note_use(session, token, db_time(session))
            if self.ttl > 0:
                self._remember(key, now + self.ttl, token)
        check_scope(token, needed)
        return token

    def cached(self, secret: str) -> Token | None:
        """The token behind `secret` if this process verified it within `ttl`, without touching
        the database: what a request path that must not block may rely on. None means "not
        known here", never "refused": the caller then asks `authenticate`."""
        return self._live(hash_token(secret), time.monotonic())

    def trusted_for(self, secret: str) -> float:
        """Seconds this process will go on trusting `secret` without a lookup (0: none).
        A cache in front of us (deploy/nginx.conf) may keep our answer that long and no longer,
        so a revoked token stops working there when it stops working here."""
        entry = self._entries.get(hash_token(secret))
        return max(0.0, entry[0] - time.monotonic()) if entry is not None else 0.0

    def _live(self, key: str, now: float) -> Token | None:
        entry = self._entries.get(key)
        return entry[1] if entry is not None and entry[0] > now else None

    def _remember(self, key: str, until: float, token: Token) -> None:
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()  # many tokens in a few seconds: start over, stay small
            self._entries[key] = (until, token)
