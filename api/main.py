"""Build the HTTP API: :func:`create_app` is the one constructor (FastAPI's template layout).

The app holds its :class:`~lrtune.api.config.ApiSettings` and a lazily opened job store on
``app.state``; routers come from :mod:`lrtune.api.routes` (``/v1/...``, plus ``/healthz`` and
``/readyz``, the dashboard's pages at ``/`` with its assets at ``/ui``, and optuna-dashboard
at ``/dashboard``), errors are
mapped in :mod:`lrtune.api.errors`, and request bodies are capped, and ``Host`` headers
checked, by :mod:`lrtune.api.middleware`. Building the app and serving jobs imports neither
torch nor Optuna (a schedule preview imports torch; deleting a job that has a study, and reading a
job's range test or trials, import Optuna).

Run it with uvicorn's factory mode (settings from ``LRTUNE_*``)::

    uvicorn lrtune.api.main:create_app --factory --host 127.0.0.1 --port 8000

Example:
    >>> import tempfile, pathlib
    >>> url = f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}"
    >>> app = create_app(ApiSettings(database_url=url))
    >>> "/v1/jobs/{job_id}/events" in app.openapi()["paths"]
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from lrtune import __version__
from lrtune.api.cache import JobBodies, ResponseCache
from lrtune.api.config import ApiSettings
from lrtune.api.deps import LazyStore, LazyStudies
from lrtune.api.errors import install_error_handlers
from lrtune.api.middleware import BodySizeLimit, TrustedHosts
from lrtune.api.routes import (
    agents,
    dashboard,
    datasets,
    health,
    jobs,
    metrics,
    models,
    optuna_dashboard,
    recommendations,
    results,
    schedules,
    workers,
)
from lrtune.api.routes._docs import error_responses
from lrtune.api.routes._lean import lean_route
from lrtune.jobs import JobStore
from lrtune.jobs.db import get_engine

if TYPE_CHECKING:
    from lrtune.api.embedded import EmbeddedWorkers

API_PREFIX = "/v1"

_DESCRIPTION = """\
Find the learning rate and LR schedule of a PyTorch job: submit a job spec, follow its
progress (or stream its events), and read the recommended schedule with its evidence and a
paste-ready snippet.

With `LRTUNE_API_TOKEN` set, write endpoints need `Authorization: Bearer <token>`. Errors
always have the body `{"detail": "...", "errors": [...]}`; `errors` lists the invalid fields
of a 422 with their paths.
"""

_TAGS = [
    {"name": "jobs", "description": "Submit jobs, follow them, read their results"},
    {"name": "recommendations", "description": "Stored answers: what LR should I use"},
    {"name": "registry", "description": "The models and datasets a job may name"},
    {"name": "schedules", "description": "What a schedule spec does, step by step"},
    {"name": "workers", "description": "The workers taking jobs, and what each holds"},
    {"name": "health", "description": "Probes for orchestrators"},
]


def create_app(
    settings: ApiSettings | None = None,
    *,
    store: JobStore | None = None,
    embedded_workers: EmbeddedWorkers | None = None,
) -> FastAPI:
    """The API app for ``settings`` (default: from the environment).

    ``store`` is the job store to serve (default: opened from ``settings.database_url`` on
    the first request that needs it, so the app starts while the database is down; the URL
    itself is checked now). ``embedded_workers`` are the worker processes ``lrtune serve``
    started beside it, which ``/readyz`` watches.

    Bound to a non-loopback ``settings.host`` it needs the token, for reads too
    (:meth:`ApiSettings.bound`): ``uvicorn ... --factory`` with ``LRTUNE_HOST=0.0.0.0`` keeps the
    rule that ``lrtune serve`` keeps.

    Raises:
        InvalidInputError: an ``LRTUNE_*`` variable holds an invalid value, the database URL
            is not one lrtune can open (malformed, unknown database, driver missing), or the
            host is not loopback and no token is set.
    """
    settings = (settings or ApiSettings.from_env()).bound()
    if store is None:
        get_engine(settings.database_url, settings)  # connects to nothing
    app = FastAPI(
        title="lrtune",
        version=__version__,
        description=_DESCRIPTION,
        openapi_tags=_TAGS,
    )
    app.state.settings = settings
    app.state.store = LazyStore(settings, store)
    app.state.studies = LazyStudies(app.state.store)
    app.state.responses = ResponseCache()
    app.state.job_bodies = JobBodies()
    app.state.embedded_workers = embedded_workers
    install_error_handlers(app)
    # First in the routing: GET /v1/jobs/{id}, the most-polled route, is served without
    # FastAPI's request handling, from its one declaration (lrtune.api.routes._lean)
    app.router.routes.insert(0, lean_route(jobs.router, "get_job", prefix=API_PREFIX))
    app.include_router(health.router)
    app.include_router(metrics.router)
    # Every /v1 route takes parameters, so any may answer 422 (in the one error body). Each
    # router is included at the app's level: a router nested in a /v1 router costs every
    # request a second routing pass (a third of the most-polled route's time).
    modules = (jobs, results, recommendations, models, datasets, schedules, workers, agents)
    for module in modules:
        app.include_router(module.router, prefix=API_PREFIX, responses=error_responses(422))
    app.include_router(dashboard.router)
    app.mount(dashboard.ASSETS_PATH, dashboard.assets(), name="assets")
    optuna_dashboard.install(app)  # last: at the root, off every path above
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        upload_bytes=settings.max_upload_bytes,
        upload_paths={f"{API_PREFIX}{datasets.UPLOAD_PATH}"},
    )
    app.add_middleware(TrustedHosts, allowed=settings.trusted_hosts())  # outermost: first
    return app
