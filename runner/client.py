"""The worker's only link to pinflow: HTTP to an API server (no database, no git).

Transient failures (server down, 5xx, timeouts) are retried with capped exponential backoff:
a worker waits for the store to come back, and never runs another version instead.
"""

from __future__ import annotations

import logging
import os
import random
import ssl
import time
from typing import Any

import certifi
import httpx

from dagstore.core.errors import PinflowError, VersionUnavailable, error_for
from dagstore.core.protocol import ARCHIVE_DIGEST_HEADER as DIGEST_HEADER
from dagstore.core.protocol import ClaimRequest, FinishRequest, Heartbeat, TaskSpec

log = logging.getLogger("pinflow.worker")


def _tls_context() -> ssl.SSLContext:
    """Loading CA certificates costs ~50-90 ms: done once per worker process at import, so
    every forked work horse inherits it instead of paying it at each task start."""
    cafile = os.environ.get("SSL_CERT_FILE") or certifi.where()
    return ssl.create_default_context(cafile=cafile, capath=os.environ.get("SSL_CERT_DIR"))


_TLS = _tls_context()


class ApiUnavailable(VersionUnavailable):
    """The API server did not answer (down, overloaded, or unreachable)."""


class WorkerClient:
    def __init__(
        self,
        api_url: str,
        token: str | None,
        max_wait: float = 3600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.max_wait = max_wait
        self._http = httpx.Client(
            base_url=f"{self.api_url}/api/v1",
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=httpx.Timeout(30.0, connect=5.0),
            verify=_TLS,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def authorize(self, secret: str) -> None:
        """Send `secret` from now on: a work horse's try credential (`dagstore.access.grants`)."""
        self._http.headers["Authorization"] = f"Bearer {secret}"

    def _once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnavailable(f"API server {self.api_url} unreachable: {exc!r}") from None
        if response.status_code >= 500:
            raise ApiUnavailable(f"API server answered {response.status_code}")
        if response.status_code >= 400:  # 401, 403, 404, 409 keep their kind (and status)
            code = response.status_code
            raise error_for(code, f"{_detail(response)} (HTTP {code})")
        return response

    def request(
        self, method: str, path: str, *, retry: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """One request, retried with backoff while the server is unavailable."""
        deadline = time.monotonic() + self.max_wait
        delay = 0.2
        while True:
            try:
                return self._once(method, path, **kwargs)
            except ApiUnavailable as exc:
                if not retry or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s; retrying in %.1f s", exc.detail, delay)
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 10.0)

    def claim(
        self, ti_id: int, try_number: int, worker: str, attempt: str, callback: int = 0
    ) -> tuple[TaskSpec, float]:
        """The try's spec, and when (time.monotonic()) the request that won was sent: the
        server's heartbeat clock for the try starts no earlier. Retried with the same
        `attempt`, so a claim whose answer was lost is answered again. `callback`: claim
        that attempt at the try's on_failure callback instead (`JobPayload.callback`)."""
        body = ClaimRequest(try_number=try_number, worker=worker, attempt=attempt).model_dump()
        response = self.request("POST", f"{try_path(ti_id, callback)}/claim", json=body)
        sent = time.monotonic() - response.elapsed.total_seconds()
        return TaskSpec.model_validate(response.json()), sent

    def heartbeat(
        self,
        ti_id: int,
        try_number: int,
        timeout: float | None = None,
        log: tuple[int, str] | None = None,
        callback: int = 0,
    ) -> int | None:
        """One try, no retry: the heartbeat thread decides what a failure means. `log` is a
        piece of the task's log and the byte it starts at; returns the bytes the server holds
        (None from a server that does not keep pieces)."""
        offset, piece = log or (0, "")
        body = Heartbeat(try_number=try_number, log_offset=offset, log=piece or None).model_dump()
        path = f"{try_path(ti_id, callback)}/heartbeat"
        kwargs: dict[str, Any] = {"timeout": timeout} if timeout else {}
        answer = self.request("POST", path, json=body, retry=False, **kwargs).json()
        held = answer.get("log_bytes") if isinstance(answer, dict) else None
        return held if isinstance(held, int) else None

    def finish(
        self, ti_id: int, report: FinishRequest, credential: str | None = None, callback: int = 0
    ) -> None:
        """`credential`: the try's, for a client that holds none (a worker sending the report
        its horse handed over, `runner.handover`)."""
        headers = {"Authorization": f"Bearer {credential}"} if credential else None
        body = report.model_dump(mode="json")
        path = f"{try_path(ti_id, callback)}/finish"
        self.request("POST", path, json=body, headers=headers)

    def archive(self, repo: str, sha: str) -> tuple[bytes, str]:
        """The archive's bytes and the sha256 the server vouches for."""
        response = self.request("GET", f"/repos/{repo}/archive/{sha}.tar.gz")
        digest = response.headers.get(DIGEST_HEADER)
        if not digest:
            raise PinflowError(f"archive of {repo}@{sha[:12]} came without {DIGEST_HEADER}")
        return response.content, digest


def try_path(ti_id: int, callback: int = 0) -> str:
    """Where a try's worker endpoints are, or those of an attempt at its on_failure callback
    (`scheduler.callback_api`)."""
    base = f"/task-instances/{ti_id}"
    return f"{base}/callbacks/{callback}" if callback else base


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text or response.reason_phrase
