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

Importing this module and validating specs does not import torch; building, driving and
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

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator

if TYPE_CHECKING:  # torch loads only where a scheduler is built: specs validate without it
    import numpy as np
    import torch
    from torch.optim import Optimizer, lr_scheduler

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

FAMILIES: tuple[str, ...] = (
    "constant",
    "step",
    "multistep",
    "exponential",
    "time_decay",
    "cosine",
    "cosine_warm_restarts",
    "onecycle",
    "cyclic",
    "plateau",
)

Interval = Literal["epoch", "batch"]
GroupLRs = Literal["any", "one", "group_mults"]


class LinearWarmup(BaseModel):
    """Linear warm-up from ``start_factor * lr`` to ``lr`` in front of the main schedule.

    ``steps`` counts the schedule's own stepping units: epochs for per-epoch families,
    batches for per-batch ones. The main schedule starts from its beginning after it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    steps: int = Field(ge=1)
    start_factor: float = Field(default=0.1, gt=0.0, le=1.0)


class _ScheduleBase(BaseModel):
    # Every float field must be finite: NaN or inf would only show up as NaN LRs later.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    interval: ClassVar[Interval] = "epoch"
    warmup: LinearWarmup | None = None

    def _make_scheduler(
        self, optimizer: Optimizer, group_mults: list[float], total_steps: int
    ) -> lr_scheduler.LRScheduler:
        raise NotImplementedError

    def _scheduler_code(self, code: _CodeContext) -> tuple[list[str], str]:
        """Return the set-up lines and the constructor call expression for the snippet."""
        raise NotImplementedError


class ConstantSchedule(_ScheduleBase):
    """Keep the optimizer's lr (``ConstantLR(factor=1.0, total_iters=0)``)."""

    family: Literal["constant"] = "constant"

    def _make_scheduler(
        self, optimizer: Optimizer, group_mults: list[float], total_steps: int
    ) -> lr_scheduler.LRScheduler:
        from torch.optim import lr_scheduler

        return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


class StepSchedule(_ScheduleBase):
    """Multiply the lr by ``gamma`` every ``step_size`` epochs (``StepLR``)."""

    family: Literal["step"] = "step"
    step_size: int = Field(ge=1)
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)

    def _make_scheduler(
        self, optimizer: Optimizer, group_mults: list[float], total_steps: int
    ) -> lr_scheduler.LRScheduler:
        from torch.optim import lr_scheduler

        return lr_scheduler.StepLR(optimizer, step_size=self.step_size, gamma=self.gamma)

    def _scheduler_code(self, code: _CodeContext) -> tuple[list[str], str]:
        return [], _call(
            "StepLR",
            code.optimizer,
            f"step_size={code.epochs_length(self.step_size)}",
            f"gamma={self.gamma!r}",
        )


class MultiStepSchedule(_ScheduleBase):
    """Multiply the lr by ``gamma`` at each epoch in ``milestones`` (``MultiStepLR``)."""

    family: Literal["multistep"] = "multistep"
    milestones: tuple[Annotated[int, Field(ge=1)], ...] = Field(min_length=1)
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)

    @field_validator("milestones")
    @classmethod
    def _check_strictly_increasing(cls, milestones: tuple[int, ...]) -> tuple[int, ...]:
        if any(later <= earlier for earlier, later in itertools.pairwise(milestones)):
            raise ValueError(
                f"milestones must be strictly increasing without duplicates, got {milestones}"
            )
        return milestones

    def _make_scheduler(
        self, optimizer: Optimizer, group_mults: list[float], total_steps: int
    ) -> lr_scheduler.LRScheduler:
        from torch.optim import lr_scheduler

        return lr_scheduler.MultiStepLR(
            optimizer, milestones=list(self.milestones), gamma=self.gamma
        )

    def _scheduler_code(self, code: _CodeContext) -> tuple[list[str], str]:
        return [], _call(
            "MultiStepLR",
            code.optimizer,
            f"milestones={code.epoch_milestones(self.milestones)}",
            f"gamma={self.gamma!r}",
        )


class ExponentialSchedule(_ScheduleBase):
    """Multiply the lr by ``gamma`` every epoch (``ExponentialLR``)."""

    family: Literal["exponential"] = "exponential"
    gamma: float = Field(gt=0.0, le=1.0)

    def _make_scheduler(
        self, optimizer: Optimizer, group_mults: list[float], total_steps: int
    ) -> lr_scheduler.LRScheduler:
        from torch.optim import lr_scheduler

        return lr_scheduler.ExponentialLR(optimizer, gamma=self.gamma)

    def _scheduler_code(self, code: _CodeContext) -> tuple[list[str], str]:
        return [], _call("ExponentialLR", code.optimizer, f"gamma={code.per_epoch(self.gamma)}")


class InverseTimeDecay:
    """The ``LambdaLR`` factor ``1 / (1 + decay * epoch)``.

    A class rather than a lambda so that ``LambdaLR.state_dict()`` records ``decay`` and the
    scheduler can be pickled and deep-copied.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def __call__(self, epoch: int) -> float:
        return 1.0 / (1.0 + self.decay * epoch)


class TimeDecaySchedule(_ScheduleBase):
    """Inverse time decay, ``lr_n = lr_0 / (1 + decay * n)`` (``LambdaLR``)."""

    family: Literal["time_decay"] = "time_decay"
    decay: float = Field(gt=0.0)

    def _make_scheduler(
        self, optimizer: Optimizer, group_mults: list[float], total_steps: int
    ) -> lr_scheduler.LRScheduler:
        from torch.optim import lr_scheduler

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=InverseTimeDecay(self.decay))

    def _scheduler_code(self, code: _CodeContext) -> tuple[list[str], str]:
        return [], _call(
            "LambdaLR",
            code.optimizer,
            f"lr_lambda=lambda epoch: 1.0 / (1.0 + {self.decay!r} * {code.epoch_of_run()})",
        )


class CosineSchedule(_ScheduleBase):
    """Cosine annealing from lr to ``eta_min`` over ``T_max`` epochs (``CosineAnnealingLR``).

    ``eta_min`` is a scalar in torch and applies to every param group unscaled.
    """

    family: Literal["cosine"] = "cosine"
    T_max: int = Field(ge=1)
    eta_min: float = Field(default=0.0, ge=0.0)

    def _make_scheduler(
        self, optimizer: Optimizer, group_mults: list[float], total_steps: int
    ) -> lr_scheduler.LRScheduler:
        from torch.optim import lr_scheduler

        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.T_max, eta_min=self.eta_min)

    def _scheduler_code(self, code: _CodeContext) -> tuple[list[str], str]:
        return [], _call(
            "CosineAnnealingLR",
            code.optimizer,
            f"T_max={code.epochs_length(self.T_max)}",
            f"eta_min={lr_literal(self.eta_min)}",
        )


class CosineWarmRestartsSchedule(_ScheduleBase):
    """SGDR cosine annealing restarting after ``T_0``, ``T_0 * T_mult``, ... epochs.

    ``eta_min`` is a scalar in torch and applies to every param group unscaled.
    """

    family: Literal["cosine_warm_restarts"] = "cosine_warm_restarts"
    T_0: int = Field(ge=1)
    T_mult: int = Field(default=1, ge=1)
    eta_min: float = Field(default=0.0, ge=0.0)

    def _make_scheduler(
        self, optimizer: Optimizer, group_mults: list[float], total_steps: int
    ) -> lr_scheduler.LRScheduler:
        from torch.optim import lr_scheduler

        return lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=self.T_0, T_mult=self.T_mult, eta_min=self.eta_min
        )

    def _scheduler_code(self, code: _CodeContext) -> tuple[list[str], str]:
        return [], _call(
            "CosineAnnealingWarmRestarts",
            code.optimizer,
            f"T_0={code.epochs_length(self.T_0)}",
            f"T_mult={self.T_mult}",
            f"eta_min={lr_literal(self.eta_min)}",
        )


class OneCycleSchedule(_ScheduleBase):
    """The 1cycle policy over the whole run, stepped per batch (``OneCycleLR``).

    The optimizer's own lr is ignored: the cycle starts at ``max_lr / div_factor``. Momentum
    (or Adam's beta1) is cycled when the optimizer has it, as torch does by default.
    """

    interval: ClassVar[Interval] = "batch"
    family: Literal["onecycle"] = "onecycle"
    max_lr: float = Field(gt=0.0)
    pct_start: float = Field(default=0.3, gt=0.0, lt=1.0)
    div_factor: float = Field(default=25.0, ge=1.0)
    final_div_factor: float = Field(default=1e4, ge=1.0)
    anneal_strategy: Literal["cos", "linear"] = "cos"
    three_phase: bool = False

    @field_validator("warmup")
    @classmethod
    def _reject_warmup(cls, warmup: LinearWarmup | None) -> LinearWarmup | None:
        if warmup is not None:
            raise ValueError(
                "onecycle has its own warm-up: it ramps up for the first pct_start of the run; "
                "set pct_start/div_factor instead of warmup"
            )
        return warmup

    @field_validator("three_phase")
    @classmethod
    def _check_three_phase_fits(cls, three_phase: bool, info: ValidationInfo) -> bool:
        pct_start = info.data.get("pct_start")
        if three_phase and pct_start is not None and pct_start >= 0.5:
            raise ValueError(
                f"three_phase needs pct_start < 0.5 (up and down phases each take pct_start "
                f"of the run), got pct_start={pct_start}"
            )
        return three_phase

    def _make_scheduler(
        self, optimizer: Optimizer, group_mults: list[float], total_steps: int
    ) -> lr_scheduler.LRScheduler:
        from torch.optim import lr_scheduler

        _check_onecycle_has_room(self.pct_start, total_steps)
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=_scale_to_groups(self.max_lr, group_mults),
            total_steps=total_steps,
            pct_start=self.pct_start,
            anneal_strategy=self.anneal_strategy,
            cycle_momentum=_optimizer_cycles_momentum(self, optimizer),
            div_factor=self.div_factor,
            final_div_factor=self.final_div_factor,
            three_phase=self.three_phase,
        )

    def _scheduler_code(self, code: _CodeContext) -> tuple[list[str], str]:
        momentum_setup, cycle_momentum = code.cycle_momentum_code(allow_betas=True)
        return [*code.lr_setup(), *momentum_setup], _call(
            "OneCycleLR",
            code.optimizer,
            f"max_lr={code.lr(self.max_lr)}",
            f"total_steps={code.total_steps}",
            f"pct_start={self.pct_start!r}",
            f"anneal_strategy={self.anneal_strategy!r}",
            f"cycle_momentum={cycle_momentum}",
            f"div_factor={self.div_factor!r}",
            f"final_div_factor={self.final_div_factor!r}",
            f"three_phase={self.three_phase!r}",
        )


class CyclicSchedule(_ScheduleBase):
    """Cyclical lr between ``base_lr`` and ``max_lr``, stepped per batch (``CyclicLR``).

    Each group's ``initial_lr`` is set to its ``base_lr``, so a warm-up ramps towards
    ``base_lr``. Momentum is cycled only for optimizers with a ``momentum`` > 0 (not for
    Adam-style betas, whose beta1 would otherwise be moved to 0.8-0.9).
    """

    interval: ClassVar[Interval] = "batch"
    family: Literal["cyclic"] = "cyclic"
    base_lr: float = Field(gt=0.0)
    max_lr: float
    step_size_up: int = Field(ge=1)
    step_size_down: int | None = Field(default=None, ge=1)
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    gamma: float = Field(default=1.0, gt=0.0, le=1.0)

    @field_validator("max_lr")
    @classmethod
    def _check_above_base_lr(cls, max_lr: float, info: ValidationInfo) -> float:
        base_lr = info.data.get("base_lr")
        if base_lr is not None and max_lr <= base_lr:
            raise ValueError(f"max_lr must be greater than base_lr={base_lr}, got {max_lr}")
        return max_lr

    def _make_scheduler(
        self, optimizer: Optimizer, group_mults: list[float], total_steps: int
    ) -> lr_scheduler.LRScheduler:
        from torch.optim import lr_scheduler

        base_lrs = _scale_to_groups(self.base_lr, group_mults)
        # CyclicLR's first step reads an initial_lr already in the groups (it sets its own
        # base_lrs only afterwards), and a warm-up ramps towards initial_lr: make it base_lr.
        for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["initial_lr"] = base_lr
        return lr_scheduler.CyclicLR(
            optimizer,
            base_lr=base_lrs,
            max_lr=_scale_to_groups(self.max_lr, group_mults),
            step_size_up=self.step_size_up,
            step_size_down=self.step_size_down,
            mode=self.mode,
            gamma=self.gamma,
            cycle_momentum=_optimizer_cycles_momentum(self, optimizer),
        )

    def _scheduler_code(self, code: _CodeContext) -> tuple[list[str], str]:
        momentum_setup, cycle_momentum = code.cycle_momentum_code(allow_betas=False)
        setup = [*code.lr_setup(), *momentum_setup]
        base_lr = code.lr(self.base_lr)
        if code.groups == "any":  # the optimizer may have been scheduled before
            setup += [
                f"base_lrs = {base_lr}",
                "# CyclicLR's first step and a warm-up start from any existing initial_lr: set it.",
                f"for group, base_lr in zip({code.optimizer}.param_groups, base_lrs):",
                '    group["initial_lr"] = base_lr',
            ]
            base_lr = "base_lrs"
        return setup, _call(
            "CyclicLR",
            code.optimizer,
            f"base_lr={base_lr}",
            f"max_lr={code.lr(self.max_lr)}",
            f"step_size_up={code.steps_length(self.step_size_up)}",
            "step_size_down="
            + ("None" if self.step_size_down is None else code.steps_length(self.step_size_down)),
            f"mode={self.mode!r}",
            f"gamma={self.gamma!r}",
            f"cycle_momentum={cycle_momentum}",
        )


class PlateauSchedule(_ScheduleBase):
    """Divide the lr by ``1 / factor`` when a metric stops improving (``ReduceLROnPlateau``).

    Stepped once per epoch with the validation metric.
    """

    family: Literal["plateau"] = "plateau"
    mode: Literal["min", "max"] = "min"
    factor: float = Field(default=0.1, gt=0.0, lt=1.0)
    patience: int = Field(default=10, ge=0)
    threshold: float = Field(default=1e-4, ge=0.0)
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0.0)

    def _make_plateau(
        self, optimizer: Optimizer, group_mults: list[float]
    ) -> lr_scheduler.ReduceLROnPlateau:
        from torch.optim import lr_scheduler

        return lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=self.mode,
            factor=self.factor,
            patience=self.patience,
            threshold=self.threshold,
            threshold_mode=self.threshold_mode,
            cooldown=self.cooldown,
            min_lr=_scale_to_groups(self.min_lr, group_mults),
        )

    def _make_scheduler(
        self, optimizer: Optimizer, group_mults: list[float], total_steps: int
    ) -> lr_scheduler.LRScheduler:
        return self._make_plateau(optimizer, group_mults)

    def _scheduler_code(self, code: _CodeContext) -> tuple[list[str], str]:
        setup: list[str] = []
        min_lr_code = lr_literal(self.min_lr)
        if self.min_lr > 0:  # min_lr 0 is the same in every group
            setup, min_lr_code = code.lr_setup(), code.lr(self.min_lr)
        return setup, _call(
            "ReduceLROnPlateau",
            code.optimizer,
            f"mode={self.mode!r}",
            f"factor={self.factor!r}",
            f"patience={self.patience}",
            f"threshold={self.threshold!r}",
            f"threshold_mode={self.threshold_mode!r}",
            f"cooldown={self.cooldown}",
            f"min_lr={min_lr_code}",
        )


ScheduleSpec = Annotated[
    ConstantSchedule
    | StepSchedule
    | MultiStepSchedule
    | ExponentialSchedule
    | TimeDecaySchedule
    | CosineSchedule
    | CosineWarmRestartsSchedule
    | OneCycleSchedule
    | CyclicSchedule
    | PlateauSchedule,
    Field(discriminator="family"),
]

_SCHEDULE_ADAPTER: TypeAdapter[ScheduleSpec] = TypeAdapter(ScheduleSpec)


def parse_schedule(data: Mapping[str, Any]) -> ScheduleSpec:
    """Validate a ``dict`` (e.g. ``spec.model_dump()``) into the spec its ``family`` names.

    Raises:
        pydantic.ValidationError: unknown family, unknown field, or an invalid value.
    """
    return _SCHEDULE_ADAPTER.validate_python(data)


class PlateauWithWarmup:
    """``LinearLR`` for the warm-up epochs, then ``ReduceLROnPlateau``.

    ``SequentialLR`` cannot forward the metric ``ReduceLROnPlateau.step`` needs, hence this
    class. Metrics given during the warm-up are ignored; the plateau logic sees its first
    metric at the end of the first epoch run at the full lr.
    """

    def __init__(
        self, warmup: lr_scheduler.LinearLR, plateau: lr_scheduler.ReduceLROnPlateau
    ) -> None:
        self.optimizer = plateau.optimizer
        self.warmup = warmup
        self.plateau = plateau
        self.warmup_steps = warmup.total_iters
        self.last_epoch = 0
        self._last_lr = _current_lrs(self.optimizer)

    @property
    def in_warmup(self) -> bool:
        return self.last_epoch < self.warmup_steps

    def step(self, metric: float | None = None) -> None:
        """End an epoch; ``metric`` is required once the warm-up is over."""
        if self.in_warmup:
            self.warmup.step()
        elif metric is None:
            raise ValueError("metric is required to step ReduceLROnPlateau after the warm-up")
        else:
            self.plateau.step(metric)
        self.last_epoch += 1
        self._last_lr = _current_lrs(self.optimizer)

    def get_last_lr(self) -> list[float]:
        return self._last_lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_epoch": self.last_epoch,
            "warmup": self.warmup.state_dict(),
            "plateau": self.plateau.state_dict(),
            "_last_lr": list(self._last_lr),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.warmup.load_state_dict(dict(state_dict["warmup"]))
        self.plateau.load_state_dict(dict(state_dict["plateau"]))
        self.last_epoch = state_dict["last_epoch"]
        self._last_lr = list(state_dict["_last_lr"])


if TYPE_CHECKING:
    Scheduler = lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau | PlateauWithWarmup


def __getattr__(name: str) -> Any:
    # `Scheduler` names torch classes: build it on first use so that importing this module
    # (and validating specs) does not load torch.
    if name == "Scheduler":
        from torch.optim import lr_scheduler

        return lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau | PlateauWithWarmup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build(
    spec: ScheduleSpec,
    optimizer: Optimizer,
    steps_per_epoch: int,
    epochs: int,
    *,
    group_multipliers: Sequence[float] | None = None,
) -> Scheduler:
    """Build the torch scheduler for ``spec`` on ``optimizer``.

    Args:
        group_multipliers: each param group's LR multiplier, in the optimizer's group order.
            The spec's LR values (``max_lr``, ``base_lr``, ``min_lr``) are those of a
            parameter at multiplier 1, and group ``i`` gets ``value * group_multipliers[i]``,
            as it gets ``lr * group_multipliers[i]`` from the optimizer. None: group 0 counts as
            multiplier 1 and every other group as its LR ratio to group 0.

    Returns a ``torch.optim.lr_scheduler`` object (``LinearLR`` alone for a constant schedule
    with a warm-up), ``SequentialLR`` when another family has a warm-up, or
    :class:`PlateauWithWarmup` for ``plateau`` with a warm-up. Step it per
    ``spec.interval``, or let :class:`ScheduleDriver` do it.
    """
    from torch.optim import lr_scheduler

    _check_positive("steps_per_epoch", steps_per_epoch)
    _check_positive("epochs", epochs)
    group_mults = _multipliers_of(optimizer, group_multipliers)
    if spec.warmup is not None and isinstance(spec, ConstantSchedule):
        return _make_warmup(spec.warmup, optimizer)  # it holds the full LR once it ends
    if isinstance(spec, PlateauSchedule) and spec.warmup is not None:
        warmup = _make_warmup(spec.warmup, optimizer)
        return PlateauWithWarmup(warmup, spec._make_plateau(optimizer, group_mults))
    main = spec._make_scheduler(optimizer, group_mults, steps_per_epoch * epochs)
    if spec.warmup is None:
        return main
    warmup = _make_warmup(spec.warmup, optimizer)
    return lr_scheduler.SequentialLR(
        optimizer, schedulers=[warmup, main], milestones=[spec.warmup.steps]
    )


def cycles_momentum(spec: ScheduleSpec, *, has_betas: bool, momentum: float) -> bool:
    """Whether :func:`build` cycles momentum for ``spec`` on such an optimizer.

    ``has_betas``: an Adam-style optimizer; ``momentum``: the smallest SGD-style momentum
    of its groups (0 when it has none). ``onecycle`` cycles momentum or Adam's beta1, as
    torch does; ``cyclic`` only a momentum > 0 (it would move beta1 to 0.8-0.9); the other
    families leave momentum alone. Torch raises on an optimizer without either, and would
    switch momentum *on* for ``SGD(momentum=0)``.
    """
    if isinstance(spec, OneCycleSchedule):
        return has_betas or momentum > 0
    if isinstance(spec, CyclicSchedule):
        return momentum > 0
    return False


class ScheduleDriver:
    """Steps a scheduler at the right moments; the one place that knows the stepping rules.

    Call :meth:`after_batch` after every ``optimizer.step()`` and :meth:`after_epoch` at the
    end of every epoch (after validation); each steps the scheduler only when the spec's
    ``interval`` says so.
    """

    def __init__(self, spec: ScheduleSpec, scheduler: Scheduler) -> None:
        self.spec = spec
        self.scheduler = scheduler

    def after_batch(self) -> None:
        """Step a per-batch schedule; call right after ``optimizer.step()``."""
        if self.spec.interval == "batch":
            self.scheduler.step()

    def after_epoch(self, metric: float | None = None) -> None:
        """Step a per-epoch schedule; ``plateau`` needs the validation ``metric``.

        Other families ignore ``metric``, so trainers may always pass it.
        """
        if self.spec.interval != "epoch":
            return
        if isinstance(self.spec, PlateauSchedule):
            if metric is None:
                raise ValueError(
                    "the 'plateau' schedule needs a metric: call after_epoch(metric=...) "
                    "with the validation metric"
                )
            self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def last_lrs(self) -> list[float]:
        """The current lr of every param group."""
        return [float(lr) for lr in self.scheduler.get_last_lr()]

    def state_dict(self) -> dict[str, Any]:
        return {"family": self.spec.family, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; load the optimizer's state dict as well."""
        if state_dict["family"] != self.spec.family:
            raise ValueError(
                f"state_dict is for a {state_dict['family']!r} schedule, "
                f"this driver runs {self.spec.family!r}"
            )
        self.scheduler.load_state_dict(dict(state_dict["scheduler"]))


def drive(
    spec: ScheduleSpec,
    optimizer: Optimizer,
    steps_per_epoch: int,
    epochs: int,
    *,
    group_multipliers: Sequence[float] | None = None,
) -> ScheduleDriver:
    """Build the scheduler for ``spec`` (see :func:`build`) and wrap it in a driver."""
    scheduler = build(spec, optimizer, steps_per_epoch, epochs, group_multipliers=group_multipliers)
    return ScheduleDriver(spec, scheduler)


def preview(
    spec: ScheduleSpec,
    base_lrs: Sequence[float],
    steps_per_epoch: int,
    epochs: int,
    metrics: Sequence[float] | None = None,
    *,
    group_multipliers: Sequence[float] | None = None,
) -> np.ndarray:
    """The lr of every optimizer step, shape ``(epochs * steps_per_epoch, len(base_lrs))``.

    Runs the real torch scheduler on a throwaway SGD (momentum 0.9) optimizer with one param
    group per entry of ``base_lrs``; ``group_multipliers`` as in :func:`build` (pass them with
    ``base_lrs = [lr * m for m in group_multipliers]`` when group 0's multiplier is not 1).
    ``plateau`` needs ``metrics``, one value per epoch.
    """
    import numpy as np

    _check_positive("steps_per_epoch", steps_per_epoch)
    _check_positive("epochs", epochs)
    if len(base_lrs) < 1:
        raise ValueError("base_lrs must hold at least one lr")
    _check_metrics(spec, metrics, epochs)
    optimizer = _throwaway_optimizer(base_lrs)
    driver = drive(spec, optimizer, steps_per_epoch, epochs, group_multipliers=group_multipliers)
    lrs = np.empty((epochs * steps_per_epoch, len(base_lrs)), dtype=np.float64)
    for epoch in range(epochs):
        for batch in range(steps_per_epoch):
            lrs[epoch * steps_per_epoch + batch] = _current_lrs(optimizer)
            if epoch == batch == 0:  # once, so torch sees the right order; with no gradients a
                optimizer.step()  # step changes nothing, and each would cost most of the time
            driver.after_batch()
        driver.after_epoch(None if metrics is None else float(metrics[epoch]))
    return lrs


MAX_RUN_EPOCHS = 100_000
"""The most epochs :func:`to_code` writes a snippet for (``run_epochs``)."""
MAX_RUN_STEPS_PER_EPOCH = 10_000_000
"""The most steps per epoch :func:`to_code` writes a snippet for (``run_steps_per_epoch``)."""
LR_DIGITS = 4
"""Significant digits of an LR in snippets and reports; JSON keeps every digit."""


def lr_literal(value: float) -> str:
    """An LR as snippets write it: a float literal of :data:`LR_DIGITS` significant digits.

    >>> lr_literal(0.23912345678), lr_literal(1.2345e-05), lr_literal(0.0), lr_literal(3.0)
    ('0.2391', '1.234e-05', '0.0', '3.0')
    """
    return repr(float(f"{value:.{LR_DIGITS}g}"))


def to_code(
    spec: ScheduleSpec,
    *,
    steps_per_epoch: int | None = None,
    epochs: int | None = None,
    optimizer_name: str = "optimizer",
    groups: GroupLRs = "any",
    cycle_momentum: bool | None = None,
    run_epochs: int | None = None,
    run_steps_per_epoch: int | None = None,
    tuned: bool = False,
) -> str:
    """A paste-ready PyTorch snippet building the same scheduler from ``optimizer_name``.

    The snippet binds ``scheduler`` (``warmup`` and ``plateau`` for ``plateau`` with a
    warm-up; nothing for a constant schedule without one, which needs no scheduler) and ends
    with a comment on how to step it. LR values are written with :data:`LR_DIGITS`
    significant digits (:func:`lr_literal`).

    The spec's lengths are for a run of ``epochs`` epochs of ``steps_per_epoch`` optimizer
    steps. Given those, the snippet declares them at its top, ``epochs = 6  # tuned for 6
    epochs of 15 steps; set your own`` and, for a schedule stepped per batch,
    ``steps_per_epoch = len(train_loader)`` (a name the user's script binds), and writes
    every length as a fraction of the run, rescaled from these variables:
    ``T_max=max(1, round(4 / 6 * epochs))`` is 4 at ``epochs = 6`` and 5 at ``epochs = 8``.
    Lengths in epochs (``step_size``, ``milestones``, ``T_max``, ``T_0``, a per-epoch
    warm-up) scale with ``epochs``; lengths in batches (``total_steps``, ``step_size_up``,
    ``step_size_down``, a cyclic warm-up) with ``epochs * steps_per_epoch``; a decay per
    epoch (``exponential``'s ``gamma``, ``time_decay``'s ``decay``) so that the run ends at
    the same LR. A user who trains longer changes one number and gets the same shape over
    the longer run (nothing steps past the end of a ``OneCycleLR``); with the values
    written, the snippet builds exactly the schedule ``spec`` describes for that run.
    ``plateau``'s ``patience`` and ``cooldown`` count epochs without improvement, a matter
    of the metric's noise rather than of the run's length, and are written as they are.
    Without ``epochs`` (or, for lengths in batches, ``steps_per_epoch``) lengths are written
    as they are, and ``total_steps`` refers to variables ``epochs`` and ``steps_per_epoch``
    that the snippet does not declare.

    Args:
        groups: what the snippet may assume about the optimizer's param groups.
            ``"any"``: any optimizer, also one scheduled before; LR values are for group 0
            and the other groups keep their LR ratio to it, read when the snippet runs
            (like :func:`build` without ``group_multipliers``). ``"one"``: an optimizer fresh
            from its constructor with one param group: the values as they are.
            ``"group_mults"``: a fresh optimizer whose group ``i`` runs at
            ``lr * group_mults[i]``, ``group_mults`` a list defined before the snippet; LR
            values are for multiplier 1 (like :func:`build` with ``group_multipliers``).
        cycle_momentum: whether ``onecycle``/``cyclic`` cycle momentum (see
            :func:`cycles_momentum`); None writes code that decides from the optimizer.
        run_epochs: the value the snippet gives ``epochs``, for a run of another length
            (default ``epochs``): the lengths rescale to it, and the comment still says
            what the spec was made for.
        run_steps_per_epoch: the value the snippet gives ``steps_per_epoch`` (default
            ``len(train_loader)``).
        tuned: the comments say the spec was "tuned for" the run (else "written for").

    Raises:
        ValueError: ``epochs`` or ``steps_per_epoch`` below 1; ``run_epochs`` or
            ``run_steps_per_epoch`` outside 1 to :data:`MAX_RUN_EPOCHS` or
            :data:`MAX_RUN_STEPS_PER_EPOCH`, or given without ``epochs`` and
            ``steps_per_epoch``; an ``optimizer_name`` that is not a Python identifier.
    """
    if not optimizer_name.isidentifier():
        raise ValueError(f"optimizer_name must be a Python identifier, got {optimizer_name!r}")
    for name, value in (("steps_per_epoch", steps_per_epoch), ("epochs", epochs)):
        if value is not None:
            _check_positive(name, value)
    _check_run(epochs, steps_per_epoch, run_epochs, run_steps_per_epoch)
    code = _CodeContext(optimizer_name, groups, cycle_momentum, epochs, steps_per_epoch)
    lines = ["from torch.optim import lr_scheduler", ""]
    lines += code.run_declarations(spec, run_epochs, run_steps_per_epoch, tuned=tuned)
    warmup_setup, warmup_steps = _warmup_steps(spec, code)
    if isinstance(spec, ConstantSchedule):
        constant = _constant_code(spec.warmup, warmup_steps, optimizer_name)
        return "\n".join(lines + warmup_setup + constant) + "\n"
    setup, call = spec._scheduler_code(code)
    lines += setup
    if spec.warmup is None:
        lines += [f"scheduler = {call}", _stepping_comment(spec)]
    elif isinstance(spec, PlateauSchedule):
        lines += warmup_setup
        lines += _plateau_warmup_code(spec.warmup, warmup_steps, optimizer_name, call)
    else:
        lines += [f"main_scheduler = {call}", *warmup_setup]
        lines += _sequential_warmup_code(spec, warmup_steps, optimizer_name)
    return "\n".join(lines) + "\n"


def _check_run(
    epochs: int | None,
    steps_per_epoch: int | None,
    run_epochs: int | None,
    run_steps_per_epoch: int | None,
) -> None:
    if (run_epochs is not None or run_steps_per_epoch is not None) and (
        epochs is None or steps_per_epoch is None
    ):
        raise ValueError(
            "run_epochs and run_steps_per_epoch rescale a schedule made for a run: give that "
            "run's epochs and steps_per_epoch too"
        )
    for name, value, cap in (
        ("epochs", run_epochs, MAX_RUN_EPOCHS),
        ("steps_per_epoch", run_steps_per_epoch, MAX_RUN_STEPS_PER_EPOCH),
    ):
        if value is not None and not 1 <= value <= cap:
            raise ValueError(f"{name} must be an integer from 1 to {cap}, got {value}")


def _fraction_of(length: int, run: int, variable: str) -> str:
    """``length`` of a run of ``run`` as an expression in ``variable`` (the run's new length).

    Exactly ``length`` when ``variable`` is ``run``: ``length / run * run`` is within a
    rounding error of ``length``, which ``round`` removes.

    >>> _fraction_of(4, 6, "epochs"), _fraction_of(6, 6, "epochs")
    ('max(1, round(4 / 6 * epochs))', 'epochs')
    >>> [eval(_fraction_of(k, 7, "n"), {"n": 7}) for k in (1, 3, 7, 20)]
    [1, 3, 7, 20]
    """
    if length == run:
        return variable
    return f"max(1, round({length} / {run} * {variable}))"


@dataclass(frozen=True)
class _CodeContext:
    """What a family's snippet may assume about the optimizer and the run (see :func:`to_code`).

    ``epochs`` and ``steps_per_epoch``: the run the spec's lengths are for, None if unknown.
    """

    optimizer: str
    groups: GroupLRs
    cycle_momentum: bool | None
    epochs: int | None
    steps_per_epoch: int | None

    total_steps: ClassVar[str] = "epochs * steps_per_epoch"

    def epochs_length(self, length: int) -> str:
        """A length in epochs: a fraction of the run's epochs where those are known."""
        return str(length) if self.epochs is None else _fraction_of(length, self.epochs, "epochs")

    def steps_length(self, length: int) -> str:
        """A length in batches: a fraction of the run's steps where those are known."""
        if self.epochs is None or self.steps_per_epoch is None:
            return str(length)
        return _fraction_of(length, self.epochs * self.steps_per_epoch, self.total_steps)

    def epoch_milestones(self, milestones: Sequence[int]) -> str:
        """Epochs at which something happens, each a fraction of the run's epochs."""
        if self.epochs is None:
            return repr(list(milestones))
        return f"[max(1, round(m / {self.epochs} * epochs)) for m in {list(milestones)!r}]"

    def per_epoch(self, factor: float) -> str:
        """A factor applied every epoch, so that the run's product of them stays the same."""
        return repr(factor) if self.epochs is None else f"{factor!r} ** ({self.epochs} / epochs)"

    def epoch_of_run(self) -> str:
        """The scheduler's epoch count as the epoch of the run the spec was made for."""
        return "epoch" if self.epochs is None else f"(epoch * {self.epochs} / epochs)"

    def run_declarations(
        self,
        spec: ScheduleSpec,
        run_epochs: int | None,
        run_steps_per_epoch: int | None,
        *,
        tuned: bool,
    ) -> list[str]:
        """The lines declaring the run's variables (and a blank line), or none."""
        if self.epochs is None:
            return []
        word = "tuned" if tuned else "written"
        made_for = f"{word} for {_count(self.epochs, 'epoch')}"
        if self.steps_per_epoch is not None:
            made_for += f" of {_count(self.steps_per_epoch, 'step')}"
        lines = [f"epochs = {run_epochs or self.epochs}  # {made_for}; set your own"]
        if spec.interval == "batch" and self.steps_per_epoch is not None:
            when = f"{self.steps_per_epoch} when tuned" if tuned else f"{self.steps_per_epoch} then"
            if run_steps_per_epoch is None:
                lines.append(f"steps_per_epoch = len(train_loader)  # {when}")
            else:
                lines.append(
                    f"steps_per_epoch = {run_steps_per_epoch}  # len(train_loader); {when}"
                )
        return [*lines, ""]

    def lr(self, value: float) -> str:
        """The argument for an LR value: one number, or one per param group."""
        if self.groups == "one":
            return lr_literal(value)
        if self.groups == "group_mults":
            return f"[{lr_literal(value)} * mult for mult in group_mults]"
        return f"[{lr_literal(value)} * ratio for ratio in lr_ratios]"

    def lr_setup(self) -> list[str]:
        """Lines defining what :meth:`lr` refers to."""
        if self.groups != "any":
            return []
        return [
            "# LR values are for param group 0; other groups keep their LR ratio to it.",
            "group_lrs = [",
            f'    group.get("initial_lr", group["lr"]) for group in {self.optimizer}.param_groups',
            "]",
            "lr_ratios = [lr / group_lrs[0] if any(group_lrs) else 1.0 for lr in group_lrs]",
        ]

    def cycle_momentum_code(self, *, allow_betas: bool) -> tuple[list[str], str]:
        """Set-up lines and the ``cycle_momentum`` argument."""
        if self.cycle_momentum is not None:
            return [], repr(self.cycle_momentum)
        momentum = f'    group.get("momentum", 0) > 0 for group in {self.optimizer}.param_groups'
        if allow_betas:
            return [
                "# Cycle momentum (or Adam's beta1) only where the optimizer has it.",
                f'cycle_momentum = "betas" in {self.optimizer}.defaults or all(',
                momentum,
                ")",
            ], "cycle_momentum"
        return [
            "# Cycle momentum only for optimizers with momentum > 0 (not Adam's betas).",
            "cycle_momentum = all(",
            momentum,
            ")",
        ], "cycle_momentum"


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}{'' if n == 1 else 's'}"


def _warmup_steps(spec: ScheduleSpec, code: _CodeContext) -> tuple[list[str], str]:
    """The line binding ``warmup_steps`` where it is rescaled (else none) and what to write
    for the warm-up's length; in the schedule's own stepping units (epochs or batches)."""
    if spec.warmup is None:
        return [], ""
    length = (
        code.steps_length(spec.warmup.steps)
        if spec.interval == "batch"
        else code.epochs_length(spec.warmup.steps)
    )
    if length.isdigit():
        return [], length
    return [f"warmup_steps = {length}"], "warmup_steps"


def _constant_code(warmup: LinearWarmup | None, steps: str, optimizer_name: str) -> list[str]:
    if warmup is None:
        return ["# A constant LR needs no scheduler."]
    return [
        f"scheduler = {_warmup_call(warmup, steps, optimizer_name)}",
        "# Step per epoch: scheduler.step() once at the end of every epoch;",
        f"# after {steps} epochs the LR stays at its full value.",
    ]


def _call(scheduler_class: str, *args: str) -> str:
    one_line = f"lr_scheduler.{scheduler_class}({', '.join(args)})"
    if len(one_line) <= 80:
        return one_line
    body = "".join(f"    {arg},\n" for arg in args)
    return f"lr_scheduler.{scheduler_class}(\n{body})"


def _stepping_comment(spec: ScheduleSpec) -> str:
    if isinstance(spec, PlateauSchedule):
        return "# Step per epoch, after validation: scheduler.step(val_loss)."
    if spec.interval == "batch":
        return "# Step per batch: scheduler.step() right after every optimizer.step()."
    return "# Step per epoch: scheduler.step() once at the end of every epoch."


def _warmup_call(warmup: LinearWarmup, steps: str, optimizer_name: str) -> str:
    return _call(
        "LinearLR",
        optimizer_name,
        f"start_factor={warmup.start_factor!r}",
        "end_factor=1.0",
        f"total_iters={steps}",
    )


def _sequential_warmup_code(spec: ScheduleSpec, steps: str, optimizer_name: str) -> list[str]:
    assert spec.warmup is not None
    return [
        f"warmup = {_warmup_call(spec.warmup, steps, optimizer_name)}",
        "scheduler = lr_scheduler.SequentialLR(",
        f"    {optimizer_name},",
        "    schedulers=[warmup, main_scheduler],",
        f"    milestones=[{steps}],",
        ")",
        _stepping_comment(spec),
    ]


def _plateau_warmup_code(
    warmup: LinearWarmup, steps: str, optimizer_name: str, plateau_call: str
) -> list[str]:
    return [
        f"warmup = {_warmup_call(warmup, steps, optimizer_name)}",
        f"plateau = {plateau_call}",
        "# Step per epoch, after validation (SequentialLR cannot pass the metric on): at the",
        f"# end of each of the first {steps} epochs call warmup.step(), which brings the lr",
        "# up to its full value; after that call plateau.step(val_loss). Losses of warm-up",
        "# epochs are not used.",
    ]


def _make_warmup(warmup: LinearWarmup, optimizer: Optimizer) -> lr_scheduler.LinearLR:
    from torch.optim import lr_scheduler

    return lr_scheduler.LinearLR(
        optimizer, start_factor=warmup.start_factor, end_factor=1.0, total_iters=warmup.steps
    )


def _multipliers_of(optimizer: Optimizer, group_multipliers: Sequence[float] | None) -> list[float]:
    if group_multipliers is None:
        from lrtune.optimizers import group_lr_ratios

        return group_lr_ratios(optimizer)  # or pass group_multipliers, as training does
    if len(group_multipliers) != len(optimizer.param_groups):
        raise ValueError(
            f"group_multipliers must hold one value per param group "
            f"({len(optimizer.param_groups)}), got {len(group_multipliers)}"
        )
    return [float(mult) for mult in group_multipliers]


def _scale_to_groups(value: float, group_mults: list[float]) -> list[float]:
    return [value * mult for mult in group_mults]


def _optimizer_cycles_momentum(spec: ScheduleSpec, optimizer: Optimizer) -> bool:
    momentum = min(float(group.get("momentum", 0)) for group in optimizer.param_groups)
    return cycles_momentum(spec, has_betas="betas" in optimizer.defaults, momentum=momentum)


def _check_onecycle_has_room(pct_start: float, total_steps: int) -> None:
    # Torch divides by (pct_start * total_steps - 1) and so needs a warm-up of > 1 step.
    if pct_start * total_steps <= 1:
        raise ValueError(
            f"onecycle needs pct_start * epochs * steps_per_epoch > 1 to ramp up, got "
            f"{pct_start} * {total_steps}: train for more steps or raise pct_start"
        )


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _check_metrics(spec: ScheduleSpec, metrics: Sequence[float] | None, epochs: int) -> None:
    if metrics is None:
        if isinstance(spec, PlateauSchedule):
            raise ValueError("the 'plateau' schedule needs metrics: one value per epoch")
        return
    if len(metrics) != epochs:
        raise ValueError(f"metrics must hold one value per epoch ({epochs}), got {len(metrics)}")


def _throwaway_optimizer(base_lrs: Sequence[float]) -> torch.optim.SGD:
    import torch

    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": float(lr)} for lr in base_lrs]
    return torch.optim.SGD(groups, lr=float(base_lrs[0]), momentum=0.9)


def _current_lrs(optimizer: Optimizer) -> list[float]:
    return [float(group["lr"]) for group in optimizer.param_groups]
