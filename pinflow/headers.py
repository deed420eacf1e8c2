"""Headers on every answer of the API server: what a browser must not do with pinflow's pages.

- `X-Frame-Options: DENY` and CSP `frame-ancestors 'none'`: no page of pinflow may be framed
  by another site (clickjacking: a pause or cancel button under a decoy);
- `X-Content-Type-Options: nosniff`: a task's log, a DAG file or an archive is never taken for
  HTML or script because of what it holds;
- `Referrer-Policy: same-origin`: links out of the UI do not tell other sites which run,
  DAG or diff was open.

A plain ASGI wrapper (no per-request task or body copy, unlike Starlette's BaseHTTPMiddleware),
outermost, so the archive fast path and the git endpoint carry them too. A header a route set
itself is kept.
"""

from __future__ import annotations

from typing import Any

HEADERS = (
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


class SecurityHeaders:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers.extend((n, v) for n, v in HEADERS if n not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
