"""Learning-rate-free baselines: Prodigy and schedule-free, each at its documented defaults.

Users who do not want to tune an LR at all reach for an optimizer that needs none. lrtune
confirms two of them beside the tuned schedules, on the same seeds and epochs, so the verdict
can say whether tuning was worth it on this job:

- ``prodigy`` (``prodigyopt.Prodigy``): ``lr=1.0`` with cosine annealing over the run, as its
  README recommends; the optimizer estimates the step size ``d`` itself.
- ``schedule_free`` (``schedulefree``): ``SGDScheduleFree`` for an SGD job, ``AdamWScheduleFree``
  for every other optimizer, at its constructor's default LR and a constant schedule (it needs
  none). It trains at one point and evaluates at another (an average), so it needs
  ``optimizer.train()`` before training and ``optimizer.eval()`` before evaluating or
  saving, and BatchNorm's running statistics recomputed at the averaged weights before
  evaluation (:func:`prepare_to_evaluate`).

Each takes the job's ``weight_decay`` (regularisation, not an LR choice) and otherwise its own
defaults; a job's param groups keep their LR multipliers on schedule-free's ``lr``. Prodigy
estimates one step size for all groups and refuses groups at different LRs, so a job whose
param groups scale the LR (``lr_mult`` other than 1) has no Prodigy baseline
(:func:`unsupported`). The LR a table shows for them is that ``lr`` argument, not an effective
step size.

This module names the recipes without importing torch or the packages (the HTTP API validates
specs without them); building an optimizer imports them.

Example:
    >>> from lrtune.spec import OptimizerSpec
    >>> sgd = OptimizerSpec(name="sgd")
    >>> label("schedule_free", sgd), recipe("schedule_free", sgd, epochs=10)
    ('schedule-free sgd', ({'family': 'constant'}, 1.0))
    >>> recipe("prodigy", sgd, epochs=10)
    ({'family': 'cosine', 'T_max': 10}, 1.0)
"""

from __future__ import annotations

import contextlib
import io
import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

    from lrtune.spec import JobSpec, OptimizerSpec

LRFreeName = Literal["prodigy", "schedule_free"]
LR_FREE: tuple[LRFreeName, ...] = ("prodigy", "schedule_free")

# The constructors' default LRs (pinned against the installed packages by a test).
PRODIGY_LR = 1.0
SCHEDULE_FREE_SGD_LR = 1.0
SCHEDULE_FREE_ADAMW_LR = 0.0025

BATCHNORM_BATCHES = 50
"""Training batches run (without gradients) at the averaged weights to recompute BatchNorm's
running statistics before a schedule-free model is evaluated, as schedule-free's README does."""


def _schedule_free_class(optimizer: OptimizerSpec) -> str:
    return "SGDScheduleFree" if optimizer.name == "sgd" else "AdamWScheduleFree"


def label(name: LRFreeName, optimizer: OptimizerSpec) -> str:
    """The baseline's name in tables and verdicts: ``prodigy``, ``schedule-free sgd``, ..."""
    if name == "prodigy":
        return "prodigy"
    return "schedule-free sgd" if optimizer.name == "sgd" else "schedule-free adamw"


def optimizer_class(name: LRFreeName, optimizer: OptimizerSpec) -> str:
    """The class the baseline trains with, as its snippet imports it."""
    if name == "prodigy":
        return "prodigyopt.Prodigy"
    return f"schedulefree.{_schedule_free_class(optimizer)}"


def recipe(name: LRFreeName, optimizer: OptimizerSpec, epochs: int) -> tuple[dict[str, Any], float]:
    """(schedule, lr) of the baseline over a run of ``epochs``: the documented recipe."""
    if name == "prodigy":
        return {"family": "cosine", "T_max": epochs}, PRODIGY_LR
    lr = SCHEDULE_FREE_SGD_LR if optimizer.name == "sgd" else SCHEDULE_FREE_ADAMW_LR
    return {"family": "constant"}, lr


def unsupported(name: LRFreeName, job: JobSpec) -> str | None:
    """Why the baseline ``name`` cannot train ``job`` as the job asks, or None.

    >>> from lrtune.spec import JobSpec
    >>> job = JobSpec.model_validate({"model": {"name": "mlp"}, "dataset": {"name": "wine"},
    ...     "param_groups": [{"prefix": "1.", "lr_mult": 0.1}]})
    >>> unsupported("prodigy", job)
    'prodigy estimates one step size for every param group: the job scales group LRs (lr_mult)'
    >>> unsupported("schedule_free", job) is None
    True
    """
    if name == "prodigy" and any(group.lr_mult != 1 for group in job.param_groups):
        return (
            "prodigy estimates one step size for every param group: the job scales group LRs "
            "(lr_mult)"
        )
    lrs = job.task.lrs if job.task is not None else None
    if name == "prodigy" and lrs is not None and len(set(lrs)) > 1:
        return (
            "prodigy estimates one step size for every param group: the task builds its "
            "groups at different LRs"
        )
    return None


def build_optimizer(
    name: LRFreeName, optimizer: OptimizerSpec, groups: list[dict[str, Any]]
) -> torch.optim.Optimizer:
    """The baseline's optimizer over ``groups`` (each a dict with params and lr)."""
    weight_decay = _weight_decay(optimizer)
    if name == "prodigy":
        from prodigyopt import Prodigy

        # Prodigy prints a line on construction; stdout may carry JSON (lrtune tune --json).
        with contextlib.redirect_stdout(io.StringIO()):
            return Prodigy(groups, weight_decay=weight_decay)
    import schedulefree

    cls = getattr(schedulefree, _schedule_free_class(optimizer))
    return cls(groups, weight_decay=weight_decay)


def _weight_decay(optimizer: OptimizerSpec) -> float:
    """The job's weight decay, wherever its optimizer keeps it (a field or ``kwargs``)."""
    return float(optimizer.resolved_keyword("weight_decay") or 0.0)


def needs_modes(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` switches between train and eval points (schedule-free does)."""
    return callable(getattr(optimizer, "train", None)) and callable(
        getattr(optimizer, "eval", None)
    )


def prepare_to_train(optimizer: torch.optim.Optimizer) -> None:
    """Put a schedule-free optimizer's parameters at its training point; others: nothing."""
    if needs_modes(optimizer):
        optimizer.train()


def prepare_to_evaluate(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    batches: Iterable[Any],
    forward: Any,
) -> None:
    """Put a schedule-free optimizer's parameters at the averaged point for evaluation.

    A model with BatchNorm then runs ``BATCHNORM_BATCHES`` of ``batches`` through
    ``forward(model, batch)`` in train mode without gradients, so its running statistics
    describe the averaged weights (they were gathered at the training point). Other
    optimizers: nothing.
    """
    if not needs_modes(optimizer):
        return
    import torch
    from torch import nn

    optimizer.eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    model.train()
    with torch.no_grad():
        for batch in itertools.islice(batches, BATCHNORM_BATCHES):
            forward(model, batch)


def code(
    name: LRFreeName, job: Any, *, model_name: str = "model", epochs: int | None = None
) -> str:
    """Paste-ready PyTorch for the baseline as lrtune confirmed it on ``job`` (a JobSpec).

    ``epochs``: the user's run length, written at the top (default: the job's); Prodigy's
    cosine spans it, so training longer changes that one number.
    """
    from lrtune.snippet import GROUPS_ARGUMENT, param_groups_code

    if not model_name.isidentifier():
        raise ValueError(f"model_name must be a Python identifier, got {model_name!r}")
    optimizer = job.optimizer
    _, lr = recipe(name, optimizer, job.search.epochs)
    constructor = f"{optimizer_class(name, optimizer)}("
    if job.param_groups:
        groups = [f"lr = {lr!r}", *param_groups_code(job, model_name)]
        params = GROUPS_ARGUMENT
    else:
        groups, params = [], f"{model_name}.parameters(), lr={lr!r}"
    build = f"optimizer = {constructor}{params}, weight_decay={_weight_decay(optimizer)!r})"
    module = optimizer_class(name, optimizer).split(".")[0]
    if name == "prodigy":
        tuned = job.search.epochs
        return "\n".join(
            [
                f"import {module}",
                "from torch.optim import lr_scheduler",
                "",
                f"epochs = {epochs or tuned}  # lrtune confirmed it over {tuned} epochs",
                "",
                *groups,
                build,
                "scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)",
                "# Step per epoch: scheduler.step() once at the end of every epoch. Prodigy",
                "# estimates its own step size: there is no LR to tune (lr=1.0 scales it).",
                "",
            ]
        )
    return "\n".join(
        [
            f"import {module}",
            "",
            *groups,
            build,
            "# No scheduler and no LR to tune. Call optimizer.train() with model.train() before",
            "# training, and optimizer.eval() with model.eval() before evaluating or saving;",
            "# with BatchNorm, first recompute its statistics at the eval weights: a few",
            "# training batches through the model in train mode under torch.no_grad().",
            "",
        ]
    )
