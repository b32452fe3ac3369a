"""A unit of work: one search trial or one confirmation run of a job, popped, trained, told.

Every process that does a job's work (``tune()`` in a notebook, a database worker, its pool's
children) runs units the same way, through :meth:`lrtune.search.JobSearch.run_units`:

1. **claim**: Optuna pops the oldest queued trial of the job's queue (a
   :class:`~lrtune._optuna.QueuedStudy`, through its :class:`~lrtune.search.gate.UnitGate`)
   and starts its heartbeat; :func:`drain` keeps popping until the queue is empty;
2. **plan** (:meth:`Unit.plan`): what the unit trains, a :class:`UnitPlan`: a search trial's
   schedule and LR sampled inside the range test's bounds, a confirmation run's candidate
   (a finalist resolved from the finished search, or a baseline) and seed;
3. **train** (:meth:`Unit.train`): :func:`lrtune.training.train`, checkpointed each epoch,
   reporting each epoch's metric (a search trial is pruned there), looking for a stop
   (:class:`UnitOptions`) at epoch ends and within epochs;
4. **complete** (:meth:`Unit.complete`): the run is stored on the trial, its checkpoint
   removed, and the trial told COMPLETE with its metric, or PRUNED with its reason.

Errors: the training's own become :class:`TrialFailed` (the trial is FAILED with the reason and
the queue goes on, but :func:`unit_failure` fails the job: the unit is not retried); running the
device out of memory is :class:`DeviceOutOfMemory` (it stops the job); storage errors leave the
trial RUNNING to go stale and be retried from its checkpoint (:class:`_StorageLost`); an
interruption records ``interrupted`` and propagates, and the unit is queued again
(:func:`~lrtune.search.queues.requeue_interrupted`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from lrtune._optuna import (
    ATTR_BASE_LR,
    ATTR_CANDIDATE,
    ATTR_FAIL_REASON,
    ATTR_LR_FREE,
    ATTR_ROOT,
    ATTR_RUN,
    ATTR_SAME_AS,
    ATTR_SCHEDULE,
    ATTR_SEED,
    ATTR_STOP_REASON,
    FINISHED,
    STORAGE_ERRORS,
    UNFINISHED,
    QueueEmpty,
    best_value,
    fail_stale_trials,
    has_unfinished,
    heartbeat_interval,
    publish,
    trial_counts,
)
from lrtune.exceptions import InvalidInputError
from lrtune.lr_free import LRFreeName
from lrtune.schedules import ScheduleSpec, parse_schedule
from lrtune.search.gate import UnitGate
from lrtune.search.queues import INTERRUPTED, baseline_schedules, config_key, finalist_trials
from lrtune.space import LRBounds, suggest_schedule
from lrtune.spec import UNIT_CHECK_S
from lrtune.training import (
    StopReason,
    StopTraining,
    TrainingRun,
    TrainingSetup,
    out_of_memory_reason,
    train,
)

T = TypeVar("T")
UnitKind = Literal["trial", "confirm"]
"""A search trial, or a confirmation run (the names of their checkpoint files)."""

PopulationRunner = Callable[
    [float | None, Callable[[optuna.Study, FrozenTrial], None], Callable[[], bool]], None
]
"""Pops and trains a queue's trials several at a time until the queue is empty (raising
:class:`~lrtune._optuna.QueueEmpty`), the deadline (``time.monotonic()``) passes, or the stop
check says so after a population; ``(deadline, on_told, should_stop)``, ``on_told`` called
after each trial is told (:func:`~lrtune.search.populations.drain_population`)."""


class TrialFailed(Exception):
    """Training raised an error: the trial is recorded FAIL with the reason, and work goes on.

    Only errors of the training itself become this; errors of the storage propagate, so that a
    database outage stops the worker instead of burning the trial budget.
    """


class DeviceOutOfMemory(InvalidInputError):
    """A unit or the range test ran the device out of memory: the job does not fit it.

    The unit's trial is recorded FAIL with the reason (what ran out, and what to change: the
    batch size, the model, ``amp``, the units per GPU), and the error propagates instead of
    being caught by the search, so a worker fails the job with that reason (and ``lrtune tune``
    ends with it as one line) rather than running the rest of the units into the same wall:
    every unit of a job has the same model, data and batch size. The worker never queues such
    a trial again (:func:`~lrtune.search.queues.requeue_interrupted` retries only interrupted
    ones); only preparing the study again, an explicit resume
    (:func:`~lrtune.search.prepare.prepare_study`), retries it.
    """


class _StorageLost(BaseException):
    """A storage error inside a trial, carried past Optuna's ``except Exception``.

    Optuna would record the trial FAIL, and a FAIL written without a reason (a database that
    came back in time for the write) is never retried: its slot would be lost. Left RUNNING,
    the trial goes stale once its heartbeat stops, and the storage's retry callback queues a
    clone that resumes from its checkpoint, as for a worker killed mid-trial. :func:`drain`
    re-raises the storage's own error. (A trial whose first heartbeat never reached the
    database cannot go stale, and would stay RUNNING: the storage would have to fail between
    popping the trial and its first beat, milliseconds, as a kill there would.)
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def _storage_errors_leave_the_trial_running() -> Iterator[None]:
    """Inside an objective: turn storage errors into :class:`_StorageLost` (see there)."""
    try:
        yield
    except _StorageTrouble as trouble:
        raise _StorageLost(trouble.error) from trouble.error
    except STORAGE_ERRORS as exc:
        raise _StorageLost(exc) from exc


class _StorageTrouble(Exception):
    """Carries an error raised by a storage call made from inside a training run (a hook)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


UnitStop = StopReason
"""Asked after each epoch of a unit and, within an epoch, at most every ``unit_check_s``
seconds: why to stop it there (e.g. its job was cancelled), else None.

A unit stopped so ends PRUNED with that reason (its stop reason), like a pruned trial."""


@dataclass(frozen=True)
class UnitOptions:
    """How a process runs a job's units: where they checkpoint, and when it stops.

    Attributes:
        artifact_dir: where units checkpoint each epoch (``<dir>/<study>/<kind>-<root>.pt``),
            so an interrupted unit resumes; None: no checkpoints.
        wait_for_others: keep waiting while units run elsewhere, so that a unit whose process
            died (stale heartbeat) is queued again and run here. Without a heartbeat on the
            storage a dead process's unit would never go stale, so then nothing is waited for.
        progress: a progress bar on stderr.
        should_stop: asked after each unit; True stops there (e.g. the job was cancelled),
            leaving the rest of the queue.
        gate: checked before each unit is handed out (default: one that stops the search at
            ``search.target``; :class:`~lrtune.search.gate.UnitGate`).
        stop_unit: asked after each epoch of the running unit and within an epoch at most every
            ``unit_check_s`` seconds (:data:`UnitStop`), so a cancelled job's unit stops within
            seconds instead of at its epoch's end; a requested stop
            (:func:`~lrtune.training.request_stop`) is looked for as often.
        timeout_s: how long the search runs units (None: until its queue is empty); the
            confirmation ignores it.
        population: how many search trials to train at once as one population
            (:mod:`lrtune.search.populations`); 1, or a task that cannot be trained so, runs
            them one at a time. Confirmation runs always run one at a time.
    """

    artifact_dir: Path | None = None
    wait_for_others: bool = True
    progress: bool = True
    should_stop: Callable[[], bool] | None = None
    gate: UnitGate | None = None
    stop_unit: UnitStop | None = None
    unit_check_s: float = UNIT_CHECK_S
    timeout_s: float | None = None
    population: int = 1


class UnitPlan(NamedTuple):
    """What one unit trains: a schedule from an LR, on a seed (None: the job's), with the job's
    optimizer or a learning-rate-free one, checkpointed at ``checkpoint``."""

    schedule: ScheduleSpec
    base_lr: float
    seed: int | None
    lr_free: LRFreeName | None
    checkpoint: Path | None


class Unit:
    """One popped unit of a job: a search trial (``kind`` ``"trial"``) or a confirmation run
    (``"confirm"``); :meth:`run` plans, trains and completes it (see the module).

    ``search`` is the job's search study (a confirmation run resolves its finalist from it,
    and checkpoints under its name); ``bounds`` the range test's LR bounds a trial samples in.
    """

    def __init__(
        self,
        trial: optuna.Trial,
        kind: UnitKind,
        setup: TrainingSetup,
        search: optuna.Study,
        bounds: LRBounds,
        options: UnitOptions,
        finalists: Callable[[], list[FrozenTrial]],
    ) -> None:
        self.trial = trial
        self.kind = kind
        self.setup = setup
        self.search = search
        self.bounds = bounds
        self.options = options
        self._finalists = finalists

    def run(self) -> float:
        """Plan, train and complete the unit; its final metric (or ``TrialPruned``)."""
        with _storage_errors_leave_the_trial_running():
            plan, run = _guarded(self.trial, self.setup, self._plan_and_train)
            return self.complete(run, plan)

    def _plan_and_train(self) -> tuple[UnitPlan, TrainingRun]:
        plan = self.plan()
        return plan, self.train(plan)

    def plan(self) -> UnitPlan:
        """Record on the trial what it trains, and return it.

        A search trial samples its schedule and LR (:func:`lrtune.space.suggest_schedule`); a
        confirmation run names its candidate and seed, and a finalist's schedule is resolved
        from the finished search when it first runs (``TrialPruned`` when there is no such
        finalist, or it trains what a baseline trains: the baseline's runs stand in).
        A retried unit keeps its first trial's number (``root``), which names its checkpoint.
        """
        trial, search = self.trial, self.setup.spec.search
        if self.kind == "trial":
            schedule, lr = suggest_schedule(
                trial,
                search.families,
                self.bounds,
                search.epochs,
                self.setup.steps_per_epoch,
                search.warmup,
                lowest_multiplier=min(self.setup.group_multipliers),
            )
            if ATTR_ROOT not in trial.user_attrs:  # a retried clone keeps the original's
                trial.set_user_attr(ATTR_ROOT, trial.number)
            trial.set_user_attr(ATTR_SCHEDULE, schedule.model_dump(mode="json"))
            trial.set_user_attr(ATTR_BASE_LR, lr)
            publish(trial)  # other workers' samplers see it; a retry resumes it
            return UnitPlan(schedule, lr, None, None, self._checkpoint(trial.study.study_name))
        if ATTR_ROOT not in trial.user_attrs:
            trial.set_user_attr(ATTR_ROOT, trial.number)
        if ATTR_SCHEDULE not in trial.user_attrs:
            self._resolve_finalist()
        publish(trial)
        attrs = trial.user_attrs
        return UnitPlan(
            parse_schedule(attrs[ATTR_SCHEDULE]),
            attrs[ATTR_BASE_LR],
            attrs[ATTR_SEED],
            attrs.get(ATTR_LR_FREE),
            self._checkpoint(self.search.study_name),
        )

    def train(self, plan: UnitPlan) -> TrainingRun:
        """Train the plan for the search's epochs; each epoch reports (a search trial may be
        pruned there) and looks whether to stop."""
        search, options = self.setup.spec.search, self.options
        return train(
            self.setup,
            plan.schedule,
            plan.base_lr,
            search.epochs,
            lr_threshold=search.lr_threshold,
            on_epoch=self.report if self.kind == "trial" else self._look_for_stop,
            checkpoint=plan.checkpoint,
            seed=plan.seed,
            lr_free=plan.lr_free,
            stop_reason=options.stop_unit,
            stop_check_s=options.unit_check_s,
        )

    def complete(self, run: TrainingRun, plan: UnitPlan) -> float:
        """Store the run on the trial, remove its checkpoint; the final metric, or
        ``TrialPruned`` for a run pruned, stopped or diverged (for a confirmation run a
        divergence is a result, the worst, not a failure to retry)."""
        self.trial.set_user_attr(ATTR_RUN, run.model_dump(mode="json"))
        if plan.checkpoint is not None:
            plan.checkpoint.unlink(missing_ok=True)
        if run.status in ("pruned", "diverged"):
            self.trial.set_user_attr(ATTR_STOP_REASON, run.reason)
            raise optuna.TrialPruned(run.reason)
        return run.final(self.setup.metric)

    def report(self, epoch: int, record: dict[str, float]) -> None:
        """A search trial's epoch: report its metric to the pruner, then look for a stop."""
        metric, epochs = self.setup.metric, self.setup.spec.search.epochs
        try:
            self.trial.report(record[metric], epoch)
            prune = self.trial.should_prune()
        except Exception as exc:  # the storage's, not the training's
            raise _StorageTrouble(exc) from exc
        if prune:
            raise StopTraining(  # 1-based, as the dashboard's Epochs column counts
                f"pruned after epoch {epoch + 1} of {epochs} ({record[metric]:.4g} {metric})"
            )
        self._look_for_stop(epoch, record)

    def _look_for_stop(self, _epoch: int, _record: dict[str, float]) -> None:
        stop_unit = self.options.stop_unit
        reason = stop_unit() if stop_unit is not None else None
        if reason is not None:
            raise StopTraining(reason)

    def _checkpoint(self, study_name: str) -> Path | None:
        if self.options.artifact_dir is None:
            return None
        root = self.trial.user_attrs[ATTR_ROOT]
        return self.options.artifact_dir / study_name / f"{self.kind}-{root}.pt"

    def _resolve_finalist(self) -> None:
        """Record the schedule and LR of the finalist this unit names, or prune the unit."""
        trial, finalists = self.trial, self._finalists()
        rank = trial.user_attrs[ATTR_CANDIDATE]["rank"]
        if rank >= len(finalists):
            reason = f"no finalist {rank + 1}: {len(finalists)} distinct schedules completed"
            trial.set_user_attr(ATTR_STOP_REASON, reason)
            raise optuna.TrialPruned(reason)
        finalist = finalists[rank]
        schedule, lr = finalist.user_attrs[ATTR_SCHEDULE], finalist.user_attrs[ATTR_BASE_LR]
        trial.set_user_attr(ATTR_SCHEDULE, schedule)
        trial.set_user_attr(ATTR_BASE_LR, lr)
        for baseline in baseline_schedules(self.setup.spec, self.bounds):
            if baseline.key == config_key(schedule, lr):
                name = baseline.name
                reason = f"trial {finalist.number} is the baseline {name!r}: its runs stand in"
                trial.set_user_attr(ATTR_SAME_AS, name)
                trial.set_user_attr(ATTR_STOP_REASON, reason)
                raise optuna.TrialPruned(reason)


class UnitObjective:
    """Optuna's objective over a job's queue: each trial it is given is a :class:`Unit` to run.

    The finished search's finalists are read once per objective, when a confirmation run first
    needs them.
    """

    def __init__(
        self,
        kind: UnitKind,
        setup: TrainingSetup,
        search: optuna.Study,
        bounds: LRBounds,
        options: UnitOptions,
    ) -> None:
        self.kind = kind
        self.setup = setup
        self.search = search
        self.bounds = bounds
        self.options = options
        self._finalists: list[FrozenTrial] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        return self.unit(trial).run()

    def unit(self, trial: optuna.Trial) -> Unit:
        """The unit a popped trial of the queue is."""
        return Unit(
            trial, self.kind, self.setup, self.search, self.bounds, self.options, self.finalists
        )

    def finalists(self) -> list[FrozenTrial]:
        if self._finalists is None:
            self._finalists = finalist_trials(self.search, self.setup.spec.search)
        return self._finalists


def _guarded(trial: optuna.Trial, setup: TrainingSetup, training: Callable[[], T]) -> T:
    """Run ``training``; record why it failed on the trial (Optuna 5 keeps no reason).

    Errors of the training become :class:`TrialFailed`; storage errors (also those a hook met,
    as :class:`_StorageTrouble`) propagate unchanged; running the device out of memory becomes
    :class:`DeviceOutOfMemory` (recorded, and it propagates); an interruption (Ctrl-C) is
    recorded and propagates, so the trial resumes on the next run.
    """
    try:
        return training()
    except (optuna.TrialPruned, _StorageTrouble, *STORAGE_ERRORS):
        raise
    except BaseException as exc:
        reason = failure_reason(setup, exc)
        trial.set_user_attr(ATTR_FAIL_REASON, reason)
        if isinstance(exc, torch.OutOfMemoryError):
            raise DeviceOutOfMemory(reason) from exc
        if isinstance(exc, Exception):
            raise TrialFailed(reason) from exc
        raise


def failure_reason(setup: TrainingSetup, error: BaseException) -> str:
    """What a unit whose training raised ``error`` records as its trial's fail reason: what to
    change when the device ran out of memory, the error's first line, or ``interrupted``."""
    if isinstance(error, torch.OutOfMemoryError):
        return out_of_memory_reason(setup, error)
    if isinstance(error, Exception):
        return f"{type(error).__name__}: {error}".splitlines()[0][:500]
    return f"{INTERRUPTED} ({type(error).__name__})"


def drain(
    study: optuna.Study,
    objective: UnitObjective,
    *,
    desc: str,
    timeout_s: float | None,
    wait_for_others: bool,
    progress: bool,
    show_best: bool = False,
    should_stop: Callable[[], bool] | None = None,
    populations: PopulationRunner | None = None,
) -> None:
    """Pop and run ``study``'s queued trials until the queue is empty, the time is up, or
    ``should_stop`` says so after a trial; ``populations`` pops and trains several at once
    instead of Optuna's ``optimize`` (:func:`~lrtune.search.populations.drain_population`)."""
    total = len(study.get_trials(deepcopy=False, states=(*FINISHED, *UNFINISHED)))
    bar = tqdm(total=total, desc=desc, disable=None if progress else True, unit="run")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def update_bar(study: optuna.Study, trial: FrozenTrial) -> None:
        if not bar.disable:  # a worker shows no bar: it reads nothing for one
            counts = trial_counts(study)
            bar.n = sum(counts[state] for state in FINISHED)
            if show_best:
                best = best_value(study)
                bar.set_postfix(best=f"{best:.4g}" if best is not None else "-")
            bar.refresh()
        if should_stop is not None and should_stop():
            stopped.append(trial.number)
            if populations is None:
                study.stop()

    stopped: list[int] = []
    with bar:
        while deadline is None or time.monotonic() < deadline:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                if populations is not None:
                    populations(deadline, update_bar, lambda: bool(stopped))
                else:
                    study.optimize(
                        objective,
                        timeout=remaining,
                        callbacks=[update_bar],
                        catch=(TrialFailed,),
                        gc_after_trial=False,
                    )
                break  # timed out or stopped: stop starting trials
            except QueueEmpty:
                if stopped:
                    break
            except _StorageLost as lost:
                raise lost.error from lost.error.__cause__
            heartbeat = heartbeat_interval(study)
            if not (wait_for_others and heartbeat and has_unfinished(study)):
                break
            time.sleep(heartbeat / 2)
            fail_stale_trials(study)


def unit_failure(study: optuna.Study) -> str | None:
    """Why a unit of ``study`` failed for a reason of its own (its training raised); else None.

    Such a unit is not retried (the same parameters would fail again), so its job cannot
    finish its budget; interrupted units and units whose worker died are retried, and are not
    failures here. The reason names the trial: ``"trial 3 failed: ValueError: ..."``.
    """
    if not trial_counts(study)[TrialState.FAIL]:  # one aggregate: the usual answer
        return None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        reason = trial.user_attrs.get(ATTR_FAIL_REASON)
        if reason is not None and not str(reason).startswith(INTERRUPTED):
            return f"trial {trial.number} of {study.study_name} failed: {reason}"
    return None


def raise_unit_failure(queue: optuna.Study) -> None:
    """Raise :class:`TrialFailed` if a unit of ``queue`` failed for a reason of its own.

    Such a unit is not retried, so its job would end short of its budget: the job fails with
    the unit's reason instead (as it does when its range test raises).
    """
    failure = unit_failure(queue)
    if failure is not None:
        raise TrialFailed(failure)
