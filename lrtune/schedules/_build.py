"""Torch schedulers from specs: :func:`build`, :class:`ScheduleDriver`, :func:`drive` and
:func:`preview`. Torch is imported inside the functions, when a scheduler is built."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from lrtune.schedules._specs import ConstantSchedule, LinearWarmup, PlateauSchedule, ScheduleSpec

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch.optim import Optimizer, lr_scheduler


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
