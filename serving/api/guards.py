"""ASGI guards that run before any endpoint: bearer-key authentication and the body size limit."""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

EXEMPT_FROM_AUTH = frozenset({"/healthz", "/readyz"})
EXEMPT_PREFIXES = ("/admin/",)  # the admin API checks its own key (admin_key)


async def _send_json(send: Send, status: int, body: Mapping[str, object],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": payload})


class GuardMiddleware:
    """401 without ``Authorization: Bearer <api_key>`` (when a key is set; health probes and the
    admin API, which has its own key, exempt);
    413 for bodies over ``max_body_bytes`` (by Content-Length, or counted while streaming in)."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    def _authorised(self, scope: Scope) -> bool:
        path = scope["path"]
        if self.expected is None or path in EXEMPT_FROM_AUTH or path.startswith(EXEMPT_PREFIXES):
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                return hmac.compare_digest(value.strip(), self.expected)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorised(scope):
            await _send_json(send, 401, {"detail": "missing or invalid API key: send "
                                                   "'Authorization: Bearer <key>'"},
                             [(b"www-authenticate", b"Bearer")])
            return
        limit = self.max_body_bytes
        too_large = {"detail": f"request body is larger than the limit of {limit} bytes (max_body_bytes)"}
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                    return
                if declared > limit:
                    await _send_json(send, 413, too_large)
                    return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(status_code=413, detail=too_large["detail"])
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except HTTPException as exc:
            if exc.status_code != 413 or started:
                raise
            await _send_json(send, 413, too_large)
