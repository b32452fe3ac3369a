"""The sweep dashboard: HTML pages at ``/``, ``/jobs/{id}``, ``/submit``, ``/login``; assets at
``/ui/``.

The pages are static HTML shipped in the package (``lrtune/api/static``, package data), each
driven by a plain JavaScript module beside it that reads the ``/v1`` API; their shared
``<head>`` and ``<header>`` are one file, ``_layout.html``, put before each page's own part
when it is served. Charts are drawn with the vendored uPlot (``static/vendor/uplot``, MIT).
Nothing is fetched from elsewhere, so the dashboard works offline, and nothing is built at
install time. The paths stay off ``/api``, ``/dashboard``, ``/static`` and ``/csv``, where
optuna-dashboard lives (:mod:`.optuna_dashboard`).

- ``/``: the jobs, live (polled every few seconds): state, phase, progress with an ETA, best
  metric so far, age.
- ``/jobs/{id}``: one job, live from its event stream: the loss-vs-LR chart, the trials, the
  confirmation table, the recommended schedule's LR curve and its snippet, a cancel button.
- ``/submit``: a job spec as JSON, with the API's 422 field errors shown beside it.
- ``/login``: with ``LRTUNE_API_TOKEN`` set, a form that stores the token in an HttpOnly,
  SameSite=Strict cookie (:data:`~lrtune.api.deps.TOKEN_COOKIE`), which the API's auth
  accepts as it does the bearer header (a browser's ``EventSource`` cannot send headers).

The pages themselves hold no data, so they need no token; the API calls they make do.

Example:
    >>> sorted(route.path for route in router.routes)[:3]
    ['/', '/jobs/{job_id}', '/login']
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp

from lrtune.api.deps import TOKEN_COOKIE, SettingsDep

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
"""The dashboard's pages, scripts, styles and the vendored uPlot (package data)."""
ASSETS_PATH = "/ui"
"""Where the static folder is served."""
LAYOUT = "_layout.html"
"""Every page's ``<head>`` and ``<header>``, shared (the pages hold only their own part)."""
_TITLE_SLOT = "<!-- the page's <title>, its file's first line -->"
COOKIE_MAX_AGE_S = 7 * 24 * 3600

_logger = logging.getLogger("lrtune.api")

router = APIRouter(include_in_schema=False)


def assets() -> ASGIApp:
    """The static folder as an app to mount at :data:`ASSETS_PATH`, gzipped for clients that
    accept it (uPlot's 51 kB script is 22 kB gzipped)."""
    return GZipMiddleware(StaticFiles(directory=STATIC_DIR), minimum_size=1024)


def _page(name: str) -> HTMLResponse:
    """The page ``name``: the shared top (:data:`LAYOUT`) with the page's title, then the page.

    A page's file holds its ``<title>`` on its first line, then its ``<main>`` and scripts.
    """
    title, body = (STATIC_DIR / name).read_text(encoding="utf-8").split("\n", 1)
    top = (STATIC_DIR / LAYOUT).read_text(encoding="utf-8").replace(_TITLE_SLOT, title, 1)
    return HTMLResponse(top + body, headers=_NO_STORE)


_NO_STORE = {"Cache-Control": "no-cache"}


@router.get("/")
def jobs_page() -> HTMLResponse:
    """The jobs list."""
    return _page("jobs.html")


@router.get("/jobs/{job_id}")
def job_page(job_id: Annotated[str, PathParam(max_length=64)]) -> HTMLResponse:
    """One job's page (the script reads the id from the URL)."""
    return _page("job.html")


@router.get("/submit")
def submit_page() -> HTMLResponse:
    """The submit form."""
    return _page("submit.html")


@router.get("/login")
def login_page() -> HTMLResponse:
    """The token form."""
    return _page("login.html")


@router.post("/login")
async def login(request: Request, settings: SettingsDep) -> Response:
    """Check the form's token; if it is the server's, set the cookie and go to ``next``.

    A wrong token goes back to the form with ``?error=1``; the token is never logged.
    """
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0]
    target = _local_path((form.get("next") or ["/"])[0])
    expected = settings.api_token
    if expected is not None and not hmac.compare_digest(
        token.encode(), expected.get_secret_value().encode()
    ):
        _logger.info("event=login_refused")
        return RedirectResponse(f"/login?error=1&next={quote(target)}", status_code=303)
    response = RedirectResponse(target, status_code=303)
    if expected is not None:
        response.set_cookie(
            TOKEN_COOKIE,
            token,
            max_age=COOKIE_MAX_AGE_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
    return response


@router.post("/logout")
def logout() -> Response:
    """Forget the cookie."""
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(TOKEN_COOKIE, path="/")
    return response


def _local_path(target: str) -> str:
    """``target`` if it is a path on this server, else ``/`` (no open redirect).

    Example:
        >>> _local_path("/jobs/abc"), _local_path("//evil.example"), _local_path("http://x")
        ('/jobs/abc', '/', '/')
    """
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
