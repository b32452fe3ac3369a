"""Paste-ready PyTorch for a job's optimizer and schedule, as lrtune trained them.

:func:`job_code` writes the optimizer (with the job's param groups, ordered and scaled as
:meth:`lrtune.training.TrainingSetup.param_groups` builds them) at a given LR and the
scheduler of a schedule spec. Exec'd on a fresh model and stepped as its closing comment
says, it gives every parameter the LR it had in training at every step (to the 4 significant
digits its LRs are written with). The code is as simple as the job: numbers written out for a
single param group, the multiplier machinery only when the job has param groups, and only
schedulers that change the LR.

The snippet is for the user's run, not only the tuned one: it opens with ``epochs = N`` (and,
for a schedule stepped per batch, ``steps_per_epoch = len(train_loader)``) at the tuned values,
with a comment saying what it was tuned for, and writes every schedule length as a fraction
of the run rescaled from these variables (:func:`lrtune.schedules.to_code`). A user who trains
for more epochs changes one number and gets the same shape over the longer run.

``lr`` is the LR of a parameter whose multiplier is 1, as everywhere in lrtune.

Example:
    >>> from lrtune.schedules import parse_schedule
    >>> from lrtune.spec import JobSpec
    >>> job = JobSpec.model_validate(
    ...     {"model": {"name": "mlp"}, "dataset": {"name": "wine"}, "search": {"epochs": 4}})
    >>> cyclic = parse_schedule(
    ...     {"family": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5})
    >>> print(job_code(job, cyclic, lr=0.0512345, steps_per_epoch=5))
    import torch
    from torch.optim import lr_scheduler
    <BLANKLINE>
    epochs = 4  # tuned for 4 epochs of 5 steps; set your own
    steps_per_epoch = len(train_loader)  # 5 when tuned
    <BLANKLINE>
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.05123, momentum=0.9, nesterov=False, weight_decay=0.0
    )
    <BLANKLINE>
    scheduler = lr_scheduler.CyclicLR(
        optimizer,
        base_lr=0.01,
        max_lr=0.1,
        step_size_up=max(1, round(5 / 20 * epochs * steps_per_epoch)),
        step_size_down=None,
        mode='triangular',
        gamma=1.0,
        cycle_momentum=True,
    )
    # Step per batch: scheduler.step() right after every optimizer.step().
    <BLANKLINE>
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lrtune.schedules import cycles_momentum, lr_literal, to_code

if TYPE_CHECKING:
    from lrtune.schedules import ScheduleSpec
    from lrtune.spec import JobSpec, OptimizerSpec

__all__ = ["job_code", "optimizer_code", "param_groups_code"]


def job_code(
    job: JobSpec,
    schedule: ScheduleSpec,
    lr: float,
    *,
    steps_per_epoch: int,
    model_name: str = "model",
    run_epochs: int | None = None,
    run_steps_per_epoch: int | None = None,
) -> str:
    """The optimizer at ``lr`` and the scheduler for ``schedule``, as tuned: for
    ``job.search.epochs`` epochs of ``steps_per_epoch`` steps.

    Binds ``epochs`` (and ``steps_per_epoch``, from the user's ``train_loader``, for a
    schedule stepped per batch), ``optimizer`` (and ``group_mults``, each group's LR
    multiplier, when the job has param groups) and the scheduler variables
    :func:`lrtune.schedules.to_code` names. ``run_epochs`` and ``run_steps_per_epoch`` write
    it for a run of another length: those values, the lengths rescaled, the comment still
    saying what it was tuned for. ``lr`` and the schedule's LRs are written with
    :data:`lrtune.schedules.LR_DIGITS` significant digits.

    Raises:
        ValueError: ``run_epochs`` or ``run_steps_per_epoch`` outside 1 to
            :data:`~lrtune.schedules.MAX_RUN_EPOCHS` or
            :data:`~lrtune.schedules.MAX_RUN_STEPS_PER_EPOCH`.
    """
    scheduler = to_code(
        schedule,
        steps_per_epoch=steps_per_epoch,
        epochs=job.search.epochs,
        groups="group_mults" if job.param_groups or job.task is not None else "one",
        cycle_momentum=_cycles_momentum(schedule, job.optimizer),
        run_epochs=run_epochs,
        run_steps_per_epoch=run_steps_per_epoch,
        tuned=True,
    )
    # to_code opens with its import, then the run's variables (it is given epochs)
    imports, run, scheduler_body = scheduler.split("\n\n", 2)
    if "lr_scheduler." not in scheduler_body:  # a constant LR: no scheduler
        imports = ""
    header = "\n".join(["import torch", imports]).rstrip("\n")
    optimizer = optimizer_code(job, float(lr_literal(lr)), model_name=model_name)
    return "\n".join([header, "", run, "", optimizer, "", scheduler_body])


def optimizer_code(job: JobSpec, lr: float, *, model_name: str = "model") -> str:
    """The job's optimizer over ``model_name``'s parameters at ``lr`` (multiplier 1).

    With param groups: the parameters no prefix claims first (multiplier 1), then one group
    per prefix in the order its first parameter appears, each parameter in its longest
    matching prefix's group; ``group_mults`` lists the groups' multipliers in that order.
    """
    if not model_name.isidentifier():
        raise ValueError(f"model_name must be a Python identifier, got {model_name!r}")
    if job.task is not None:
        return task_optimizer_code(lr, model_name)
    optimizer = f"torch.optim.{job.optimizer.torch_class}"
    hyperparameters = _hyperparameters(job.optimizer)
    if not job.param_groups:
        return _call(
            f"optimizer = {optimizer}", f"{model_name}.parameters()", f"lr={lr!r}", *hyperparameters
        )
    return "\n".join(
        [
            f"lr = {lr!r}  # the LR of a parameter whose multiplier is 1",
            *param_groups_code(job, model_name),
            _call(f"optimizer = {optimizer}", GROUPS_ARGUMENT, *hyperparameters, force_wrap=True),
        ]
    )


def task_optimizer_code(lr: float, model_name: str) -> str:
    """A task's own optimizer (``task.build_optimizer``) with its groups set to ``lr`` times
    their ratios to group 0 as the task builds them, as lrtune trained it."""
    return "\n".join(
        [
            f"optimizer = task.build_optimizer({model_name})  # as your code builds it",
            "written = [g['lr'] for g in optimizer.param_groups]",
            "group_mults = [written_lr / written[0] for written_lr in written]",
            f"lr = {lr!r}  # group 0's LR; every group keeps its ratio to it",
            "for group, mult in zip(optimizer.param_groups, group_mults):",
            '    group["lr"] = lr * mult',
        ]
    )


GROUPS_ARGUMENT = '[{"params": ps, "lr": lr * m} for ps, m in zip(groups.values(), group_mults)]'
"""The optimizer's first argument after :func:`param_groups_code`, with ``lr`` bound."""


def param_groups_code(job: JobSpec, model_name: str) -> list[str]:
    """Lines binding ``groups`` (prefix -> params) and ``group_mults`` as lrtune trains them."""
    lr_mults = {group.prefix: group.lr_mult for group in job.param_groups}
    return [
        f"lr_mults = {lr_mults!r}  # by parameter-name prefix; the longest match wins",
        "# Param groups as lrtune trains them: the parameters no prefix claims first (at",
        "# multiplier 1), then one group per prefix in the order its parameters appear.",
        "groups = {None: []}",
        f"for name, param in {model_name}.named_parameters():",
        "    prefix = max((p for p in lr_mults if name.startswith(p)), key=len, default=None)",
        "    groups.setdefault(prefix, []).append(param)",
        "groups = {prefix: params for prefix, params in groups.items() if params}",
        "group_mults = [lr_mults.get(prefix, 1.0) for prefix in groups]",
    ]


def _hyperparameters(optimizer: OptimizerSpec) -> list[str]:
    # The keywords lrtune.training.torch_optimizer passes, in its order; repr writes each
    # number exactly, so the snippet's optimizer is the one that trained.
    return [f"{key}={value!r}" for key, value in optimizer.keyword_arguments().items()]


def _cycles_momentum(schedule: ScheduleSpec, optimizer: OptimizerSpec) -> bool:
    # What lrtune.schedules decides from the built optimizer: Adam-style betas, else the
    # momentum it runs with (0 for an optimizer without one: Adagrad, Rprop, ...).
    has_betas = optimizer.resolved_keyword("betas") is not None
    momentum = float(optimizer.resolved_keyword("momentum") or 0.0)
    return cycles_momentum(schedule, has_betas=has_betas, momentum=momentum)


def _call(head: str, *args: str, force_wrap: bool = False) -> str:
    one_line = f"{head}({', '.join(args)})"
    if len(one_line) <= 88 and not force_wrap:
        return one_line
    joined = ", ".join(args)
    if len(joined) <= 84 and not force_wrap:
        return f"{head}(\n    {joined}\n)"
    body = "".join(f"    {arg},\n" for arg in args)
    return f"{head}(\n{body})"
