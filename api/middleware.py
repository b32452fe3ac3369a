"""The request body cap, and the ``Host`` check.

:class:`BodySizeLimit`: a body over ``ApiSettings.max_body_bytes`` is refused with 413.

Uploads have their own, larger cap: a ``POST`` to a path in ``upload_paths`` may send up to
``ApiSettings.max_upload_bytes`` (and a 413 then names that setting).

A declared ``Content-Length`` over the cap is refused before the app reads a byte. A body
without one (chunked) is counted as it arrives; the chunk that crosses the cap raises a 413
``HTTPException`` from ``receive``, which FastAPI passes on to the error handlers (it never
parses a partial body). A pure ASGI middleware, so the SSE stream is not buffered.

:class:`TrustedHosts`: a request whose ``Host`` header is not one of
``ApiSettings.trusted_hosts()`` is refused with 400 before any route runs (Starlette's
``TrustedHostMiddleware`` rule, answered in the API's error body): a page on a DNS-rebound
name (``attacker.example`` resolving to 127.0.0.1) reaches a loopback API with its own name
in ``Host``, so it cannot use a loopback service that has no token. :func:`host_allowed` is
the rule, which the write endpoints' ``Origin`` check shares.

Example:
    >>> async def app(scope, receive, send): ...
    >>> limit = BodySizeLimit(app, max_bytes=1024, upload_bytes=4096, upload_paths={"/up"})
    >>> limit.max_bytes, limit.cap_of({"method": "POST", "path": "/up"})
    (1024, (4096, 'LRTUNE_MAX_UPLOAD_BYTES'))
    >>> loopback = ["127.0.0.1", "[::1]", "localhost"]
    >>> host_allowed("localhost:8000", loopback), host_allowed("attacker.example", loopback)
    (True, False)
    >>> host_allowed("[::1]:8000", loopback), host_allowed("api.corp", ["*.corp"])
    (True, True)
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import parse_host_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lrtune.api.schemas import ErrorBody


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413 (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        upload_bytes: int | None = None,
        upload_paths: Collection[str] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = upload_bytes if upload_bytes is not None else max_bytes
        self.upload_paths = frozenset(upload_paths)

    def cap_of(self, scope: Scope) -> tuple[int, str]:
        """The request's body cap and the setting that sets it."""
        if scope.get("method") == "POST" and scope.get("path") in self.upload_paths:
            return self.upload_bytes, "LRTUNE_MAX_UPLOAD_BYTES"
        return self.max_bytes, "LRTUNE_MAX_BODY_BYTES"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.cap_of(scope)
        declared = _content_length(scope)
        if declared is not None and declared > cap[0]:
            await self._refuse(send, _message(f"declares {declared} bytes", cap))
            return
        await self.app(scope, self._counting(receive, cap), send)

    def _counting(self, receive: Receive, cap: tuple[int, str]) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap[0]:
                    raise HTTPException(413, _message(f"sent more than {cap[0]}", cap))
            return message

        return counted

    async def _refuse(self, send: Send, message: str) -> None:
        await _refuse(send, 413, message)


class TrustedHosts:
    """Refuse a request whose ``Host`` is not in ``allowed`` with 400 (see the module)."""

    def __init__(self, app: ASGIApp, allowed: Collection[str]) -> None:
        self.app = app
        self.allowed = list(allowed)
        self.any = "*" in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host")
        if host_allowed(host, self.allowed):
            await self.app(scope, receive, send)
            return
        message = (
            f"this server does not answer for the host {host!r}: it answers for "
            f"{', '.join(self.allowed)} (LRTUNE_ALLOWED_HOSTS names others)"
        )
        await _refuse(send, 400, message)


def host_allowed(host: str | None, allowed: Collection[str]) -> bool:
    """Whether ``host`` (a ``Host`` header, or an origin's ``host:port``) names one of
    ``allowed``: a name, ``*.suffix`` or ``*``; the port does not count."""
    parsed = parse_host_header(host)
    if parsed is None:
        return False
    name = parsed.host.lower().rstrip(".")
    return any(
        pattern == "*"
        or name == pattern
        or (pattern.startswith("*.") and name.endswith(pattern[1:]))
        for pattern in allowed
    )


async def _refuse(send: Send, status: int, message: str) -> None:
    """Answer ``status`` with the API's error body, and close the connection."""
    body = ErrorBody(detail=message).model_dump_json().encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _message(what: str, cap: tuple[int, str]) -> str:
    limit, setting = cap
    return f"request body too large: it {what}, the limit is {limit} bytes ({setting})"


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
