"""The schedule specs: one validated pydantic model per ``torch.optim.lr_scheduler`` family.

The specs form a discriminated union on ``family`` (:data:`ScheduleSpec`), so that a plain
``dict`` (from YAML, JSON or an Optuna trial) parses into the right one (:func:`parse_schedule`).
Each spec makes its own torch scheduler (``_make_scheduler``, called by
:func:`lrtune.schedules.build`); torch is imported only there, so validating specs does not
load it.

    >>> spec = parse_schedule({"family": "cosine", "T_max": 8, "warmup": {"steps": 2}})
    >>> spec.family, spec.interval, spec.warmup.steps
    ('cosine', 'epoch', 2)
    >>> parse_schedule({"family": "onecycle", "max_lr": 0.1}).interval
    'batch'
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationInfo, field_validator

if TYPE_CHECKING:  # torch loads only where a scheduler is built: specs validate without it
    from torch.optim import Optimizer, lr_scheduler

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


class ExponentialSchedule(_ScheduleBase):
    """Multiply the lr by ``gamma`` every epoch (``ExponentialLR``)."""

    family: Literal["exponential"] = "exponential"
    gamma: float = Field(gt=0.0, le=1.0)

    def _make_scheduler(
        self, optimizer: Optimizer, group_mults: list[float], total_steps: int
    ) -> lr_scheduler.LRScheduler:
        from torch.optim import lr_scheduler

        return lr_scheduler.ExponentialLR(optimizer, gamma=self.gamma)


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


def cycles_momentum(spec: ScheduleSpec, *, has_betas: bool, momentum: float) -> bool:
    """Whether :func:`~lrtune.schedules.build` cycles momentum for ``spec`` on such an optimizer.

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
