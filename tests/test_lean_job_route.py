"""``GET /v1/jobs/{id}`` served from its lean route (:mod:`lrtune.api.routes._lean`) answers
exactly what FastAPI's handling of the same declaration answers, over real HTTP (uvicorn on
127.0.0.1) on SQLite and PostgreSQL: every status, body and header of the requests a poller,
a browser or a mistake sends.

The FastAPI side is the same app with the lean route taken out of its routing: its FastAPI
declaration then serves the path, as it did before the lean route.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from live_api import serve
from starlette.routing import Match, Route

from lrtune.api import ApiSettings, create_app
from lrtune.api.deps import TOKEN_COOKIE
from lrtune.api.routes._lean import lean_route
from lrtune.jobs import JobStore
from lrtune.spec import JobSpec

TOKEN = "lean-t0ken"
SPEC = JobSpec.model_validate({"model": {"name": "logreg"}, "dataset": {"name": "wine"}})
VARYING_HEADERS = {"date", "server"}


def serving_route(app: FastAPI, path: str, method: str = "GET") -> Any:
    """The route the app's routing picks first for ``method`` on ``path``."""
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    return next(route for route in app.router.routes if route.matches(scope)[0] is Match.FULL)


def without_lean_route(app: FastAPI) -> FastAPI:
    """``app`` with ``GET /v1/jobs/{id}`` served by its FastAPI declaration."""
    lean = serving_route(app, "/v1/jobs/x")
    assert type(lean) is Route  # the app as built serves it lean, not through FastAPI
    app.router.routes.remove(lean)
    assert type(serving_route(app, "/v1/jobs/x")) is not Route  # the /v1/jobs router
    return app


@contextlib.contextmanager
def both_servers(**settings: Any) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """Clients of the app as built (lean) and of the same app served by FastAPI."""
    with contextlib.ExitStack() as stack:
        lean_url = stack.enter_context(serve(create_app(ApiSettings(**settings))))
        plain_app = without_lean_route(create_app(ApiSettings(**settings)))
        plain_url = stack.enter_context(serve(plain_app))
        lean = stack.enter_context(httpx.Client(base_url=lean_url, timeout=30))
        plain = stack.enter_context(httpx.Client(base_url=plain_url, timeout=30))
        yield lean, plain


def answer(client: httpx.Client, method: str, path: str, **kwargs: Any) -> tuple:
    response = client.request(method, path, **kwargs)
    base = str(client.base_url).rstrip("/")  # in a redirect's Location: the server's port
    headers = {
        k: v.replace(base, "") for k, v in response.headers.items() if k not in VARYING_HEADERS
    }
    return response.status_code, headers, response.content


def assert_same_answers(
    lean: httpx.Client, plain: httpx.Client, requests: list[tuple[str, str, dict[str, Any]]]
) -> set[int]:
    """Each request answered alike by both servers; returns the statuses seen."""
    statuses = set()
    for method, path, kwargs in requests:
        lean_answer = answer(lean, method, path, **kwargs)
        assert lean_answer == answer(plain, method, path, **kwargs), (method, path, kwargs)
        statuses.add(lean_answer[0])
    return statuses


def jobs_sharing_a_first_character(store: JobStore) -> str:
    """Submit jobs until two ids start alike (17 at most: ids are hex); that character."""
    seen: set[str] = set()
    while True:
        first = store.submit(SPEC, reuse=False).id[0]
        if first in seen:
            return first
        seen.add(first)


def test_the_lean_route_answers_every_request_as_fastapi_does(jobs_url: str) -> None:
    store = JobStore(jobs_url)
    job = store.submit(SPEC, reuse=False)
    shared = jobs_sharing_a_first_character(store)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with both_servers(database_url=jobs_url, api_token=TOKEN, api_token_for_reads=True) as (
        lean,
        plain,
    ):
        etag = lean.get(f"/v1/jobs/{job.id}", headers=bearer).headers["etag"]
        path = f"/v1/jobs/{job.id}"
        requests = [
            ("GET", path, {}),  # no token: 401
            ("GET", path, {"headers": {"Authorization": "Bearer wrong"}}),
            ("GET", path, {"headers": {"Authorization": "Basic " + TOKEN}}),
            ("GET", path, {"headers": bearer}),
            ("GET", path, {"headers": {"Cookie": f"{TOKEN_COOKIE}={TOKEN}"}}),
            ("GET", path, {"headers": {**bearer, "If-None-Match": etag}}),  # 304
            ("GET", path, {"headers": {**bearer, "If-None-Match": f'"other", W/{etag}'}}),
            ("GET", path, {"headers": {**bearer, "If-None-Match": '"other"'}}),
            ("GET", path[:17], {"headers": bearer}),  # a unique prefix: the job
            ("GET", f"/v1/jobs/{shared}", {"headers": bearer}),  # several jobs: 422
            ("GET", "/v1/jobs/no-such-job", {"headers": bearer}),  # 404
            ("GET", "/v1/jobs/" + "x" * 65, {"headers": bearer}),  # too long: 422
            ("GET", "/v1/jobs/a%00b", {"headers": bearer}),  # NUL: 422
            ("GET", "/v1/jobs/%C3%A9t%C3%A9", {"headers": bearer}),
            ("GET", f"{path}?unknown=1", {"headers": bearer}),
            ("GET", f"{path}/", {"headers": bearer}),
            ("HEAD", path, {"headers": bearer}),  # 405, as FastAPI: not answered as a GET
            ("PUT", path, {"headers": bearer}),
            ("DELETE", "/v1/jobs/no-such-job", {"headers": bearer}),
            ("GET", path, {"headers": {**bearer, "Host": "attacker.example"}}),  # 400
        ]
        statuses = assert_same_answers(lean, plain, requests)
    assert statuses >= {200, 304, 400, 401, 404, 405, 422}


def test_an_unreachable_store_is_the_same_503(unused_tcp_port: int) -> None:
    url = f"postgresql+psycopg://lrtune:hunter2@127.0.0.1:{unused_tcp_port}/lrtune"
    with both_servers(database_url=url) as (lean, plain):
        statuses = assert_same_answers(lean, plain, [("GET", "/v1/jobs/x", {})])
    assert statuses == {503}


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


def _needs_a_header(x_thing: Annotated[str | None, Header()] = None) -> None: ...


async def _with_a_dependency(
    request: Request, thing_id: str, _: Annotated[None, Depends(_needs_a_header)]
) -> Response: ...


async def _with_a_header(
    request: Request, thing_id: str, x_thing: Annotated[str | None, Header()] = None
) -> Response: ...


async def _with_a_response(request: Request, thing_id: str, response: Response) -> Response: ...


async def _without_the_request(thing_id: str) -> Response: ...


def _not_async(request: Request, thing_id: str) -> Response: ...


@pytest.mark.parametrize(
    ("endpoint", "refusal"),
    [
        (_with_a_dependency, "it declares dependencies"),
        (_with_a_header, "it declares header parameters"),
        (_with_a_response, "it declares a Response parameter"),
        (_without_the_request, "it takes no Request"),
        (_not_async, "it is not async"),
    ],
)
def test_an_endpoint_declaring_what_a_lean_route_would_skip_is_refused(
    endpoint: Any, refusal: str
) -> None:
    """What FastAPI would solve for the endpoint the lean route would not: refused when the
    app is built, never skipped at each request."""
    router = APIRouter()
    router.add_api_route("/things/{thing_id}", endpoint, name="thing", methods=["GET"])
    with pytest.raises(TypeError, match=refusal):
        lean_route(router, "thing")
