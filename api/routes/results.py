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
range-test progress (what else the view shows), and served with its ``ETag``. Which finished
view a job has is itself reused for ``LRTUNE_ANSWER_TTL_S`` (1 s by default), as the
recommendation lookups do, without reading the job: its ``status`` is at most that old, and
a job deleted through another API process is served at most that long after (through this
one, not at all). A running range test's view is read anew each time.

``/finder.png`` is the same range test as a PNG (matplotlib's Agg, imported on the first
request): the finished test as :meth:`~lrtune.result.LRFinderResult.plot` draws it with the LR
bounds shaded, or, while it runs, each seed's curve so far from those events' points. Its
``ETag`` changes when a new batch of points arrives and when the test finishes.

``/trials.csv`` is the same list as a table to open in a spreadsheet: one row per search trial
or confirmation run (:data:`TRIAL_CSV_COLUMNS`), the metric's final value, the epochs it ran.

Example:
    >>> [route.path.removeprefix("/jobs/{job_id}/") for route in router.routes]
    ['finder', 'finder.png', 'trials', 'trials.csv']
"""

from __future__ import annotations

import csv
import hashlib
import io
from functools import partial
from typing import TYPE_CHECKING

from fastapi import APIRouter, Response

from lrtune import __version__
from lrtune.api.cache import CachedBody, ResponseCache, listed_tags
from lrtune.api.deps import (
    IfNoneMatch,
    ReadAuth,
    ResponsesDep,
    SettingsDep,
    StoreDep,
    StudiesDep,
)
from lrtune.api.routes._docs import NOT_MODIFIED, error_responses
from lrtune.api.routes.jobs import JobId
from lrtune.api.schemas import FinderView, TrialsView
from lrtune.exceptions import NotFoundError
from lrtune.jobs import JobRecord, JobStore
from lrtune.study_view import read_finder, read_trials

if TYPE_CHECKING:  # the API imports Optuna on the first study read, not at start
    import optuna

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get(
    "/{job_id}/finder",
    summary="A job's range test (loss vs LR)",
    response_model=FinderView,
    responses={
        **NOT_MODIFIED,
        **error_responses(401, 404, 422, 503),
    },
)
async def get_finder(
    job_id: JobId,
    store: StoreDep,
    studies: StudiesDep,
    responses: ResponsesDep,
    settings: SettingsDep,
    _: ReadAuth,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Per-seed and median loss-vs-LR curves, the band, every rule's suggestion, the chosen
    one, the seeds' spread and the LR bounds; null until the range test has finished, with
    the steps done so far."""
    ask = partial(_finder_body, store, studies, responses, job_id)
    served = await responses.answer(("finder", job_id), settings.answer_ttl_s, ask)
    return served.response(if_none_match)


def _finder_body(
    store: JobStore, studies: optuna.storages.BaseStorage, responses: ResponseCache, job_id: str
) -> tuple[str, CachedBody, bool]:
    """The job's id, its finder view now, and whether its range test has finished: then the
    view is kept in the cache, and reused (a running one is read anew, so that the job page's
    last read sees it end)."""
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
            return job.id, CachedBody.of(body), False
        cached = responses.put(key, body)
    return job.id, cached, True


PNG_RESPONSE = {
    "description": "The loss-vs-LR plot: finished, or the curves so far while it runs",
    "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
}


@router.get(
    "/{job_id}/finder.png",
    summary="A job's range test as a PNG plot",
    response_class=Response,
    responses={
        200: PNG_RESPONSE,
        **NOT_MODIFIED,
        **error_responses(401, 404, 422, 503),
    },
)
def get_finder_png(
    job_id: JobId,
    store: StoreDep,
    studies: StudiesDep,
    _: ReadAuth,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Loss vs LR on a log axis: per-seed curves faint, the median bold with its band, every
    rule's suggestion marked, the chosen one highlighted and the search's LR bounds shaded.
    While the range test runs: each seed's curve so far. 404 until it has a first point."""
    from lrtune.plots import plot_live_range_test, render_png

    job = store.get(job_id)
    result, bounds = read_finder(studies, job.study_name)
    if result is not None:
        etag = _png_tag(job, "finished")
        draw = partial(result.plot, bounds=bounds)
    else:
        points, last_event = _live_points(store, job)
        etag = _png_tag(job, f"live-{last_event}")
        draw = partial(plot_live_range_test, points)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match is not None and etag in listed_tags(if_none_match):
        return Response(status_code=304, headers=headers)
    return Response(render_png(draw), media_type="image/png", headers=headers)


def _live_points(store: JobStore, job: JobRecord) -> tuple[list[tuple[float, float, int]], int]:
    """The range-test points the job's events carried so far, and the last such event's id.

    Raises:
        NotFoundError: none yet, with what to wait for.
    """
    points: list[tuple[float, float, int]] = []
    last_event, after = 0, 0
    while batch := store.events(job.id, after_id=after, limit=500):
        for event in batch:
            carried = event.payload.get("points")
            if isinstance(carried, list) and carried:
                points += [(p[0], p[1], p[2] if len(p) > 2 else 0) for p in carried]
                last_event = event.id
        after = batch[-1].id
    if not points:
        raise NotFoundError(
            f"job {job.id!r} has no range-test points to plot: it is {job.status.value}. The "
            "plot appears once its range test has reported its first steps "
            f"(GET /v1/jobs/{job.id}/finder says how far it has got)"
        )
    return points, last_event


def _png_tag(job: JobRecord, state: str) -> str:
    """A strong ETag of the PNG: what it is drawn from, and the code that draws it."""
    digest = hashlib.sha256(f"{__version__}:{job.id}:{state}".encode()).hexdigest()[:32]
    return f'"{digest}"'


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


TRIAL_CSV_COLUMNS = (
    "kind",
    "number",
    "state",
    "family",
    "base_lr",
    "value",
    "epochs",
    "candidate",
    "seed",
    "status",
    "reason",
)
"""The columns of ``/trials.csv``: :class:`~lrtune.study_view.TrialView`'s scalar fields, and
``epochs`` as the count of epochs the run trained (or reported)."""


@router.get(
    "/{job_id}/trials.csv",
    summary="A job's trials and confirmation runs as CSV",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        **error_responses(401, 404, 422, 503),
    },
)
def get_trials_csv(job_id: JobId, store: StoreDep, studies: StudiesDep, _: ReadAuth) -> Response:
    """Every search trial, then every confirmation run, one CSV row each (the columns are
    :data:`TRIAL_CSV_COLUMNS`; full-precision numbers, empty cells for what a run lacks)."""
    job = store.get(job_id)
    trials = read_trials(studies, job.study_name, job.spec.search.metric)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(TRIAL_CSV_COLUMNS)
    for trial in trials:
        row = trial.model_dump(include=set(TRIAL_CSV_COLUMNS) - {"epochs"})
        row["epochs"] = len(trial.epochs)
        writer.writerow("" if row[c] is None else row[c] for c in TRIAL_CSV_COLUMNS)
    filename = f"lrtune-job-{job.id[:8]}-trials.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
