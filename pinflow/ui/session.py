"""Logging in to the UI with a token: an HttpOnly, SameSite=Strict cookie, and CSRF tokens.

The cookie holds the token itself, so every server behind a load balancer accepts it with
no session store, and revoking the token logs the browser out within the token cache's time.
Actions are POST forms carrying a CSRF token derived from the session's token (HMAC), which a
page of another site can neither read nor compute; SameSite=Strict keeps the cookie off
cross-site requests in the first place.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from dagstore.auth import StoreDep
from dagstore.errors import Forbidden, PinflowError
from dagstore.models import Token
from dagstore.scopes import grants

COOKIE = "pinflow_session"


class LoginRequired(Exception):
    """No valid session: the page sends the browser to the login form."""


@dataclass(frozen=True)
class Viewer:
    token: Token
    secret: str

    @property
    def can_act(self) -> bool:
        """Whether this session may trigger, clear and cancel (the API's trigger scope)."""
        return grants(self.token.scope, "trigger")

    @property
    def csrf(self) -> str:
        return csrf_for(self.secret)

    def check(self, csrf: str, scope: str = "trigger") -> None:
        if not hmac.compare_digest(csrf or "", self.csrf):
            raise Forbidden("the form is stale or not from this site (CSRF check failed)")
        if not grants(self.token.scope, scope):
            raise Forbidden(f"token scope {self.token.scope!r} does not allow {scope!r}")


def csrf_for(secret: str) -> str:
    return hmac.new(secret.encode(), b"pinflow-ui-csrf", hashlib.sha256).hexdigest()


def viewer(request: Request, store: StoreDep) -> Viewer:
    secret = request.cookies.get(COOKIE)
    if not secret:
        raise LoginRequired()
    try:
        token = store.tokens.authenticate(store.db, secret, "read")
    except PinflowError:
        raise LoginRequired() from None
    return Viewer(token, secret)


ViewerDep = Annotated[Viewer, Depends(viewer)]
