"""FastAPI dependencies shared by every router: the store context and token scopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from dagstore.access.grants import TryGrant, parse_grant
from dagstore.access.scopes import grants
from dagstore.core.errors import Forbidden
from dagstore.core.models import Token
from dagstore.store import StoreContext

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


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _secret_and_grant(credentials: Credentials) -> tuple[str | None, TryGrant | None]:
    secret = credentials.credentials if credentials else None
    return secret, parse_grant(secret) if secret else None


def worker_or_try(store: StoreDep, credentials: Credentials) -> Token | TryGrant:
    """A worker token, or a try credential (the endpoint checks it names the try it acts on:
    `scheduler.grants.try_digest`)."""
    secret, grant = _secret_and_grant(credentials)
    if grant is not None:
        return grant
    return store.tokens.authenticate(store.db, secret, "worker")


def version_reader(
    repo: str, sha: str, store: StoreDep, credentials: Credentials
) -> Token | TryGrant:
    """A read token, or the credential of a running try of exactly this version."""
    secret, grant = _secret_and_grant(credentials)
    if grant is None:
        return store.tokens.authenticate(store.db, secret, "read")
    granted = None
    if store.grant_version is not None:
        with store.db.read() as session:
            granted = store.grant_version(session, grant)
    if granted != (repo, sha):
        raise Forbidden(
            f"this try credential does not grant {repo}@{sha[:12]} (or its try has ended)"
        )
    return grant


async def bearer_secret(request: HTTPConnection) -> str | None:
    """The bearer secret of a request, read by the very dependency every route uses."""
    credentials = await _bearer(request)
    return credentials.credentials if credentials else None


def known_version_reader(store: StoreContext, secret: str | None) -> bool:
    """Whether `version_reader` admits `secret` for every version, decided from this process's
    memory alone: a read token verified within the token cache's TTL. False means "not known
    here", never "refused": the caller asks `version_reader`, which decides (and refuses)."""
    if not secret or parse_grant(secret) is not None:  # try credentials: checked per request
        return False
    token = store.tokens.cached(secret)
    return token is not None and grants(token.scope, "read")


ReadToken = Annotated[Token, Depends(require("read"))]
PushToken = Annotated[Token, Depends(require("push"))]
TriggerToken = Annotated[Token, Depends(require("trigger"))]
WorkerToken = Annotated[Token, Depends(require("worker"))]
AdminToken = Annotated[Token, Depends(require("admin"))]
WorkerOrTry = Annotated[Token | TryGrant, Depends(worker_or_try)]
VersionReader = Annotated[Token | TryGrant, Depends(version_reader)]
