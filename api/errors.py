"""How errors leave the API: the one place that maps lrtune's exceptions to HTTP statuses.

Every error response has the body :class:`~lrtune.api.schemas.ErrorBody`: a one-line
``detail`` and, for a 422, the invalid fields with their paths (``["body", "model",
"name"]``). The mapping, by class (:mod:`lrtune.exceptions`):

- :class:`FieldInvalid` (raised by routes that check a field themselves, e.g. a model name
  against the registry) and pydantic's request validation errors: 422 with the field paths;
- :class:`~lrtune.exceptions.NotFoundError`: 404 (tested before its base class);
- :class:`~lrtune.exceptions.InvalidInputError`: 422;
- :class:`~lrtune.exceptions.ConflictError`: 409; so is its
  :class:`~lrtune.exceptions.UnreadableRecordError` (a job stored before lrtune refused what
  it holds: the request is fine, the stored row cannot be served);
- :class:`~lrtune.exceptions.QueueFullError`: 429 with its ``Retry-After``;
- :class:`~lrtune.exceptions.StorageUnavailableError`: 503 with ``Retry-After``;
- Starlette's ``HTTPException`` (401, 413, 429, ...): its status, in the same body; but a
  JSON body that is not UTF-8 (FastAPI's bare 400) is a 422 like any other invalid body, and
  so is a multipart body Starlette cannot parse; a 405's ``Allow`` lists every method of the
  path (Starlette's names only the first route's, and each method is a route of its own).

No response carries a traceback; anything else escaping a route is a bug, answered by
Starlette's plain 500 and logged with its traceback on the server only.

Example:
    >>> from lrtune.exceptions import ConflictError, NotFoundError
    >>> status_of(NotFoundError("no job 'x'")), status_of(ConflictError("finished"))
    (404, 409)
    >>> error = FieldInvalid(["body", "model", "name"], "unknown model 'resnet'", "unknown_name")
    >>> status_of(error), body_of(error).errors[0].loc
    (422, ['body', 'model', 'name'])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount

from lrtune.api.schemas import ErrorBody, FieldError
from lrtune.exceptions import (
    ConflictError,
    InvalidInputError,
    LRTuneError,
    NotFoundError,
    QueueFullError,
    StorageUnavailableError,
    describe_validation_error,
)

RETRY_AFTER_S = 5
HTTP_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")
"""What a 405's ``Allow`` may list."""
"""What a 503 tells the client to wait before retrying."""

_logger = logging.getLogger("lrtune.api")


class FieldInvalid(InvalidInputError):
    """A request field that pydantic accepted but a route refused (e.g. an unknown model name).

    ``loc`` is the field's path as pydantic writes it (``["body", "model", "name"]``).
    """

    def __init__(self, loc: Sequence[str | int], message: str, kind: str = "value_error") -> None:
        super().__init__(message)
        self.loc = list(loc)
        self.kind = kind


def status_of(exc: LRTuneError) -> int:
    """The HTTP status an lrtune exception maps to (see the module)."""
    if isinstance(exc, FieldInvalid):
        return 422
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, InvalidInputError):
        return 422
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, QueueFullError):
        return 429
    if isinstance(exc, StorageUnavailableError):
        return 503
    return 500


def body_of(exc: LRTuneError) -> ErrorBody:
    """The error body of an lrtune exception."""
    errors = []
    if isinstance(exc, FieldInvalid):
        errors = [FieldError(loc=exc.loc, msg=str(exc), type=exc.kind)]
    return ErrorBody(detail=str(exc), errors=errors)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers: lrtune's exceptions, request validation, HTTP exceptions."""
    app.add_exception_handler(LRTuneError, _lrtune_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)


async def _lrtune_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LRTuneError)
    status = status_of(exc)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    if isinstance(exc, QueueFullError):
        headers = {"Retry-After": str(exc.retry_after_s)}
    if status >= 500:
        _logger.warning(
            "path=%s event=error status=%d kind=%s error=%s",
            request.url.path,
            status,
            type(exc).__name__,
            exc,
        )
    return _response(status, body_of(exc), headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        FieldError(loc=list(error["loc"]), msg=error["msg"], type=error["type"])
        for error in exc.errors()
    ]
    return _response(422, ErrorBody(detail=describe_validation_error(exc), errors=errors))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        return _response(422, _undecodable_body(exc.__cause__))
    if exc.status_code == 400:  # lrtune raises no 400: Starlette's unparsable form body is one
        return _response(422, _unparsable_body(str(exc.detail)))
    methods = allowed_methods(request) if exc.status_code == 405 else []
    if methods:
        detail = f"{request.method} is not allowed on {request.url.path}: use {', '.join(methods)}"
        return _response(405, ErrorBody(detail=detail), {"Allow": ", ".join(methods)})
    return _response(exc.status_code, ErrorBody(detail=str(exc.detail)), exc.headers)


def allowed_methods(request: Request) -> list[str]:
    """The methods a route of the app (not a mounted app, which takes any) answers on the
    request's path, by asking each route as the router does."""
    routes = [route for route in request.app.router.routes if not isinstance(route, Mount)]
    return [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


def _undecodable_body(error: UnicodeDecodeError) -> ErrorBody:
    """FastAPI answers a JSON body that is not UTF-8 with a bare 400; it is an invalid body."""
    message = f"the body is not UTF-8 text (byte {error.start}): send JSON encoded as UTF-8"
    return ErrorBody(
        detail=message, errors=[FieldError(loc=["body"], msg=message, type="json_invalid")]
    )


def _unparsable_body(reason: str) -> ErrorBody:
    """Starlette answers a form body it cannot parse with a bare 400; it is an invalid body."""
    message = (
        f"the body could not be parsed ({reason.rstrip('.')}): send a multipart/form-data "
        "body as an HTTP client builds it, or JSON where the endpoint takes JSON"
    )
    return ErrorBody(
        detail=message, errors=[FieldError(loc=["body"], msg=message, type="body_invalid")]
    )


def _response(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)
