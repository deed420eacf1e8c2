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
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dagstore.access.scopes import grants
from dagstore.api.auth import StoreDep
from dagstore.core.errors import Forbidden, PinflowError
from dagstore.core.models import Token

COOKIE = "pinflow_session"


class LoginRequired(Exception):
    """No valid session: the page sends the browser to the login form."""


@dataclass(frozen=True)
class Viewer:
    token: Token
    secret: str

    def may(self, scope: str) -> bool:
        """Whether this session's token grants `scope` (pages hide what it may not do)."""
        return grants(self.token.scope, scope)

    @property
    def csrf(self) -> str:
        return csrf_for(self.secret)

    def check(self, csrf: str, scope: str = "trigger") -> None:
        if not hmac.compare_digest(csrf or "", self.csrf):
            raise Forbidden("the form is stale or not from this site (CSRF check failed)")
        if not self.may(scope):
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


def on_login_required(request: Request, _: LoginRequired) -> Response:
    """Pages send the browser to the login form; fragments (htmx) get a 401 it shows."""
    if request.headers.get("HX-Request"):
        return HTMLResponse("session ended: log in again", status_code=401)
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
