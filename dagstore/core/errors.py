"""The one exception tree of pinflow.

    PinflowError
     ├── BadRequest          400  the caller sent something malformed
     ├── Unauthorized        401  no token, or a token we do not know
     ├── Forbidden           403  a known token without the needed scope
     ├── NotFound            404  unknown repo, ref, sha, DAG, run
     ├── Conflict            409  the state changed under the caller
     ├── DagDefinitionError  400  a DAG file defines something invalid
     └── VersionUnavailable  503  a version cannot be fetched right now

Library errors (dulwich, SQLAlchemy, redis, httpx) are translated into these at the edge, so
the HTTP layer maps them to statuses in one handler and the CLI to exit codes in one place.
This module must stay import-cheap: DAG files import it through `pinflow`.
"""

from __future__ import annotations


class PinflowError(Exception):
    """Root of every error pinflow raises on purpose."""

    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(PinflowError):
    status_code = 400


class Unauthorized(PinflowError):
    status_code = 401


class Forbidden(PinflowError):
    status_code = 403


class NotFound(PinflowError):
    status_code = 404


class Conflict(PinflowError):
    status_code = 409


class DagDefinitionError(PinflowError):
    status_code = 400


class VersionUnavailable(PinflowError):
    status_code = 503


_BY_STATUS: dict[int, type[PinflowError]] = {
    cls.status_code: cls for cls in (BadRequest, Unauthorized, Forbidden, NotFound, Conflict)
}


def error_for(status: int, detail: str) -> PinflowError:
    """The error an answer with this status stands for, on the far side of a wire."""
    return _BY_STATUS.get(status, PinflowError)(detail)
