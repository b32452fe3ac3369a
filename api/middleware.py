"""The request body cap: a body over ``Settings.max_body_bytes`` is refused with 413.

A declared ``Content-Length`` over the cap is refused before the app reads a byte. A body
without one (chunked) is counted as it arrives; the chunk that crosses the cap raises a 413
``HTTPException`` from ``receive``, which FastAPI passes on to the error handlers (it never
parses a partial body). A pure ASGI middleware, so the SSE stream is not buffered.

Example:
    >>> async def app(scope, receive, send): ...
    >>> BodySizeLimit(app, max_bytes=1024).max_bytes
    1024
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrtune.api.schemas import ErrorBody


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413 (see the module)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, f"declares {declared} bytes")
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._message(f"sent more than {self.max_bytes}"))
            return message

        return counted

    def _message(self, what: str) -> str:
        return (
            f"request body too large: it {what}, the limit is {self.max_bytes} bytes "
            "(LRTUNE_MAX_BODY_BYTES)"
        )

    async def _refuse(self, send: Send, what: str) -> None:
        body = ErrorBody(detail=self._message(what)).model_dump_json().encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
