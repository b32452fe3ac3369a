"""``/v1/jobs``: submit a job, follow it, cancel or delete it, read its recommendation.

Every route is a thin call into :class:`~lrtune.jobs.JobStore`, whose models it serves as they
are (:class:`~lrtune.jobs.JobRecord`, :class:`~lrtune.jobs.JobPage`,
:class:`~lrtune.jobs.StoredRecommendation`); the store's exceptions become statuses in
:mod:`lrtune.api.errors`. Plain ``def`` routes run in FastAPI's threadpool, so a slow store
call never blocks the event loop; the event stream is ``async`` and calls the store through
:func:`~starlette.concurrency.run_in_threadpool`.

``GET /v1/jobs/{id}``, what every poller asks, is served from a Starlette route ahead of
FastAPI's routing (:mod:`lrtune.api.routes._lean`; this declaration documents it), with the
job's body serialized once per change of its row: one indexed read of the row's version on the
event loop (:mod:`lrtune.jobs.row_versions`: a few microseconds on SQLite, an awaited round
trip on PostgreSQL), and the body kept in :class:`~lrtune.api.cache.JobBodies` while the row is
at the version it was built from. A write committed before a request, by any process, is in
its answer; the ``ETag`` is a digest of the body, so it changes exactly when the body does.

Submitting checks what the spec's schema cannot in the store, as every way in does
(:mod:`lrtune.jobs.admission`): that the model and dataset names are in the registry and their
params fit (422 at ``body.model.name`` and so on), that fewer than ``LRTUNE_MAX_QUEUED_JOBS``
jobs are queued (429 otherwise), and that the job's estimated memory and compute fit
``LRTUNE_MAX_JOB_GB`` and ``LRTUNE_MAX_JOB_TFLOPS`` (422 at the field to change, e.g.
``body.range_test.seeds``, saying the estimate and the cap: :mod:`lrtune.footprint`).

The event stream (``GET /v1/jobs/{id}/events``) is Server-Sent Events: each event's SSE ``id``
is its store id and its ``data`` the :class:`~lrtune.jobs.JobEvent` JSON; a client resumes with
``Last-Event-ID`` (a browser's ``EventSource`` sends it when it reconnects) or ``?after=``. A
comment is sent as a keep-alive every ``LRTUNE_SSE_PING_S``. When the job has finished and
every event is sent, the stream sends ``event: end`` and closes; if the store becomes
unreachable it sends ``event: unavailable`` (with an SSE ``retry``) and closes.

Example:
    >>> [route.path for route in router.routes][:3]
    ['/jobs', '/jobs', '/jobs/{job_id}']
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from lrtune.api.cache import CachedBody, JobBodies
from lrtune.api.deps import (
    JobBodiesDep,
    ReadAuth,
    ResponsesDep,
    SettingsDep,
    StoreDep,
    WriteAuth,
    get_job_bodies,
    get_store,
    require_read_token,
)
from lrtune.api.errors import FieldInvalid
from lrtune.api.routes._docs import IF_NONE_MATCH_PARAMETER, NOT_MODIFIED, error_responses
from lrtune.api.schemas import ErrorBody
from lrtune.exceptions import InvalidInputError, NotFoundError, StorageUnavailableError
from lrtune.jobs import (
    JobEvent,
    JobPage,
    JobRecord,
    JobStatus,
    JobStore,
    StoredRecommendation,
    Submission,
)
from lrtune.jobs.store import MAX_NAME_LENGTH, MAX_PAGE
from lrtune.schedules import MAX_RUN_EPOCHS, MAX_RUN_STEPS_PER_EPOCH
from lrtune.spec import JobSpec

EVENT_BATCH = 100
"""Events read from the store per query while streaming."""
UNAVAILABLE_RETRY_MS = 5000
"""The SSE ``retry`` sent with ``event: unavailable``: when a browser reconnects."""
QUEUE_FULL_RETRY_S = 30
MAX_EVENT_ID = 2**63 - 1
"""The largest event id the store can hold (a 64-bit column): no cursor is above it."""

_logger = logging.getLogger("lrtune.api")

router = APIRouter(prefix="/jobs", tags=["jobs"])

NO_NUL = r"^[^\x00]*$"
"""Text the store keeps in a text column: PostgreSQL refuses NUL characters there."""

JobId = Annotated[
    str,
    Path(
        max_length=64,
        pattern=NO_NUL,
        description="the job's id, from its submit, or a unique prefix of it (the dashboard "
        "shows 8 characters); a prefix that several ids start with is a 422 saying how many",
    ),
]

_SPEC_EXAMPLES: dict[str, Any] = {
    "minimal": {
        "summary": "Only model and dataset: every other field has a default",
        "value": {"model": {"name": "mlp"}, "dataset": {"name": "digits"}},
    },
    "small": {
        "summary": "A small job: 2 range-test seeds, 4 trials, cosine or onecycle",
        "value": {
            "name": "wine-logreg",
            "model": {"name": "logreg"},
            "dataset": {"name": "wine", "params": {"val_fraction": 0.25}},
            "optimizer": {"name": "adamw", "weight_decay": 0.01},
            "batch_size": 32,
            "range_test": {"seeds": 2, "num_iter": 60},
            "search": {"n_trials": 4, "epochs": 3, "families": ["cosine", "onecycle"]},
        },
    },
}

_STREAM_END = {
    "type": "object",
    "properties": {"status": {"type": "string", "description": "the job's final state"}},
    "required": ["status"],
    "additionalProperties": False,
}
_STREAM_EVENT = {
    "type": "object",
    "description": "One Server-Sent Event: a job event (its `id` is the JobEvent's), `end` or "
    "`unavailable` (with `retry`)",
    "properties": {
        "id": {"type": "string", "description": "the event's id: resume with `Last-Event-ID`"},
        "event": {
            "type": "string",
            "enum": ["message", "end", "unavailable"],
            "description": "absent on a job event (a browser dispatches it as `message`)",
        },
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "anyOf": [
                    JobEvent.model_json_schema(mode="serialization"),
                    _STREAM_END,
                    {"$ref": "#/components/schemas/ErrorBody"},
                ]
            },
        },
        "retry": {"type": "integer", "minimum": 0},
    },
    "required": ["data"],
}
"""Each event of the stream, as OpenAPI 3.2 documents Server-Sent Events (``itemSchema``)."""

_EVENT_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `id` is the event's id (resume with "
        "`Last-Event-ID`), `data` a JobEvent as JSON; `event: end` closes a finished job's "
        "stream, `event: unavailable` one whose store went away",
        "content": {
            "text/event-stream": {
                "itemSchema": _STREAM_EVENT,
                "example": 'id: 7\ndata: {"id": 7, "job_id": "1b0c...", "created_at": '
                '"2026-12-01T07:00:00Z", "kind": "status", "payload": {"from": "queued", '
                '"to": "finding"}}\n\nevent: end\ndata: {"status": "succeeded"}\n\n',
            }
        },
    },
    **error_responses(401, 404, 422, 503),
}


@router.post(
    "",
    status_code=201,
    summary="Submit a job",
    responses={
        201: {"description": "The job, queued; `Location` is its path"},
        200: {
            "model": Submission,
            "description": "Reused: an earlier succeeded job with the same fingerprint, search "
            "configuration and result format answers it (`reused_from`, `recommendation`); "
            "`Location` is that job's path",
        },
        **error_responses(401, 413, 422, 429, 503),
    },
)
def submit_job(
    spec: Annotated[JobSpec, Body(openapi_examples=_SPEC_EXAMPLES)],
    request: Request,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    _: WriteAuth,
    name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_NAME_LENGTH,
            pattern=NO_NUL,
            description="the job's name (default: the spec's `name`)",
        ),
    ] = None,
    reuse: Annotated[
        bool,
        Query(
            description="answer at once from an earlier succeeded job with the same "
            "fingerprint, search configuration and result format, if there is one (200); "
            "false always queues a new job"
        ),
    ] = True,
) -> Submission:
    """Queue a job for the spec; 201 with the job and its path in `Location`, or 200 with an
    earlier job's answer when `reuse` finds one."""
    try:
        job = store.submit(spec, name=name, reuse=reuse)
    except InvalidInputError as exc:  # refused at admission (lrtune.jobs.admission)
        if not exc.loc:
            raise
        raise FieldInvalid(["body", *exc.loc], str(exc), exc.kind) from None
    if job.reused_from is not None:
        response.status_code = 200
    response.headers["Location"] = request.url_for("get_job", job_id=job.id).path  # no Host
    event = "reused" if job.reused_from else "submitted"
    _logger.info("job=%s event=%s trains=%r", job.id, event, spec.subject)
    return job


@router.get("", summary="List jobs", responses=error_responses(401, 422, 503))
def list_jobs(
    store: StoreDep,
    _: ReadAuth,
    status: Annotated[JobStatus | None, Query(description="only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="jobs per page")] = 50,
    after: Annotated[
        str | None,
        Query(max_length=64, pattern=NO_NUL, description="the `next_after` of the previous page"),
    ] = None,
) -> JobPage:
    """Jobs newest first, a page at a time (keyset pages: stable while jobs are submitted)."""
    try:
        return store.list_jobs(status=status, limit=limit, after=after)
    except NotFoundError as exc:
        raise FieldInvalid(
            ["query", "after"],
            f"{exc}: `after` must be the `next_after` of a previous page",
            "unknown_cursor",
        ) from None


@router.get(
    "/{job_id}",
    name="get_job",
    summary="Get a job",
    response_model=JobRecord,
    responses={
        **NOT_MODIFIED,
        **error_responses(401, 404, 422, 503),
    },
    openapi_extra={"parameters": [IF_NONE_MATCH_PARAMETER]},
)
async def get_job(request: Request, job_id: JobId) -> Response:
    """The job: its spec, state, progress, timings and error.

    Carries an `ETag`; a poller that sends it back in `If-None-Match` gets 304 while the job
    is unchanged.
    """
    # The most-polled route, served without FastAPI's request handling (create_app puts a
    # lean_route of it first: lrtune.api.routes._lean, which refuses a declared dependency or
    # header): it reads its token, store, bodies and If-None-Match from the request itself
    # (openapi_extra documents the header)
    await require_read_token(request)
    store, bodies = await get_store(request), await get_job_bodies(request)
    if_none_match = request.headers.get("if-none-match")
    row_version = await store.row_versions.read_async(job_id)
    served = bodies.get(job_id, row_version) if row_version is not None else None
    if served is None:
        served = await run_in_threadpool(_built_body, store, bodies, job_id, row_version)
    return served.response(if_none_match)


def _built_body(
    store: JobStore, bodies: JobBodies, job_id: str, row_version: int | None
) -> CachedBody:
    """The job's body from its record, kept in ``bodies`` as built at ``row_version`` (read
    before the record, so the record is at least that new: :mod:`lrtune.jobs.row_versions`);
    a prefix of an id, or an id that no job has (the store's 404), is not kept."""
    body = store.get(job_id).model_dump_json(by_alias=True).encode()
    if row_version is None:
        return CachedBody.of(body)
    return bodies.put(job_id, row_version, body)


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a job",
    responses=error_responses(401, 404, 409, 422, 503),
)
def cancel_job(job_id: JobId, store: StoreDep, _: WriteAuth) -> JobRecord:
    """Cancel a job that has not finished (409 if it has); its partial results stay."""
    job = store.cancel(job_id)
    _logger.info("job=%s event=cancelled", job.id)
    return job


@router.delete(
    "/{job_id}",
    status_code=204,
    summary="Delete a finished job",
    responses={204: {"description": "Deleted"}, **error_responses(401, 404, 409, 422, 503)},
)
def delete_job(
    job_id: JobId,
    store: StoreDep,
    responses: ResponsesDep,
    bodies: JobBodiesDep,
    _: WriteAuth,
) -> None:
    """Delete a finished job with its results, events and study (409 if unfinished)."""
    job_id = store.delete(job_id)  # the whole id, if given a prefix
    responses.forget(job_id)  # its cached answers go with it
    bodies.forget(job_id)
    _logger.info("job=%s event=deleted", job_id)


@router.get(
    "/{job_id}/recommendation",
    summary="A job's recommendation",
    response_model=StoredRecommendation,
    responses=error_responses(401, 404, 422, 503),
)
def get_recommendation(
    job_id: JobId,
    store: StoreDep,
    _: ReadAuth,
    epochs: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_RUN_EPOCHS,
            description="write the snippet (`code`) for a run of this many epochs; its "
            "comment says what it was tuned for",
        ),
    ] = None,
    steps_per_epoch: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_RUN_STEPS_PER_EPOCH,
            description="write the snippet for this many steps per epoch (default: its "
            "`len(train_loader)`)",
        ),
    ] = None,
) -> Response:
    """The schedule, LR curve, confirmation table and code snippet the job wrote.

    The snippet declares `epochs` and `steps_per_epoch` at the values it was tuned for, with
    every schedule length a fraction of the run; `?epochs=` (and `&steps_per_epoch=`) write
    it for your run instead, saying what it was tuned for. 404 while the job has not written
    one (the message says the job's state).
    """
    stored = store.recommendation(job_id)
    context = None
    if epochs is not None or steps_per_epoch is not None:
        context = {"code_for": {"epochs": epochs, "steps_per_epoch": steps_per_epoch}}
    body = stored.model_dump_json(by_alias=True, context=context)
    return Response(body, media_type="application/json")


@router.get(
    "/{job_id}/events",
    summary="Stream a job's events (SSE)",
    response_class=EventSourceResponse,
    responses=_EVENT_STREAM_DOC,
)
async def job_events(
    job_id: JobId,
    store: StoreDep,
    settings: SettingsDep,
    _: ReadAuth,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_EVENT_ID, description="send events with ids above this one"),
    ] = None,
    last_event_id: Annotated[
        int | None,
        Header(
            ge=0, le=MAX_EVENT_ID, description="resume after this event id (what EventSource sends)"
        ),
    ] = None,
) -> EventSourceResponse:
    """The job's events as Server-Sent Events, from the start or after a cursor, live."""
    cursor = last_event_id if last_event_id is not None else (after or 0)
    job = await run_in_threadpool(store.get, job_id)  # unknown: a 404, not an empty stream
    return EventSourceResponse(
        event_stream(store, job.id, cursor, poll_s=settings.sse_poll_s),
        ping=settings.sse_ping_s,
    )


async def event_stream(
    store: JobStore, job_id: str, after: int, *, poll_s: float
) -> AsyncIterator[ServerSentEvent]:
    """The job's events above ``after`` as SSE, polling every ``poll_s`` until it is drained.

    The job's state is read before each batch of events, so a job seen finished whose batch
    came back short has nothing left to send (its final ``status`` event is written in the
    same transaction as the state).
    """
    while True:
        try:
            job = await run_in_threadpool(store.get, job_id)
            batch = await run_in_threadpool(store.events, job_id, after, EVENT_BATCH)
        except NotFoundError:
            yield _end({"status": "deleted"})
            return
        except StorageUnavailableError as exc:
            body = ErrorBody(detail=str(exc)).model_dump_json()
            yield ServerSentEvent(body, event="unavailable", retry=UNAVAILABLE_RETRY_MS)
            return
        for event in batch:
            yield ServerSentEvent(event.model_dump_json(), id=str(event.id))
            after = event.id
        if len(batch) == EVENT_BATCH:
            continue
        if job.status.finished:
            yield _end({"status": job.status.value})
            return
        await asyncio.sleep(poll_s)


def _end(payload: dict[str, str]) -> ServerSentEvent:
    return ServerSentEvent(json.dumps(payload), event="end")
