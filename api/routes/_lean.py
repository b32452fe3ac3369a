"""A FastAPI route's endpoint served from a plain Starlette route: for the most-polled path only.

``GET /v1/jobs/{id}`` (the dashboard, ``Client.wait`` and every poller) does a few
microseconds of work per request: the read token, one indexed read of the row's version and
the body kept for it. FastAPI's handling around that work (routing through the included
routers, its per-request exit stacks, dependency solving and the id's validation) took most
of the request's time, so the route served 39% of a bare Starlette endpoint's throughput
(``docs/benchmark_api.md``). :func:`lean_route` serves the *same* endpoint, declared once
with FastAPI, from a Starlette ``Route`` that :func:`lrtune.api.main.create_app` puts ahead of
the routers: the FastAPI route stays declared for the OpenAPI schema and is never reached
for its method. From the declaration it keeps:

- the path, name (``url_for``) and methods: a Starlette route would also answer ``HEAD`` to
  a ``GET``; this one does not, as FastAPI's does not (405, the same ``Allow``);
- the path parameters' validation, by the fields FastAPI built from the declaration
  (``ModelField.validate``, with the error locations FastAPI gives them, ``("path", name)``),
  a failure raised as FastAPI's :class:`~fastapi.exceptions.RequestValidationError`: the same
  422 body. FastAPI's own ``request_params_to_args`` around the same call costs 7-8 us a
  request here, for lookups (aliases, defaults, sequences) that a matched path never needs;
- the app's exception handlers and middleware, which wrap every route alike (401, 404, 503).

It refuses, when the app is built, an endpoint that declares anything else (a dependency, a
query, header, cookie or body parameter, a ``Response`` or ``BackgroundTasks`` parameter) or
is not ``async``: those would be silently skipped here, so such an endpoint must read what it
needs from the request itself, as ``get_job`` does, and return a ``Response`` (its
``response_model`` documents it, nothing applies it). Dependencies given to
``include_router`` do not apply either (none are given).

Example:
    >>> from fastapi import APIRouter, Request, Response
    >>> router = APIRouter(prefix="/things")
    >>> @router.get("/{thing_id}", name="get_thing")
    ... async def get_thing(request: Request, thing_id: str) -> Response:
    ...     return Response(thing_id)
    >>> route = lean_route(router, "get_thing", prefix="/v1")
    >>> route.path, route.name, sorted(route.methods)
    ('/v1/things/{thing_id}', 'get_thing', ['GET'])
    >>> @router.get("/{thing_id}/size", name="thing_size")
    ... def thing_size(request: Request, thing_id: str, unit: str = "b") -> int: ...
    >>> lean_route(router, "thing_size")
    Traceback (most recent call last):
    ...
    TypeError: thing_size cannot be served lean: it is not async; it declares query \
parameters (lrtune.api.routes._lean)
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import APIRouter
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["lean_route"]


def lean_route(router: APIRouter, name: str, *, prefix: str = "") -> Route:
    """A Starlette route serving ``router``'s route ``name`` at ``prefix`` + its path (see the
    module).

    Raises:
        TypeError: the route declares what a lean route cannot serve (the message says what).
    """
    declared = next(
        route for route in router.routes if isinstance(route, APIRoute) and route.name == name
    )
    refusals = _unservable(declared)
    if refusals:
        raise TypeError(
            f"{name} cannot be served lean: {'; '.join(refusals)} (lrtune.api.routes._lean)"
        )
    dependant, endpoint = declared.dependant, declared.endpoint
    path_fields, request_parameter = dependant.path_params, dependant.request_param_name

    async def serve(request: Request) -> Response:
        values: dict[str, Any] = {request_parameter: request}
        errors: list[Any] = []
        for field in path_fields:
            raw = request.path_params[field.alias]
            values[field.name], field_errors = field.validate(raw, loc=("path", field.alias))
            errors += field_errors
        if errors:
            raise RequestValidationError(errors)
        return await endpoint(**values)

    route = Route(prefix + declared.path, serve, name=declared.name, include_in_schema=False)
    route.methods = set(declared.methods)  # Route would add HEAD to a GET
    return route


def _unservable(route: APIRoute) -> list[str]:
    """What ``route`` declares that :func:`lean_route` would skip: each a phrase; none: []."""
    dependant: Dependant = route.dependant
    refusals = [] if inspect.iscoroutinefunction(route.endpoint) else ["it is not async"]
    if dependant.request_param_name is None:
        refusals.append("it takes no Request")
    declared = {
        "dependencies": dependant.dependencies,
        "query parameters": dependant.query_params,
        "header parameters": dependant.header_params,
        "cookie parameters": dependant.cookie_params,
        "a body": dependant.body_params,
        "a Response parameter": dependant.response_param_name,
        "a BackgroundTasks parameter": dependant.background_tasks_param_name,
    }
    refusals += [f"it declares {what}" for what, value in declared.items() if value]
    return refusals
