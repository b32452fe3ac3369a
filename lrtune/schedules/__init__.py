"""Learning-rate schedule specs and the torch schedulers they build.

Each schedule family is a small, validated pydantic model (a "spec"); the specs form a
discriminated union on ``family`` so that a plain ``dict`` (from YAML, JSON or an Optuna
trial) parses into the right one. A spec turns into a real ``torch.optim.lr_scheduler``
object with :func:`build`, into a :class:`ScheduleDriver` that knows when to step it with
:func:`drive`, into the learning rates it would produce with :func:`preview`, and into a
paste-ready PyTorch snippet with :func:`to_code`.

One LR for every family: the LR-valued fields (``max_lr``, ``base_lr``, ``min_lr``) are those
of a parameter whose LR multiplier is 1, and param group ``i`` runs at ``value * mult_i``, as
it runs at ``lr * mult_i`` under the optimizer-LR families. :func:`build` takes the
multipliers (``group_multipliers``); without them group 0 counts as multiplier 1 and every other
group as its LR ratio to group 0. ``eta_min`` of the cosine families is a single scalar in
torch and is applied to every group as-is.

Importing this package and validating specs does not import torch; building, driving and
previewing schedulers do.

Example:

    .. code-block:: python

        import torch

        from lrtune.schedules import drive, parse_schedule, preview

        spec = parse_schedule({"family": "cosine", "T_max": 8, "warmup": {"steps": 2}})
        print(preview(spec, base_lrs=[0.1], steps_per_epoch=1, epochs=10)[:, 0])

        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        driver = drive(spec, optimizer, steps_per_epoch=3, epochs=10)
        for epoch in range(10):
            for _ in range(3):
                optimizer.zero_grad()
                loss = model(torch.randn(8, 4)).pow(2).mean()
                loss.backward()
                optimizer.step()
                driver.after_batch()
            driver.after_epoch(metric=loss.item())
        print(driver.last_lrs())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lrtune.schedules._build import PlateauWithWarmup, ScheduleDriver, build, drive, preview
from lrtune.schedules._codegen import (
    LR_DIGITS,
    MAX_RUN_EPOCHS,
    MAX_RUN_STEPS_PER_EPOCH,
    lr_literal,
    to_code,
)
from lrtune.schedules._specs import (
    FAMILIES,
    ConstantSchedule,
    CosineSchedule,
    CosineWarmRestartsSchedule,
    CyclicSchedule,
    ExponentialSchedule,
    InverseTimeDecay,
    LinearWarmup,
    MultiStepSchedule,
    OneCycleSchedule,
    PlateauSchedule,
    ScheduleSpec,
    StepSchedule,
    TimeDecaySchedule,
    cycles_momentum,
    parse_schedule,
)

if TYPE_CHECKING:
    from lrtune.schedules._build import Scheduler

__all__ = [
    "FAMILIES",
    "LR_DIGITS",
    "MAX_RUN_EPOCHS",
    "MAX_RUN_STEPS_PER_EPOCH",
    "ConstantSchedule",
    "CosineSchedule",
    "CosineWarmRestartsSchedule",
    "CyclicSchedule",
    "ExponentialSchedule",
    "InverseTimeDecay",
    "LinearWarmup",
    "MultiStepSchedule",
    "OneCycleSchedule",
    "PlateauSchedule",
    "PlateauWithWarmup",
    "ScheduleDriver",
    "ScheduleSpec",
    "Scheduler",
    "StepSchedule",
    "TimeDecaySchedule",
    "build",
    "cycles_momentum",
    "drive",
    "lr_literal",
    "parse_schedule",
    "preview",
    "to_code",
]


def __getattr__(name: str) -> Any:
    # `Scheduler` names torch classes: built on first use (by ._build) so that importing this
    # package (and validating specs) does not load torch.
    if name == "Scheduler":
        from lrtune.schedules import _build

        return _build.Scheduler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
