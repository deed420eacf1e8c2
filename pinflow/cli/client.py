"""The API client the CLI uses: one place that turns HTTP failures into pinflow errors."""

from __future__ import annotations

import time
from typing import Any

import httpx

from dagstore.core import errors
from dagstore.core.settings import Settings

UNAVAILABLE_PATIENCE = 60.0  # seconds a read waits out a 503 (a database failing over)


class ApiClient:
    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        if not settings.token:
            raise errors.Unauthorized(
                "no token: set PINFLOW_TOKEN or pass --token (create one with "
                "`pinflow token create --scope admin`)"
            )
        self.base = settings.api_url
        self._http = httpx.Client(
            base_url=f"{settings.api_url}/api/v1",
            headers={"Authorization": f"Bearer {settings.token}"},
            timeout=timeout,
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The answer's JSON, or its text."""
        response = self.response(method, path, **kwargs)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def response(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer itself (for its headers); 4xx and 5xx raise as pinflow errors. A read
        answered 503 (the database is failing over or restarting) is asked again after the
        server's Retry-After, for up to a minute: `pinflow trigger --wait` rides a failover
        out. A write is not repeated: it may have landed."""
        deadline = time.monotonic() + UNAVAILABLE_PATIENCE
        while True:
            response = self._once(method, path, **kwargs)
            if response.status_code != 503 or method != "GET" or time.monotonic() > deadline:
                break
            time.sleep(_retry_after(response))
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text or response.reason_phrase
            raise errors.error_for(response.status_code, f"{detail} (HTTP {response.status_code})")
        return response

    def _once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise errors.VersionUnavailable(
                f"cannot reach the pinflow API at {self.base} ({exc.__class__.__name__}); "
                "is `pinflow server` running? (PINFLOW_API_URL)"
            ) from None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("Retry-After", "1")), 0.1), 10.0)
    except ValueError:
        return 1.0
