"""FastAPI dependencies shared by every router: the store context and token scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from dagstore.context import StoreContext
from dagstore.models import Token

_bearer = HTTPBearer(auto_error=False, description="A pinflow token (`pinflow token create`)")


def get_store(request: Request) -> StoreContext:
    return request.app.state.store


StoreDep = Annotated[StoreContext, Depends(get_store)]


def require(scope: str) -> Callable[..., Token]:
    """A dependency that admits a request only with a live token granting `scope`."""

    def check(
        store: StoreDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Token:
        secret = credentials.credentials if credentials else None
        return store.tokens.authenticate(store.db, secret, scope)

    return check


ReadToken = Annotated[Token, Depends(require("read"))]
PushToken = Annotated[Token, Depends(require("push"))]
TriggerToken = Annotated[Token, Depends(require("trigger"))]
WorkerToken = Annotated[Token, Depends(require("worker"))]
AdminToken = Annotated[Token, Depends(require("admin"))]
