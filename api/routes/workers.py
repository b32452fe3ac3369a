"""``/v1/workers``: the workers taking jobs from this service's job store, and what each holds.

What ``lrtune workers`` prints, from the store (:meth:`~lrtune.jobs.JobStore.list_workers`):
each worker's host, device, pid, version, units and threads, its last heartbeat and the jobs
it is working on, as :class:`~lrtune.jobs.records.WorkerList`.

Example:
    >>> router.prefix, [route.path for route in router.routes]
    ('/workers', ['/workers'])
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from lrtune.api.deps import ReadAuth, StoreDep
from lrtune.api.routes._docs import error_responses
from lrtune.jobs.records import WorkerList

router = APIRouter(prefix="/workers", tags=["workers"])


@router.get("", summary="List workers", responses=error_responses(401, 503))
def list_workers(
    store: StoreDep,
    _: ReadAuth,
    include_stopped: Annotated[
        bool,
        Query(
            alias="all",
            description="stopped and silent workers too, not only the live ones",
        ),
    ] = False,
) -> WorkerList:
    """The live workers (their last heartbeat younger than three of their intervals), most
    recent heartbeat first, each with what it holds: a job's exclusive phase under its lease,
    or a search trial or confirmation run of a job."""
    return store.list_workers(live_only=not include_stopped)
