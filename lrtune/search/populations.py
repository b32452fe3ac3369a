"""Search trials run as populations: K queued trials of a job popped at once, trained together.

:func:`drain_population` is :func:`~lrtune.search.units.drain` for a search queue whose units
train as one population (:func:`lrtune.population.train_population`): it pops up to
``size`` queued trials (each through the queue's gate, each planned before the next pop, so
that the sampler's constant liar sees the ones already handed out), starts a heartbeat for
each, and trains them together. Each member stays a trial of its own: its epochs are reported
to the pruner (:meth:`~lrtune.search.units.Unit.report`), it checkpoints to its own file, and
it is completed and told as soon as it leaves the population (pruned, diverged, below the LR
threshold, or done), so the sampler, the gate and the job's progress see it then.

Errors are a single unit's, multiplied: the training's own error fails every member still
training, with the reason (:class:`~lrtune.search.units.TrialFailed` semantics: the queue goes
on, the job then fails); an interruption records ``interrupted`` on each and propagates (they
are queued again and resume from their checkpoints); a storage error leaves them RUNNING, to go
stale and be retried from their checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Iterator

import optuna
import torch
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from lrtune._optuna import (
    ATTR_FAIL_REASON,
    STORAGE_ERRORS,
    QueuedStudy,
    QueueEmpty,
)
from lrtune.search.units import (
    DeviceOutOfMemory,
    Unit,
    UnitObjective,
    UnitPlan,
    _StorageTrouble,
    failure_reason,
)
from lrtune.training import TrainingRun, TrainingSetup

_logger = logging.getLogger("lrtune.population")

TrialDone = Callable[[optuna.Study, FrozenTrial], None]
"""Called after each trial of a population is told (the progress bar, the stop check)."""


def population_size(setup: TrainingSetup, requested: int) -> int:
    """How many search trials to train at once: ``requested``, as far as the job's
    ``search.max_parallel`` (each member is a running trial) and the device's memory
    (:func:`lrtune.population.population_size`) allow; 1 when ``requested`` is 1 or ``setup``'s
    runs cannot be trained as a population. Why it is fewer is logged once a task."""
    if requested <= 1:
        return 1
    from lrtune.population import population_refusal
    from lrtune.population import population_size as fitting

    reason = population_refusal(setup)
    if reason is not None:
        _say_once(setup, f"search trials run one at a time: {reason}")
        return 1
    max_parallel = setup.spec.search.max_parallel
    if max_parallel < requested:
        _say_once(setup, f"populations of {max_parallel}, the job's search.max_parallel")
    return max(1, fitting(setup, min(requested, max_parallel)))


def _say_once(setup: TrainingSetup, message: str) -> None:
    if (setup.task.name, message) not in _told:
        _told.add((setup.task.name, message))
        _logger.info("%s: %s", setup.task.name, message)


_told: set[tuple[str, str]] = set()


def drain_population(
    study: QueuedStudy,
    objective: UnitObjective,
    size: int,
    deadline: float | None,
    on_told: TrialDone,
    should_stop: Callable[[], bool],
) -> None:
    """Pop and train ``study``'s queued search trials ``size`` at a time, until the queue is
    empty (:class:`QueueEmpty`, as Optuna's ``optimize`` raises it), the deadline passes, or
    ``should_stop()`` says so after a population."""
    while deadline is None or time.monotonic() < deadline:
        units = _pop_units(study, objective, size)
        if not units:
            raise QueueEmpty
        _train_units(study, objective, units, on_told)
        if should_stop():
            return


def _pop_units(
    study: QueuedStudy, objective: UnitObjective, size: int
) -> list[tuple[Unit, UnitPlan]]:
    """Up to ``size`` queued trials, each planned; fewer when the queue or the gate runs out."""
    units: list[tuple[Unit, UnitPlan]] = []
    while len(units) < size:
        try:
            with warnings.catch_warnings():  # "heartbeat is for Study.optimize": we beat
                warnings.simplefilter("ignore", UserWarning)
                trial = study.ask()
        except QueueEmpty:
            break
        unit = objective.unit(trial)
        try:
            units.append((unit, unit.plan()))
        except BaseException as exc:
            reason = failure_reason(objective.setup, exc)
            _end_failed(study, [*(popped for popped, _plan in units), unit], exc, reason)
            raise
    return units


def _train_units(
    study: QueuedStudy,
    objective: UnitObjective,
    units: list[tuple[Unit, UnitPlan]],
    on_told: TrialDone,
) -> None:
    """Train the planned units as one population, telling each trial as its member ends."""
    from lrtune.population import Member, train_population

    setup, options = objective.setup, objective.options
    training = {id(unit): unit for unit, _plan in units}

    def ended(unit: Unit, plan: UnitPlan) -> Callable[[TrainingRun], None]:
        def tell(run: TrainingRun) -> None:
            training.pop(id(unit), None)
            _complete(study, unit, plan, run, on_told)

        return tell

    members = [
        Member(
            schedule=plan.schedule,
            base_lr=plan.base_lr,
            on_epoch=unit.report,
            checkpoint=plan.checkpoint,
            on_end=ended(unit, plan),
        )
        for unit, plan in units
    ]
    search = setup.spec.search
    with _heartbeats(study, [unit.trial._trial_id for unit, _plan in units]):
        try:
            train_population(
                setup,
                members,
                search.epochs,
                lr_threshold=search.lr_threshold,
                stop_reason=options.stop_unit,
                stop_check_s=options.unit_check_s,
            )
        except BaseException as exc:
            reason = failure_reason(setup, exc)
            _end_failed(study, list(training.values()), exc, reason, on_told)
            _reraise_unless_caught(exc, reason)


def _complete(
    study: QueuedStudy, unit: Unit, plan: UnitPlan, run: TrainingRun, on_told: TrialDone
) -> None:
    """Store a member's run on its trial and tell the trial COMPLETE (or PRUNED)."""
    try:
        value = unit.complete(run, plan)
    except optuna.TrialPruned:
        study.tell(unit.trial, state=TrialState.PRUNED)
    else:
        study.tell(unit.trial, value)
    on_told(study, study._storage.get_trial(unit.trial._trial_id))


def _end_failed(
    study: QueuedStudy,
    units: list[Unit],
    error: BaseException,
    reason: str,
    on_told: TrialDone | None = None,
) -> None:
    """Record why the units' training stopped on their trials and tell them FAIL; storage
    errors leave them RUNNING (they go stale and are retried from their checkpoints).
    ``on_told`` is called for the trials of an error the queue goes on after."""
    if isinstance(error, (_StorageTrouble, *STORAGE_ERRORS)):
        return
    for unit in units:
        unit.trial.set_user_attr(ATTR_FAIL_REASON, reason)
        study.tell(unit.trial, state=TrialState.FAIL)
        if on_told is not None and _caught(error):
            on_told(study, study._storage.get_trial(unit.trial._trial_id))


def _caught(error: BaseException) -> bool:
    """Whether the queue goes on after ``error``: the training's own error (the trials failed
    with it), not an interruption, a storage error or running out of memory."""
    storage = isinstance(error, (_StorageTrouble, *STORAGE_ERRORS))
    out_of_memory = isinstance(error, torch.OutOfMemoryError)
    return isinstance(error, Exception) and not (storage or out_of_memory)


def _reraise_unless_caught(error: BaseException, reason: str) -> None:
    """Re-raise what a unit's run lets through (``optimize(catch=(TrialFailed,))``):
    interruptions, storage errors and running out of memory (as :class:`DeviceOutOfMemory`)."""
    if _caught(error):
        _logger.warning("a population of search trials failed: %s", reason)
        return
    if isinstance(error, _StorageTrouble):
        raise error.error from error
    if isinstance(error, torch.OutOfMemoryError):
        raise DeviceOutOfMemory(reason) from error
    raise error


@contextlib.contextmanager
def _heartbeats(study: optuna.Study, trial_ids: list[int]) -> Iterator[None]:
    """Each trial's heartbeat, as Optuna's ``optimize`` beats for its one running trial."""
    with contextlib.ExitStack() as stack:
        for trial_id in trial_ids:
            stack.enter_context(get_heartbeat_thread(trial_id, study._storage))
        yield
