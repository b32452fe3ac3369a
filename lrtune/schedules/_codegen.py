"""Paste-ready PyTorch snippets from specs (:func:`to_code`): each family's scheduler call,
the warm-up around it, and the run's lengths written as fractions of the run."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from lrtune.schedules._build import _check_positive
from lrtune.schedules._specs import (
    ConstantSchedule,
    CosineSchedule,
    CosineWarmRestartsSchedule,
    CyclicSchedule,
    ExponentialSchedule,
    LinearWarmup,
    MultiStepSchedule,
    OneCycleSchedule,
    PlateauSchedule,
    ScheduleSpec,
    StepSchedule,
    TimeDecaySchedule,
)

GroupLRs = Literal["any", "one", "group_mults"]

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
    setup, call = _scheduler_code(spec, code)
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


@functools.singledispatch
def _scheduler_code(spec: ScheduleSpec, code: _CodeContext) -> tuple[list[str], str]:
    """The set-up lines and the constructor call expression of ``spec``'s scheduler.

    One function per family, registered below on its spec class; ``constant`` has none (it
    needs no scheduler, or a bare warm-up, which :func:`to_code` writes itself).
    """
    raise NotImplementedError(f"no snippet code for the {spec.family!r} family")


@_scheduler_code.register
def _step_code(spec: StepSchedule, code: _CodeContext) -> tuple[list[str], str]:
    return [], _call(
        "StepLR",
        code.optimizer,
        f"step_size={code.epochs_length(spec.step_size)}",
        f"gamma={spec.gamma!r}",
    )


@_scheduler_code.register
def _multistep_code(spec: MultiStepSchedule, code: _CodeContext) -> tuple[list[str], str]:
    return [], _call(
        "MultiStepLR",
        code.optimizer,
        f"milestones={code.epoch_milestones(spec.milestones)}",
        f"gamma={spec.gamma!r}",
    )


@_scheduler_code.register
def _exponential_code(spec: ExponentialSchedule, code: _CodeContext) -> tuple[list[str], str]:
    return [], _call("ExponentialLR", code.optimizer, f"gamma={code.per_epoch(spec.gamma)}")


@_scheduler_code.register
def _time_decay_code(spec: TimeDecaySchedule, code: _CodeContext) -> tuple[list[str], str]:
    return [], _call(
        "LambdaLR",
        code.optimizer,
        f"lr_lambda=lambda epoch: 1.0 / (1.0 + {spec.decay!r} * {code.epoch_of_run()})",
    )


@_scheduler_code.register
def _cosine_code(spec: CosineSchedule, code: _CodeContext) -> tuple[list[str], str]:
    return [], _call(
        "CosineAnnealingLR",
        code.optimizer,
        f"T_max={code.epochs_length(spec.T_max)}",
        f"eta_min={lr_literal(spec.eta_min)}",
    )


@_scheduler_code.register
def _cosine_warm_restarts_code(
    spec: CosineWarmRestartsSchedule, code: _CodeContext
) -> tuple[list[str], str]:
    return [], _call(
        "CosineAnnealingWarmRestarts",
        code.optimizer,
        f"T_0={code.epochs_length(spec.T_0)}",
        f"T_mult={spec.T_mult}",
        f"eta_min={lr_literal(spec.eta_min)}",
    )


@_scheduler_code.register
def _onecycle_code(spec: OneCycleSchedule, code: _CodeContext) -> tuple[list[str], str]:
    momentum_setup, cycle_momentum = code.cycle_momentum_code(allow_betas=True)
    return [*code.lr_setup(), *momentum_setup], _call(
        "OneCycleLR",
        code.optimizer,
        f"max_lr={code.lr(spec.max_lr)}",
        f"total_steps={code.total_steps}",
        f"pct_start={spec.pct_start!r}",
        f"anneal_strategy={spec.anneal_strategy!r}",
        f"cycle_momentum={cycle_momentum}",
        f"div_factor={spec.div_factor!r}",
        f"final_div_factor={spec.final_div_factor!r}",
        f"three_phase={spec.three_phase!r}",
    )


@_scheduler_code.register
def _cyclic_code(spec: CyclicSchedule, code: _CodeContext) -> tuple[list[str], str]:
    momentum_setup, cycle_momentum = code.cycle_momentum_code(allow_betas=False)
    setup = [*code.lr_setup(), *momentum_setup]
    base_lr = code.lr(spec.base_lr)
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
        f"max_lr={code.lr(spec.max_lr)}",
        f"step_size_up={code.steps_length(spec.step_size_up)}",
        "step_size_down="
        + ("None" if spec.step_size_down is None else code.steps_length(spec.step_size_down)),
        f"mode={spec.mode!r}",
        f"gamma={spec.gamma!r}",
        f"cycle_momentum={cycle_momentum}",
    )


@_scheduler_code.register
def _plateau_code(spec: PlateauSchedule, code: _CodeContext) -> tuple[list[str], str]:
    setup: list[str] = []
    min_lr_code = lr_literal(spec.min_lr)
    if spec.min_lr > 0:  # min_lr 0 is the same in every group
        setup, min_lr_code = code.lr_setup(), code.lr(spec.min_lr)
    return setup, _call(
        "ReduceLROnPlateau",
        code.optimizer,
        f"mode={spec.mode!r}",
        f"factor={spec.factor!r}",
        f"patience={spec.patience}",
        f"threshold={spec.threshold!r}",
        f"threshold_mode={spec.threshold_mode!r}",
        f"cooldown={spec.cooldown}",
        f"min_lr={min_lr_code}",
    )


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
