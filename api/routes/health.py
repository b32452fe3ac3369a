"""``/healthz`` and ``/readyz``: is the process up, and can it serve.

``/healthz`` answers 200 whenever the process runs (a liveness probe; it touches nothing).
``/readyz`` answers 200 when the job store opens (an embedded SQLite file upgrades itself
then) and its schema is at the revision this lrtune needs, and 503 with the reason otherwise
(a readiness probe: the load balancer sends no traffic until it passes). It also counts the
live workers, with a note when there is none (the API serves; jobs wait). Under
``lrtune serve`` it also counts the embedded workers it started: when every one has exited,
``/readyz`` answers 503 (the service cannot run a job; the dashboard shows why), when some
have, a note. It says whether the server has a token (``auth``: the dashboard shows its
"Log in" only then). Neither needs a token.

Example:
    >>> sorted(route.path for route in router.routes)
    ['/healthz', '/readyz']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from lrtune.api.deps import SettingsDep
from lrtune.api.schemas import Health, Readiness
from lrtune.exceptions import LRTuneError
from lrtune.jobs import check_current
from lrtune.jobs.db import safe_url
from lrtune.jobs.revision import head_revision

if TYPE_CHECKING:
    from lrtune.api.embedded import EmbeddedWorkers

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> Health:
    """200 while the process runs."""
    return Health()


@router.get(
    "/readyz",
    summary="Readiness",
    responses={
        503: {
            "model": Readiness,
            "description": "The job store cannot be used, or lrtune serve's embedded workers "
            "have all exited",
        }
    },
)
def readyz(request: Request, settings: SettingsDep) -> Readiness:
    """200 when the job store is reachable and its schema current (and, under `lrtune
    serve`, an embedded worker runs); 503 with why not."""
    readiness = Readiness(
        status="ready",
        database="",
        schema_revision=head_revision(),
        auth=settings.api_token is not None,
    )
    try:
        readiness.database = safe_url(settings.database_url)
        store = request.app.state.store.get()
        check_current(store.url)
        readiness.live_workers = len(store.list_workers().data)
    except LRTuneError as exc:  # unreachable, outdated, or a URL that is not a database's
        return _unavailable(readiness, str(exc))
    if not readiness.live_workers:
        readiness.note = "no live worker: submitted jobs wait until one starts (lrtune worker)"
    embedded: EmbeddedWorkers | None = request.app.state.embedded_workers
    if embedded is not None and embedded.processes:
        exited = embedded.describe_exited()
        readiness.embedded_workers = len(embedded.processes)
        readiness.embedded_workers_running = len(embedded.processes) - len(embedded.exited())
        if exited and not readiness.embedded_workers_running:
            return _unavailable(readiness, exited)
        readiness.note = exited or readiness.note
    return readiness


def _unavailable(readiness: Readiness, why: str) -> Readiness:
    readiness.status, readiness.detail = "unavailable", why
    body = readiness.model_dump(mode="json")
    return JSONResponse(body, status_code=503)  # type: ignore[return-value]
