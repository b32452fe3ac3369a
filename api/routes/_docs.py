"""What the routes tell OpenAPI about their errors: each status with the one error body.

Example:
    >>> sorted(error_responses(404, 422))
    [404, 422]
    >>> error_responses(404)[404]["model"].__name__
    'ErrorBody'
"""

from __future__ import annotations

from typing import Any

from lrtune.api.schemas import ErrorBody

_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    401: (
        "The endpoint needs `Authorization: Bearer <LRTUNE_API_TOKEN>`",
        {"detail": "the bearer token is not this server's LRTUNE_API_TOKEN", "errors": []},
    ),
    404: (
        "No such job (or no result yet)",
        {"detail": "no job 'x' in the job store", "errors": []},
    ),
    409: (
        "The job's state forbids the request",
        {
            "detail": "job 1b0c... is already succeeded: only an unfinished job can be cancelled",
            "errors": [],
        },
    ),
    413: (
        "The request body is over LRTUNE_MAX_BODY_BYTES",
        {
            "detail": "request body too large: it declares 2000000 bytes, the limit is 1048576 "
            "bytes (LRTUNE_MAX_BODY_BYTES)",
            "errors": [],
        },
    ),
    422: (
        "A field is invalid: `errors` says which, with its path",
        {
            "detail": "unknown model 'resnet'; available: cnn, logreg, mlp",
            "errors": [
                {
                    "loc": ["body", "model", "name"],
                    "msg": "unknown model 'resnet'; available: cnn, logreg, mlp",
                    "type": "unknown_name",
                }
            ],
        },
    ),
    429: (
        "Too many jobs are queued (LRTUNE_MAX_QUEUED_JOBS); retry later",
        {
            "detail": "1000 jobs are queued, the limit (LRTUNE_MAX_QUEUED_JOBS): retry later",
            "errors": [],
        },
    ),
    503: (
        "The job store is unreachable or its schema is out of date; retry later",
        {
            "detail": "job store unavailable at postgresql+psycopg://lrtune:***@db/lrtune: "
            "connection refused",
            "errors": [],
        },
    ),
}


NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Unchanged since the `ETag` sent in `If-None-Match`"}
}
"""The ``responses`` entry of a route that answers ``If-None-Match`` (:data:`IfNoneMatch`)."""

IF_NONE_MATCH_PARAMETER: dict[str, Any] = {
    "name": "if-none-match",
    "in": "header",
    "required": False,
    "schema": {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": "the `ETag` of the copy the client has",
        "title": "If-None-Match",
    },
    "description": "the `ETag` of the copy the client has",
}
"""The OpenAPI entry :data:`IfNoneMatch` gives a route, for a route that reads the header
itself (``openapi_extra``), as ``GET /v1/jobs/{id}`` does to skip FastAPI's parsing."""


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each with an example body."""
    return {
        status: {
            "model": ErrorBody,
            "description": _ERRORS[status][0],
            "content": {"application/json": {"example": _ERRORS[status][1]}},
        }
        for status in statuses
    }
