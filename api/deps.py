"""The routes' dependencies, defined once as ``Annotated`` aliases (FastAPI's template layout).

- :data:`SettingsDep`: the app's :class:`~lrtune.api.config.ApiSettings`;
- :data:`StoreDep`: the app's :class:`~lrtune.jobs.JobStore`, opened on first use (so the
  app starts, and ``/healthz`` answers, while the database is down; until it is up, routes
  that need it answer 503);
- :data:`WriteAuth`: with ``LRTUNE_API_TOKEN`` set, the request must carry
  ``Authorization: Bearer <token>``; compared with :func:`hmac.compare_digest`, refused with
  401 otherwise. Documented in OpenAPI as the ``HTTPBearer`` scheme;
- :data:`ReadAuth`: the same check on reads, only when ``LRTUNE_API_TOKEN_FOR_READS`` is on;
- :data:`StudiesDep`: the Optuna storage over the same database (the jobs' studies), opened
  on first use; importing Optuna then, never at start;
- :data:`ResponsesDep`: the app's :class:`~lrtune.api.cache.ResponseCache` of answers that
  never change;
- :data:`JobBodiesDep`: the app's :class:`~lrtune.api.cache.JobBodies`, each job's body kept
  with the row version it was built from.

Both checks also accept the token in the :data:`TOKEN_COOKIE` cookie, which the dashboard's
login form sets (HttpOnly, SameSite=Strict): a browser's ``EventSource`` cannot send headers.
The header wins when both are sent.

A route declares what it needs as parameters::

    @router.post("/{job_id}/cancel")
    def cancel_job(job_id: str, store: StoreDep, _: WriteAuth) -> JobRecord: ...

The token is never logged or echoed: a refusal says only that it is missing or wrong.

Example:
    >>> from pydantic import SecretStr
    >>> check_token(ApiSettings(), None)  # no token configured: anyone may write
    >>> check_token(ApiSettings(api_token=SecretStr("s3cret")), "s3cret")
    >>> check_token(ApiSettings(api_token=SecretStr("s3cret")), "guess")
    Traceback (most recent call last):
    ...
    starlette.exceptions.HTTPException: 401: the bearer token is not this server's \
LRTUNE_API_TOKEN
"""

from __future__ import annotations

import hmac
import threading
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from fastapi import Cookie, Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from lrtune.api.cache import JobBodies, ResponseCache
from lrtune.api.config import ApiSettings
from lrtune.api.middleware import host_allowed
from lrtune.jobs import JobStore

if TYPE_CHECKING:
    import optuna

TOKEN_COOKIE = "lrtune_token"
"""The cookie the dashboard's login sets to the API token (HttpOnly, SameSite=Strict)."""

_bearer = HTTPBearer(
    auto_error=False,
    description="the server's LRTUNE_API_TOKEN; needed by write endpoints when it is set",
)


class LazyStore:
    """The app's job store, opened on the first request that needs it.

    Opening checks the database's schema; when that fails (database down, schema out of
    date) the :class:`~lrtune.exceptions.StorageUnavailableError` reaches the client as a
    503 and the next request tries again.
    """

    def __init__(self, settings: ApiSettings, store: JobStore | None = None) -> None:
        self.settings = settings
        self._store = store
        self._lock = threading.Lock()

    @property
    def opened(self) -> JobStore | None:
        """The store once open, else None (a read, no I/O)."""
        return self._store

    def get(self) -> JobStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = JobStore(self.settings.database_url, settings=self.settings)
        return self._store


class LazyStudies:
    """The Optuna storage of the jobs' studies (the job store's database), opened on first use.

    Opening imports Optuna (never torch); a failure reaches the client as a 503 and the next
    request tries again.
    """

    def __init__(self, store: LazyStore) -> None:
        self.store = store
        self._storage: optuna.storages.BaseStorage | None = None
        self._lock = threading.Lock()

    @property
    def opened(self) -> optuna.storages.BaseStorage | None:
        """The storage once open, else None (a read, no I/O)."""
        return self._storage

    def get(self) -> optuna.storages.BaseStorage:
        if self._storage is None:
            with self._lock:
                if self._storage is None:
                    from lrtune.study_view import open_reader

                    self._storage = open_reader(self.store.get().url)
        return self._storage


async def get_settings(request: Request) -> ApiSettings:
    """The settings the app was created with (``async``, as every dependency that does no
    I/O: FastAPI runs a plain ``def`` dependency in its threadpool, a thread hop per request)."""
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    """The app's job store; opened in the threadpool the first time (that reads the schema)."""
    lazy: LazyStore = request.app.state.store
    store = lazy.opened
    return store if store is not None else await run_in_threadpool(lazy.get)


async def get_studies(request: Request) -> optuna.storages.BaseStorage:
    """The Optuna storage of the jobs' studies; opened in the threadpool the first time."""
    lazy: LazyStudies = request.app.state.studies
    storage = lazy.opened
    return storage if storage is not None else await run_in_threadpool(lazy.get)


async def get_responses(request: Request) -> ResponseCache:
    """The app's cache of serialized answers (``async``: no threadpool hop for a lookup)."""
    return request.app.state.responses


async def get_job_bodies(request: Request) -> JobBodies:
    """The app's job bodies (``async``: no threadpool hop for a lookup)."""
    return request.app.state.job_bodies


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
JobBodiesDep = Annotated[JobBodies, Depends(get_job_bodies)]
ResponsesDep = Annotated[ResponseCache, Depends(get_responses)]
StoreDep = Annotated[JobStore, Depends(get_store)]
StudiesDep = Annotated[Any, Depends(get_studies)]
"""The Optuna storage (typed ``Any`` here: Optuna is imported only when it is opened)."""


def check_token(settings: ApiSettings, token: str | None) -> None:
    """Return if ``token`` is the configured API token (or none is configured); else 401.

    Raises:
        HTTPException: 401 with ``WWW-Authenticate: Bearer``; the message never holds a token.
    """
    expected = settings.api_token
    if expected is None:
        return
    if not token:
        raise _unauthorized(
            "this endpoint needs the header `Authorization: Bearer <token>` with the server's "
            "LRTUNE_API_TOKEN"
        )
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise _unauthorized("the bearer token is not this server's LRTUNE_API_TOKEN")


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

CookieToken = Annotated[str | None, Cookie(alias=TOKEN_COOKIE, include_in_schema=False)]


def refuse_cross_site(request: Request, what: str = "lrtune's write endpoints") -> None:
    """Return unless a browser sent this write from another site's page; then 403.

    A page on another site (another port of this host included, which is the same site to
    the cookie) can send a form's POST to a loopback service with no token, or carrying the
    login cookie; the browser says so in ``Sec-Fetch-Site``, and names the page's origin in
    ``Origin``, whose host must be one the server answers for
    (:meth:`~lrtune.api.config.ApiSettings.trusted_hosts`; an opaque ``null`` origin is not).
    Requests without the headers (curl, the client, the CLI) and the dashboard's own pages
    (``same-origin``, from a trusted host) go on.

    Raises:
        HTTPException: 403 saying where the request came from.
    """
    if request.method in SAFE_METHODS:
        return
    sender = request.headers.get("sec-fetch-site", "none")
    if sender not in ("same-origin", "none"):
        raise HTTPException(
            403,
            f"{what} take requests from the service's own pages only (this one came "
            f"from a {sender} page)",
        )
    origin = request.headers.get("origin")
    settings: ApiSettings = request.app.state.settings
    if origin is not None and not host_allowed(urlsplit(origin).netloc, settings.trusted_hosts()):
        raise HTTPException(
            403,
            f"{what} take requests from the service's own pages only (this one came "
            f"from a page of {origin[:100]!r}; LRTUNE_ALLOWED_HOSTS names the hosts served)",
        )


async def require_write_token(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    cookie: CookieToken = None,
) -> None:
    """The write endpoints' check (see :func:`check_token`): the bearer header or the cookie,
    from anywhere but another site's page (:func:`refuse_cross_site`)."""
    refuse_cross_site(request)
    check_token(settings, credentials.credentials if credentials else cookie)


async def require_read_token(request: Request) -> None:
    """The read endpoints' check, when ``api_token_for_reads`` is on.

    It reads the request itself rather than declaring the header and the cookie (neither is
    in the OpenAPI schema): FastAPI's parsing of declared parameters was a third of the time
    of ``GET /v1/jobs/{id}``, the most-polled route, and nearly every request has no token.
    """
    settings: ApiSettings = request.app.state.settings
    if not settings.api_token_for_reads:
        return
    authorization = request.headers.get("authorization")
    check_token(settings, presented_token(authorization, request.cookies.get(TOKEN_COOKIE)))


def presented_token(authorization: str | None, cookie: str | None) -> str | None:
    """The token a request presents: the ``Authorization: Bearer`` header's, else the cookie's."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else cookie


IfNoneMatch = Annotated[str | None, Header(description="the `ETag` of the copy the client has")]
"""A conditional GET's ``If-None-Match`` header (the route answers 304 while it matches)."""

WriteAuth = Annotated[None, Depends(require_write_token)]
ReadAuth = Annotated[None, Depends(require_read_token)]


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})
