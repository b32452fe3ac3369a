"""optuna-dashboard over the jobs' studies, served by the API at the root, behind its auth.

optuna-dashboard's WSGI app (``optuna_dashboard.wsgi(storage)``) uses absolute paths fixed at
build time (``/dashboard``, ``/api/...``, ``/static/...``, ``/csv/...``), so it cannot live
under a sub-path. :func:`install` adds one route per path prefix it owns (:data:`PATHS`),
after lrtune's own routes; none of lrtune's is under them (the API is ``/v1``, its pages are
``/``, ``/jobs/...``, ``/submit``, ``/login`` with assets at ``/ui``, and ``/docs``,
``/openapi.json``, ``/healthz``, ``/readyz``, ``/metrics``; a test checks). Paths outside
:data:`PATHS` (``/`` included, which optuna-dashboard only redirects) stay lrtune's, so an
unknown path is still lrtune's JSON 404.

- Auth: optuna-dashboard has write endpoints (delete a study, tell a trial, notes, upgrade
  the schema) and no auth of its own, so with ``LRTUNE_API_TOKEN`` set every one of its paths,
  reads included, needs the token: ``Authorization: Bearer <token>`` or the dashboard login's
  cookie (:data:`~lrtune.api.deps.TOKEN_COOKIE`). A browser navigating there without it is
  sent to ``/login`` (and back); anything else gets 401. Without a token the service binds
  loopback only (:mod:`lrtune.cli.service`), like the rest of the API. Its writes are taken
  only from its own pages: a browser's request that another site (another port on the same
  host included) sends, by its ``Sec-Fetch-Site`` header, is refused with 403 (the login
  cookie is SameSite=Strict, but another port is the same site).
- Lazy: ``optuna_dashboard`` (with Optuna and bottle) is imported, and its app built over the
  API's Optuna storage (:class:`~lrtune.api.deps.LazyStudies`), on the first request to one of
  its paths; a2wsgi runs it in its own threadpool.
- ``GET /jobs/{id}/optuna`` redirects to the page of the job's study (studies are named
  ``lrtune-job-<id>``; its confirmation runs are the study ``lrtune-job-<id>:confirm``).
- ``LRTUNE_OPTUNA_DASHBOARD=false`` turns it off: its paths are then lrtune's 404s.

Example:
    >>> [route.path for route in router.routes]
    ['/jobs/{job_id}/optuna']
    >>> "/dashboard{rest:path}" in ROUTE_PATHS and "/api/{rest:path}" in ROUTE_PATHS
    True
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from lrtune.api.config import ApiSettings
from lrtune.api.deps import (
    TOKEN_COOKIE,
    LazyStudies,
    ReadAuth,
    SettingsDep,
    StoreDep,
    StudiesDep,
    check_token,
    presented_token,
    refuse_cross_site,
)
from lrtune.api.routes.jobs import JobId
from lrtune.exceptions import NotFoundError
from lrtune.study_view import find_study_id

if TYPE_CHECKING:
    from starlette.responses import Response

PATHS = (
    "/dashboard",
    "/api/",
    "/static/",
    "/csv/",
    "/artifacts/",
    "/favicon.ico",
    "/incompatible-rdb-schema",
)
"""The path prefixes optuna-dashboard serves (``/dashboard`` with its client-side routes)."""
ROUTE_PATHS = tuple(
    f"{prefix}{{rest:path}}" if prefix.endswith("/") or prefix == "/dashboard" else prefix
    for prefix in PATHS
)
""":data:`PATHS` as Starlette route paths."""


router = APIRouter(include_in_schema=False)


@router.get("/jobs/{job_id}/optuna")
def job_study_page(
    job_id: JobId, store: StoreDep, studies: StudiesDep, settings: SettingsDep, _: ReadAuth
) -> RedirectResponse:
    """Redirect to the job's study in optuna-dashboard (404 while it has none)."""
    if not settings.optuna_dashboard:
        raise NotFoundError(
            "optuna-dashboard is turned off on this server (LRTUNE_OPTUNA_DASHBOARD=false)"
        )
    job = store.get(job_id)
    study_id = find_study_id(studies, job.study_name)
    if study_id is None:
        raise NotFoundError(
            f"job {job_id!r} has no Optuna study yet: it is {job.status.value} (its study "
            f"{job.study_name!r} is created when its range test starts)"
        )
    return RedirectResponse(f"/dashboard/studies/{study_id}", status_code=303)


class OptunaDashboard:
    """optuna-dashboard as an ASGI app behind the API's token, built on its first request."""

    def __init__(self, settings: ApiSettings, studies: LazyStudies) -> None:
        self.settings = settings
        self.studies = studies
        self._app: ASGIApp | None = None
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        refusal = self._refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        app = self._app or await run_in_threadpool(self._build)
        await app(scope, receive, send)

    def _refusal(self, request: Request) -> Response | None:
        """None if the request may go on; else where to send it (raises the 401 or 403)."""
        refuse_cross_site(request, "optuna-dashboard's write endpoints")
        if self.settings.api_token is None:
            return None
        authorization = request.headers.get("authorization")
        try:
            check_token(
                self.settings, presented_token(authorization, request.cookies.get(TOKEN_COOKIE))
            )
        except HTTPException:
            navigating = request.method == "GET" and "text/html" in request.headers.get(
                "accept", ""
            )
            if navigating and authorization is None:
                target = quote(request.url.path, safe="/")
                return RedirectResponse(f"/login?next={target}", status_code=303)
            raise
        return None

    def _build(self) -> ASGIApp:
        with self._lock:
            if self._app is None:
                import optuna_dashboard
                from a2wsgi import WSGIMiddleware

                from lrtune._optuna import storage_errors

                storage = self.studies.get()
                with storage_errors():  # it reads the schema's version now
                    self._app = WSGIMiddleware(optuna_dashboard.wsgi(storage))  # type: ignore[arg-type]
        return self._app


def install(app: FastAPI) -> None:
    """Add the job-study redirect and, unless turned off, optuna-dashboard's routes (call it
    after every lrtune route is registered, so that those come first)."""
    app.include_router(router)
    settings: ApiSettings = app.state.settings
    if not settings.optuna_dashboard:
        return
    dashboard = OptunaDashboard(settings, app.state.studies)
    for path in ROUTE_PATHS:
        app.add_route(path, dashboard, include_in_schema=False)  # type: ignore[arg-type]
