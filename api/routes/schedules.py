"""``/v1/schedules/preview``: any schedule spec, its LR at every step and its PyTorch code.

The curve comes from the real torch scheduler (:func:`lrtune.schedules.preview`), so torch is
imported on the first preview, not when the API starts. A spec the scheduler refuses (a
``onecycle`` warm-up with no room, ``plateau`` without a metric per epoch) is a 422.

Example:
    >>> request = SchedulePreviewRequest.model_validate(
    ...     {"schedule": {"family": "step", "step_size": 2, "gamma": 0.5},
    ...      "base_lr": 0.1, "epochs": 4})
    >>> answer = schedule_preview(request)
    >>> [round(row[0], 3) for row in answer.lr_curve]
    [0.1, 0.1, 0.05, 0.05]
    >>> "lr_scheduler.StepLR" in answer.code
    True
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Body

from lrtune.api.deps import ReadAuth
from lrtune.api.errors import FieldInvalid
from lrtune.api.routes._docs import error_responses
from lrtune.api.schemas import SchedulePreview, SchedulePreviewRequest
from lrtune.schedules import preview, to_code

router = APIRouter(prefix="/schedules", tags=["schedules"])

_EXAMPLES: dict[str, Any] = {
    "cosine": {
        "summary": "Cosine annealing over 10 epochs with a 2-epoch linear warm-up",
        "value": {
            "schedule": {"family": "cosine", "T_max": 8, "warmup": {"steps": 2}},
            "base_lr": 0.1,
            "epochs": 10,
            "steps_per_epoch": 1,
        },
    },
    "onecycle": {
        "summary": "One-cycle, stepped every batch, two param groups",
        "value": {
            "schedule": {"family": "onecycle", "max_lr": 0.3},
            "base_lr": 0.3,
            "epochs": 5,
            "steps_per_epoch": 20,
            "group_multipliers": [1.0, 0.1],
        },
    },
}


@router.post("/preview", summary="Preview a schedule", responses=error_responses(401, 413, 422))
def preview_schedule(
    request: Annotated[SchedulePreviewRequest, Body(openapi_examples=_EXAMPLES)], _: ReadAuth
) -> SchedulePreview:
    """The schedule's LR of every param group at every step, and code building it."""
    return schedule_preview(request)


def schedule_preview(request: SchedulePreviewRequest) -> SchedulePreview:
    """Run the schedule on a throwaway optimizer and write its snippet.

    Raises:
        FieldInvalid: the scheduler refuses the spec for this run (at ``body``).
    """
    multipliers = request.group_multipliers or [1.0]
    try:
        lrs = preview(
            request.schedule,
            [request.base_lr * m for m in multipliers],
            request.steps_per_epoch,
            request.epochs,
            metrics=request.metrics,
            group_multipliers=multipliers,
        )
        code = to_code(
            request.schedule,
            steps_per_epoch=request.steps_per_epoch,
            epochs=request.epochs,
            groups="group_mults" if request.group_multipliers else "one",
        )
    except ValueError as exc:
        raise FieldInvalid(["body"], f"the schedule cannot run: {exc}", "schedule_error") from None
    if not np.isfinite(lrs).all():  # e.g. an eta_min near the float limit overflows
        step = int(np.argmax(~np.isfinite(lrs).all(axis=1)))
        raise FieldInvalid(
            ["body", "schedule"],
            f"the schedule's LR is not a finite number at step {step}: use smaller values",
            "schedule_error",
        )
    return SchedulePreview(
        schedule=request.schedule,
        epochs=request.epochs,
        steps_per_epoch=request.steps_per_epoch,
        group_multipliers=multipliers,
        lr_curve=lrs.tolist(),
        code=code,
    )
