"""The HTTP API's own request and response shapes; everything else it serves is the library's.

Jobs, pages of jobs, events and stored recommendations are served as the job store returns
them (:mod:`lrtune.jobs.records`), and schedules as :mod:`lrtune.schedules` defines them. This
module holds only what exists because of HTTP: the error body, list envelopes, the schedule
preview's request and answer, the health reports, and the dashboard's views of a job's range
test and trials. All are pydantic models, so the OpenAPI schema is derived from them. (The
recommendation lookup's answer is the job store's :class:`~lrtune.jobs.RecommendationMatch`,
the range test's view its :class:`~lrtune.result.FinderView` and the registry's list
its :class:`~lrtune.jobs.records.RegistryList`, re-exported here: the client reads them
without importing the server.)

Example:
    >>> body = ErrorBody(detail="no job 'x' in the job store")
    >>> body.model_dump()
    {'detail': "no job 'x' in the job store", 'errors': []}
    >>> request = SchedulePreviewRequest.model_validate(
    ...     {"schedule": {"family": "cosine", "T_max": 4}, "base_lr": 0.1, "epochs": 4})
    >>> request.schedule.family, request.steps_per_epoch
    ('cosine', 1)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lrtune._pydantic import LRSteps
from lrtune.jobs.records import RecommendationMatch as RecommendationMatch
from lrtune.jobs.records import RegistryEntry as RegistryEntry
from lrtune.jobs.records import RegistryList as RegistryList
from lrtune.result import FinderView as FinderView
from lrtune.schedules import ScheduleSpec
from lrtune.spec import MAX_EPOCHS
from lrtune.study_view import TrialView

MAX_PREVIEW_STEPS = 20_000
"""Most optimizer steps one schedule preview may ask for (epochs times steps per epoch)."""
MAX_PREVIEW_VALUES = 20_000
"""Most LR values one preview computes (steps times param groups): its CPU time and its
answer's size grow with them (at most about 0.3 s and 0.5 MB)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FieldError(_Strict):
    """One invalid field of a request: where it is and what is wrong with it."""

    loc: list[str | int] = Field(
        description="path to the field, starting with body, query, path or header",
        examples=[["body", "model", "name"]],
    )
    msg: str = Field(description="what is wrong and, where it helps, how to fix it")
    type: str = Field(description="the kind of error, e.g. missing, unknown_name, int_parsing")


class ErrorBody(_Strict):
    """Every error response: a one-line message, plus the invalid fields for a 422."""

    detail: str = Field(description="what went wrong, in one line, naming the bad value")
    errors: list[FieldError] = Field(
        default_factory=list, description="the invalid fields (422 only)"
    )


class SchedulePreviewRequest(_Strict):
    """A schedule and the run it would drive: what ``POST /v1/schedules/preview`` takes."""

    schedule: ScheduleSpec
    base_lr: float = Field(
        gt=0, le=1e4, description="the optimizer's LR for a parameter whose multiplier is 1"
    )
    epochs: int = Field(ge=1, le=MAX_EPOCHS)
    steps_per_epoch: int = Field(1, ge=1, le=MAX_PREVIEW_STEPS)
    group_multipliers: list[float] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="LR multiplier of each param group (default: one group at 1)",
    )
    metrics: list[float] | None = Field(
        None, description="one validation loss per epoch: what the plateau family reacts to"
    )

    @model_validator(mode="after")
    def _bounded(self) -> SchedulePreviewRequest:
        steps = self.epochs * self.steps_per_epoch
        if steps > MAX_PREVIEW_STEPS:
            raise ValueError(
                f"epochs * steps_per_epoch is {steps}: at most {MAX_PREVIEW_STEPS} steps"
            )
        values = steps * len(self.group_multipliers or [1.0])
        if values > MAX_PREVIEW_VALUES:
            raise ValueError(
                f"epochs * steps_per_epoch * param groups is {values}: at most "
                f"{MAX_PREVIEW_VALUES} LR values (a smaller steps_per_epoch keeps the shape)"
            )
        if self.group_multipliers is not None and not all(
            0 < m <= 1000 for m in self.group_multipliers
        ):
            raise ValueError("group_multipliers must each be in (0, 1000]")
        return self


class SchedulePreview(_Strict):
    """A schedule's LR at every optimizer step and the PyTorch code that builds it."""

    schedule: ScheduleSpec
    epochs: int
    steps_per_epoch: int
    group_multipliers: list[float]
    lr_curve: LRSteps = Field(description="the LR of every param group at every step")
    code: str = Field(
        description="paste-ready PyTorch code building the same scheduler; it declares `epochs` "
        "(and `steps_per_epoch = len(train_loader)` for a schedule stepped per batch) at this "
        "run's values and writes every length as a fraction of the run, so another `epochs` "
        "keeps the shape"
    )


class Health(_Strict):
    """The process is up (``/healthz``); says nothing about the database."""

    status: Literal["ok"] = "ok"


class Readiness(_Strict):
    """The API can serve (``/readyz``): its database is reachable and at the current schema."""

    status: Literal["ready", "unavailable"]
    database: str = Field(description="the job store's URL, password hidden")
    schema_revision: str = Field(description="the revision this lrtune needs")
    detail: str | None = Field(None, description="why it is not ready")
    live_workers: int | None = Field(
        None, description="workers with a recent heartbeat (null when the store is unavailable)"
    )
    note: str | None = Field(
        None, description="what a ready API still lacks, e.g. no live worker to run jobs"
    )
    embedded_workers: int | None = Field(
        None, description="worker processes lrtune serve started beside this API (null: none)"
    )
    embedded_workers_running: int | None = Field(
        None,
        description="how many of them still run: none is a 503, fewer than started a note",
    )
    auth: bool = Field(
        False,
        description="whether this server has a token (LRTUNE_API_TOKEN): the dashboard offers "
        "its login only then",
    )


class TrialsView(_Strict):
    """A job's search trials, then its confirmation runs: ``GET /v1/jobs/{id}/trials``."""

    job_id: str
    status: str = Field(description="the job's state")
    metric: str = Field(description="the searched metric (the trials' `value`)")
    direction: Literal["minimize", "maximize"]
    data: list[TrialView]
    count: int
