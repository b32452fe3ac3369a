"""``/v1/jobs/{id}/finder`` and ``/v1/jobs/{id}/trials``: a job's range test and trials.

The range test and the trials are read from the job's Optuna study (where the worker stores
them) by :mod:`lrtune.study_view`, which imports Optuna on the first call and never torch.
The recommendation, with its LR-vs-step curve, confirmation table and snippet, is
``GET /v1/jobs/{id}/recommendation`` (:mod:`.jobs`).

While the range test runs, ``/finder`` answers 200 with ``range_test: null`` and the steps
done so far. The job page draws the growing curve from the job's ``progress`` events instead:
an event whose payload carries ``points``, ``[[lr, smoothed_loss, seed], ...]`` (the points
measured since the previous event), adds them to the chart; its progress fields
(``range_test_steps_done``, ``range_test_steps_total``) move the progress bar.

A finished range test never changes: once it is stored, the finder view's body is kept in the
process's :class:`~lrtune.api.cache.ResponseCache`, keyed by the job, its status and its
range-test progress (what else the view shows), and served with its ``ETag``.

Example:
    >>> [route.path for route in router.routes]
    ['/jobs/{job_id}/finder', '/jobs/{job_id}/trials']
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from starlette.responses import Response

from lrtune.api.deps import ReadAuth, ResponsesDep, StoreDep, StudiesDep
from lrtune.api.routes._docs import error_responses
from lrtune.api.routes.jobs import JobId
from lrtune.api.schemas import FinderView, TrialsView
from lrtune.study_view import read_finder, read_trials

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get(
    "/{job_id}/finder",
    summary="A job's range test (loss vs LR)",
    response_model=FinderView,
    responses={
        304: {"description": "Unchanged since the `ETag` sent in `If-None-Match`"},
        **error_responses(401, 404, 422, 503),
    },
)
def get_finder(
    job_id: JobId,
    store: StoreDep,
    studies: StudiesDep,
    responses: ResponsesDep,
    _: ReadAuth,
    if_none_match: Annotated[
        str | None, Header(description="the `ETag` of the copy the client has")
    ] = None,
) -> Response:
    """Per-seed and median loss-vs-LR curves, the band, every rule's suggestion, the chosen
    one, the seeds' spread and the LR bounds; null until the range test has finished, with
    the steps done so far."""
    job = store.get(job_id)
    progress = job.progress
    steps = (progress.range_test_steps_done, progress.range_test_steps_total)
    key = ("finder", job.id, job.status.value, *steps)
    cached = responses.get(key)
    if cached is None:
        result, bounds = read_finder(studies, job.study_name)
        view = FinderView(
            job_id=job.id,
            status=job.status.value,
            steps_done=steps[0],
            steps_total=steps[1],
            range_test=result,
            bounds=bounds,
        )
        body = view.model_dump_json(by_alias=True).encode()
        if result is None:  # still running: nothing to keep
            return Response(body, media_type="application/json")
        cached = responses.put(key, body)
    return cached.response(if_none_match)


@router.get(
    "/{job_id}/trials",
    summary="A job's trials and confirmation runs",
    responses=error_responses(401, 404, 422, 503),
)
def get_trials(job_id: JobId, store: StoreDep, studies: StudiesDep, _: ReadAuth) -> TrialsView:
    """Every search trial, then every confirmation run: family, params, state, value,
    per-epoch values, why it was pruned or failed, and its LR at every step."""
    job = store.get(job_id)
    search = job.spec.search
    trials = read_trials(studies, job.study_name, search.metric)
    return TrialsView(
        job_id=job.id,
        status=job.status.value,
        metric=search.metric,
        direction=search.direction or "minimize",
        data=trials,
        count=len(trials),
    )
