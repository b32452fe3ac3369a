"""The schedule search: range test, Optuna study over LR schedules, confirmation, recommendation.

A job runs in four steps, which a single process (:func:`tune`) or a fleet can share:

1. :func:`prepare_study`, once per job: run the multi-seed range test, store its result and the
   LR bounds on the study, and enqueue all the work: ``n_trials`` WAITING search trials, the
   first few fixed to earlier close jobs' winners when given (:func:`winner_starts`), then to
   the obvious answers (one-cycle, cosine, constant at the suggestion), the rest left to the
   sampler; and, on a second study (the *confirmation study*), one WAITING unit
   per candidate and seed (see step 3). Enqueuing happens here only, never in workers.
2. :func:`run_trials`, in any number of processes sharing the storage: each pops WAITING trials
   until none is left. Workers never create trials beyond the queue, so the study ends with
   exactly ``n_trials`` finished trials however many workers share it. A crashed worker's trial
   goes stale (Optuna's heartbeat), is re-queued with the same parameters, and resumes from the
   last epoch checkpoint. A :class:`UnitGate` checked before each pop closes the search early
   once a finished trial reaches ``search.target`` (or a worker's ``search.timeout_s`` is up):
   the queued rest are finished unrun with their reason, so the budget still adds up; with a
   job store's lock it also bounds the workers on a job (``search.max_parallel``).
3. :func:`run_confirmation`, once the search has no queued or running trial: the best
   ``search.finalists`` distinct schedules and the baselines (``search.baselines``: constant LR
   at the suggestion, the optimizer's default LR, the learning-rate-free Prodigy and
   schedule-free) are retrained on ``search.confirm_seeds`` fresh seeds
   (:func:`confirmation_seeds`). These units are queued, shared, checkpointed and resumed like
   trials, but on their own study: they never feed the sampler and never become the search's
   ``best_trial``. A finalist unit names a rank ("finalist 2"), resolved when it runs from the
   finished search, so the queue can be filled before the search starts.
   When the confirmation queue is empty, :func:`extend_confirmation` queues one more seed for
   each candidate still inside the best one's seed noise (adaptive confirmation, up to
   ``search.max_confirm_seeds``), and the units run like the others; a worker does this under
   its lease, :func:`tune` in its loop.
4. :func:`recommend` (a read): the best candidate, finalist or baseline, by its mean over the
   confirmation seeds, the simpler of those inside each other's seed noise, compared with the
   others seed by seed (:mod:`lrtune.recommendation` states the rule).

Every LR stored or reported is the LR of a parameter whose multiplier is 1.

Example:
    >>> from lrtune.spec import JobSpec
    >>> spec = JobSpec.model_validate({
    ...     "model": {"name": "logreg"}, "dataset": {"name": "wine"},
    ...     "range_test": {"seeds": 2, "num_iter": 40},
    ...     "search": {"n_trials": 3, "epochs": 2, "families": ["constant", "cosine"]}})
    >>> rec = tune(spec, progress=False)
    >>> rec.n_trials["complete"] + rec.n_trials["pruned"]
    3
    >>> rec.confirm_seeds, rec.confirmed
    ([1, 2, 3], True)
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from pydantic import ConfigDict
from tqdm.auto import tqdm

from lrtune import lr_free
from lrtune._optuna import (
    ATTR_BASE_LR,
    ATTR_BOUNDS,
    ATTR_CANDIDATE,
    ATTR_FAIL_REASON,
    ATTR_LR_FREE,
    ATTR_RANGE_TEST,
    ATTR_ROOT,
    ATTR_RUN,
    ATTR_RUN_SHAPE,
    ATTR_SAME_AS,
    ATTR_SCHEDULE,
    ATTR_SEED,
    ATTR_SLOT,
    ATTR_SPEC,
    ATTR_STOP_REASON,
    ATTR_WARM_START,
    ATTR_WARM_STARTS,
    CONFIRM_SUFFIX,
    FINISHED,
    STORAGE_ERRORS,
    UNFINISHED,
    QueuedStudy,
    QueueEmpty,
    QueueRefused,
    best_value,
    close_unstarted,
    count_running,
    fail_stale_trials,
    has_unfinished,
    has_waiting,
    heartbeat_interval,
    open_queued_study,
    storage_errors,
    storage_of,
    trial_counts,
)
from lrtune.exceptions import ConflictError, InvalidInputError, NotFoundError
from lrtune.finder import StepCallback, find_lr
from lrtune.params import MAX_SEED
from lrtune.recommendation import Recommendation, SeedValue, TrainedSchedule, TrialSummary
from lrtune.result import LRFinderResult
from lrtune.schedules import parse_schedule
from lrtune.space import (
    LRBounds,
    runnable_families,
    schedule_params,
    search_bounds,
    suggest_schedule,
    warm_starts,
)
from lrtune.spec import UNIT_CHECK_S, JobSpec
from lrtune.storage import open_storage
from lrtune.training import (
    StopReason,
    StopTraining,
    TrainingRun,
    TrainingSetup,
    out_of_memory_reason,
    train,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Storage = str | optuna.storages.BaseStorage | None
INTERRUPTED = "interrupted"
NO_FAIL_REASON = "no reason recorded: the process died or stopped sending heartbeats"


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
    a trial again (:func:`requeue_interrupted` retries only interrupted ones); only preparing
    the study again, an explicit resume (:func:`prepare_study`), retries it.
    """


class _StorageLost(BaseException):
    """A storage error inside a trial, carried past Optuna's ``except Exception``.

    Optuna would record the trial FAIL, and a FAIL written without a reason (a database that
    came back in time for the write) is never retried: its slot would be lost. Left RUNNING,
    the trial goes stale once its heartbeat stops, and the storage's retry callback queues a
    clone that resumes from its checkpoint, as for a worker killed mid-trial. :func:`_drain`
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


def make_sampler(spec: JobSpec) -> optuna.samplers.BaseSampler:
    """TPE with explicit settings for a conditional space (Optuna's defaults changed in 5.0)."""
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            multivariate=True,
            group=True,
            constant_liar=True,
            seed=spec.seed,
            n_startup_trials=max(3, min(10, spec.search.n_trials // 3)),
        )


def make_pruner(spec: JobSpec) -> optuna.pruners.BasePruner:
    if spec.search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=spec.search.epochs, reduction_factor=3
        )
    if spec.search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def range_test(
    setup: TrainingSetup, *, progress: bool = True, callback: StepCallback | None = None
) -> LRFinderResult:
    """The job's multi-seed range test on its model, data, optimizer and param groups.

    The sweep runs group 0 from ``start_lr`` to ``end_lr``; the result reports every LR as the LR
    of a parameter whose multiplier is 1, the unit of everything else a job produces.
    """
    spec, options = setup.spec, setup.spec.range_test
    model = setup.build_model()
    optimizer = setup.build_optimizer(model, options.start_lr)
    try:
        with setup.kernels():
            result = find_lr(
                model,
                setup.train_loader(torch.Generator().manual_seed(spec.seed)),
                optimizer,
                setup.bundle.loss_fn(),
                **options.model_dump(),  # RangeTestSpec's fields are find_lr's keyword names
                seed=spec.seed,
                device=setup.device,
                amp=setup.amp,
                progress=progress,
                callback=callback,
            )
    except torch.OutOfMemoryError as exc:
        raise DeviceOutOfMemory(f"range test: {out_of_memory_reason(setup, exc)}") from exc
    if not spec.param_groups:
        return result
    return result.rescaled(1 / setup.group_multipliers[0], "a parameter with lr_mult 1")


def _resolve_storage(storage: Storage) -> optuna.storages.BaseStorage:
    return open_storage(storage) if storage is None or isinstance(storage, str) else storage


def open_study(spec: JobSpec, storage: Storage, study_name: str | None = None) -> QueuedStudy:
    """Create the job's search study, or load it when it exists (a resumed or shared job).

    ``study_name`` defaults to ``spec.study_name()``; the job store names each job's study from
    the job's id instead (``JobRecord.study_name``), and its workers pass that name.
    """
    return open_queued_study(
        _resolve_storage(storage),
        study_name or spec.study_name(),
        direction=spec.search.direction or "minimize",
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
    )


def open_confirmation(study: optuna.Study, spec: JobSpec) -> QueuedStudy:
    """The confirmation study beside a search study, in the same storage."""
    return open_queued_study(
        storage_of(study),
        study.study_name + CONFIRM_SUFFIX,
        direction=spec.search.direction or "minimize",
        sampler=optuna.samplers.RandomSampler(seed=spec.seed),  # units sample nothing
        pruner=optuna.pruners.NopPruner(),
    )


def confirmation_seeds(spec: JobSpec, count: int | None = None) -> list[int]:
    """``count`` (default ``search.confirm_seeds``) seeds after the job's seed: the same for
    every candidate; adaptive confirmation takes the next ones in this order."""
    count = spec.search.confirm_seeds if count is None else count
    return [(spec.seed + 1 + k) % (MAX_SEED + 1) for k in range(count)]


def prepare_study(
    spec: JobSpec,
    storage: Storage = None,
    *,
    setup: TrainingSetup | None = None,
    progress: bool = True,
    study_name: str | None = None,
    callback: StepCallback | None = None,
    earlier_winners: Sequence[tuple[str, Recommendation]] = (),
    fence: Callable[[], None] | None = None,
) -> QueuedStudy:
    """Run the range test and enqueue the trial budget and the confirmation units.

    Safe to call again after a crash: the range test is kept on the study, and only the trials
    and units that are not yet in the storage are enqueued (a FAILED one again, to resume).
    ``study_name`` is as in :func:`open_study`; ``callback`` is called after each range-test
    step (what it raises stops the range test before anything is stored).

    ``earlier_winners`` (job id, recommendation) of earlier jobs close to this one (a job
    store's ``warm_start_candidates``) warm-start the search: the first slots of the trial
    budget try their recommended schedules (:func:`winner_starts`). Which winners is decided
    once, on the first call, and kept on the study, so a re-run enqueues the same ones.

    ``fence`` guards the writes for a caller that may do them only while it holds a lease
    (a worker: it renews its lease, raising :class:`~lrtune.exceptions.LeaseLost` if it lost
    it). It is called right before the first write (the range test's result, or the first
    enqueue when the result is already stored) and again after the last: what it raises
    before stops the writes; raised after, it tells the caller its writes may have overlapped
    a new holder's. What remains is a window, not a guarantee: writes that take longer than
    one lease after the renewal before them (a process paused, or a connection stalled, for a
    whole lease mid-write) can land while a new holder runs the phase, who may enqueue the
    same slots again. The writes take milliseconds against a lease of a minute.
    """
    study = open_study(spec, storage, study_name)
    stored = study.user_attrs.get(ATTR_SPEC)
    if stored is not None and JobSpec.model_validate(stored) != spec:
        raise ConflictError(
            f"study {study.study_name!r} exists with a different job spec: give the job another "
            "name, or use another storage"
        )
    setup = setup or TrainingSetup.from_spec(spec)
    hold = fence or (lambda: None)
    if ATTR_BOUNDS not in study.user_attrs:
        result = range_test(setup, progress=progress, callback=callback)
        bounds = search_bounds(result)
        hold()
        study.set_user_attr(ATTR_SPEC, spec.model_dump(mode="json"))
        study.set_user_attr(ATTR_RANGE_TEST, result.model_dump(mode="json"))
        study.set_user_attr(ATTR_BOUNDS, bounds.model_dump(mode="json"))
    else:
        hold()
    bounds = stored_bounds(study)
    if ATTR_RUN_SHAPE not in study.user_attrs:  # what a torch-free reader cannot compute
        shape = {
            "steps_per_epoch": setup.steps_per_epoch,
            "group_multipliers": setup.group_multipliers,
        }
        study.set_user_attr(ATTR_RUN_SHAPE, shape)
    if ATTR_WARM_STARTS not in study.user_attrs:
        starts = winner_starts(spec, bounds, setup.steps_per_epoch, earlier_winners)
        study.set_user_attr(ATTR_WARM_STARTS, starts)
    winners = study.user_attrs[ATTR_WARM_STARTS]
    _enqueue_missing(study, _search_slots(spec, bounds, setup.steps_per_epoch, winners))
    _enqueue_missing(open_confirmation(study, spec), _confirmation_slots(spec, bounds))
    hold()
    return study


def stored_bounds(study: optuna.Study) -> LRBounds:
    return LRBounds.model_validate(study.user_attrs[ATTR_BOUNDS])


def stored_range_test(study: optuna.Study) -> LRFinderResult:
    return LRFinderResult.model_validate(study.user_attrs[ATTR_RANGE_TEST])


Slot = tuple[dict[str, Any], dict[str, Any]]  # (fixed params, user attrs) of one queued trial


def _search_slots(
    spec: JobSpec, bounds: LRBounds, steps_per_epoch: int, winners: Sequence[dict[str, Any]] = ()
) -> list[Slot]:
    """The trial budget: earlier jobs' winners, the obvious answers, then the sampler's."""
    search = spec.search
    starts = warm_starts(
        search.families, bounds, search.epochs, search.warmup, steps_per_epoch=steps_per_epoch
    )
    slots: list[Slot] = [(w["params"], {ATTR_WARM_START: w["from"]}) for w in winners]
    slots += [(start, {}) for start in starts]
    slots += [({}, {})] * search.n_trials
    return slots[: search.n_trials]


def winner_starts(
    spec: JobSpec,
    bounds: LRBounds,
    steps_per_epoch: int,
    earlier: Sequence[tuple[str, Recommendation]],
) -> list[dict[str, Any]]:
    """The fixed parameters of a trial per earlier winner this job can try, at most its budget.

    Each earlier recommendation's schedule is expressed in this job's search space
    (:func:`lrtune.space.schedule_params`: the same family, warm-up and hyperparameters as
    fractions of the run, so another epoch count or batch size still means the same shape),
    and its LR is clipped into this job's bounds. A winner whose family this job does not
    search, or that repeats an earlier one, is left out. Each entry is ``{"params": ...,
    "from": {"job": id, "family", "lr", "clipped": reason or None}}``.
    """
    search = spec.search
    starts: list[dict[str, Any]] = []
    seen: set[str] = set()
    for job_id, rec in earlier:
        runnable = runnable_families(search.families, search.epochs * steps_per_epoch)
        if rec.best is None or rec.best.schedule.family not in runnable:
            continue
        if rec.best.lr_free is not None:  # another optimizer: nothing this search can try
            continue
        params, clipped = schedule_params(
            rec.best.schedule,
            rec.best.base_lr,
            source_epochs=rec.spec.search.epochs,
            source_steps_per_epoch=rec.steps_per_epoch,
            bounds=bounds,
            epochs=search.epochs,
            steps_per_epoch=steps_per_epoch,
            warmup=search.warmup,
        )
        key = json.dumps(params, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        origin = {
            "job": job_id,
            "family": rec.best.schedule.family,
            "lr": rec.best.base_lr,
            "clipped": clipped,
        }
        starts.append({"params": params, "from": origin})
        if clipped:
            logger.info("warm start from job %s: %s", job_id, clipped)
    return starts[: search.n_trials]


def _confirmation_slots(spec: JobSpec, bounds: LRBounds) -> list[Slot]:
    """Finalist ranks x confirmation seeds, then baselines x (search seed + confirmation seeds).

    The baselines also run on the search seed, for the search-seed column beside the finalists'
    trials (and for the single-seed comparison when ``confirm_seeds`` is 0). Adaptive
    confirmation's units come after these (:func:`extend_confirmation`).
    """
    seeds = confirmation_seeds(spec)
    slots: list[Slot] = [
        ({}, _finalist_unit(rank, seed))
        for rank in range(spec.search.finalists if seeds else 0)
        for seed in seeds
    ]
    for baseline in baseline_schedules(spec, bounds):
        slots += [({}, _baseline_unit(baseline, s)) for s in [spec.seed, *seeds]]
    return slots


def _finalist_unit(rank: int, seed: int) -> dict[str, Any]:
    return {ATTR_CANDIDATE: {"role": "finalist", "rank": rank}, ATTR_SEED: seed}


def _baseline_unit(baseline: Baseline, seed: int) -> dict[str, Any]:
    unit = {
        ATTR_CANDIDATE: {"role": "baseline", "name": baseline.name},
        ATTR_SCHEDULE: baseline.schedule,
        ATTR_BASE_LR: baseline.lr,
        ATTR_SEED: seed,
    }
    return unit | ({ATTR_LR_FREE: baseline.lr_free} if baseline.lr_free else {})


def extend_confirmation(
    study: optuna.Study, setup: TrainingSetup, rec: Recommendation | None = None
) -> int:
    """Queue one more confirmation seed for each undecided contender; return how many units.

    Call it when the confirmation queue has no queued or running unit. While the best
    candidates are inside each other's seed noise (:attr:`Recommendation.undecided`), each
    contender is retrained on its next seed of ``confirmation_seeds(spec,
    search.confirm_seeds_cap)``; 0 means the recommendation is decided. Each such unit has a
    fixed slot (after :func:`_confirmation_slots`' by seed, then candidate), so calling this
    again, or from two processes, queues no unit twice: a worker calls it under its lease.
    ``rec``: the study's :func:`recommend` as it stands, when the caller has it.
    """
    spec = setup.spec
    rec = rec or recommend(study, setup)
    undecided = rec.undecided
    if not undecided:
        return 0
    bounds = stored_bounds(study)
    baselines = {b.name: b for b in baseline_schedules(spec, bounds)}
    base = len(_confirmation_slots(spec, bounds))
    per_seed = spec.search.finalists + len(baselines)
    seeds = confirmation_seeds(spec, spec.search.confirm_seeds_cap)
    confirm = open_confirmation(study, spec)
    taken = {u.user_attrs.get(ATTR_SLOT) for u in confirm.get_trials(deepcopy=False)}
    queued = 0
    for candidate in undecided:
        done = {s.seed for s in candidate.seed_values}
        k = next(k for k, seed in enumerate(seeds) if seed not in done)
        if k < spec.search.confirm_seeds:  # a planned unit of it did not run: not an extension
            continue
        if candidate.role == "finalist":
            index = next(rank for rank, f in enumerate(rec.finalists) if f is candidate)
            unit = _finalist_unit(index, seeds[k])
        else:
            index = spec.search.finalists + list(baselines).index(candidate.name)
            unit = _baseline_unit(baselines[candidate.name], seeds[k])
        slot = base + (k - spec.search.confirm_seeds) * per_seed + index
        if slot not in taken:
            confirm.enqueue_trial({}, user_attrs={ATTR_SLOT: slot, **unit})
            queued += 1
    logger.info("study=%s event=confirmation_extended units=%d", study.study_name, queued)
    return queued


def _enqueue_missing(study: optuna.Study, slots: list[Slot]) -> None:
    """Enqueue every slot that has no live trial.

    A slot whose trials all FAILED (an interrupted run: Ctrl-C, an error) is enqueued again with
    the same parameters and root trial, so the retry resumes from that trial's checkpoint.
    """
    trials = study.get_trials(deepcopy=False)
    live = {t.user_attrs.get(ATTR_SLOT) for t in trials if t.state != TrialState.FAIL}
    failed = {t.user_attrs.get(ATTR_SLOT): t for t in trials if t.state == TrialState.FAIL}
    for slot, (params, attrs) in enumerate(slots):
        if slot in live:
            continue
        if slot in failed:
            retry = {k: v for k, v in failed[slot].user_attrs.items() if k != ATTR_FAIL_REASON}
            study.enqueue_trial(failed[slot].params, user_attrs=retry)
        else:
            study.enqueue_trial(params, user_attrs={ATTR_SLOT: slot, **attrs})


def requeue_interrupted(study: optuna.Study) -> int:
    """Queue again each slot whose trials all FAILED by interruption; return how many.

    A worker stopped by SIGTERM or Ctrl-C leaves its trial FAILED ("interrupted"); the retry has
    the same parameters and root trial, so it resumes from that trial's checkpoint. Trials that
    failed for a reason of their own (the training raised) are not retried here.
    """
    trials = study.get_trials(deepcopy=False)
    live = {t.user_attrs.get(ATTR_SLOT) for t in trials if t.state != TrialState.FAIL}
    interrupted = {
        t.user_attrs.get(ATTR_SLOT): t
        for t in trials
        if t.state == TrialState.FAIL
        and str(t.user_attrs.get(ATTR_FAIL_REASON, "")).startswith(INTERRUPTED)
    }
    retried = 0
    for slot, trial in interrupted.items():
        if slot is not None and slot not in live:
            retry = {k: v for k, v in trial.user_attrs.items() if k != ATTR_FAIL_REASON}
            study.enqueue_trial(trial.params, user_attrs=retry)
            retried += 1
    return retried


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


class Baseline(NamedTuple):
    """One of ``search.baselines`` as it trains: its name, schedule, LR and optimizer."""

    name: str
    schedule: dict[str, Any]
    lr: float
    lr_free: lr_free.LRFreeName | None = None

    @property
    def key(self) -> str:
        return _config_key(self.schedule, self.lr, self.lr_free)


def baseline_schedules(spec: JobSpec, bounds: LRBounds) -> list[Baseline]:
    """The job's ``search.baselines``, in its order: a constant LR at the range test's
    suggestion, at the optimizer's default, and the learning-rate-free optimizers' recipes."""
    constant = parse_schedule({"family": "constant"}).model_dump(mode="json")
    baselines = []
    for which in spec.search.baselines:
        if which == "constant_at_suggestion":
            baselines.append(Baseline("constant at suggestion", constant, bounds.suggestion))
        elif which == "optimizer_default":
            name = f"{spec.optimizer.name} default lr"
            baselines.append(Baseline(name, constant, spec.optimizer.default_lr))
        else:
            schedule, lr = lr_free.recipe(which, spec.optimizer, spec.search.epochs)
            schedule = parse_schedule(schedule).model_dump(mode="json")
            baselines.append(Baseline(lr_free.label(which, spec.optimizer), schedule, lr, which))
    return baselines


def finalist_trials(study: optuna.Study, spec: JobSpec) -> list[FrozenTrial]:
    """The best ``search.finalists`` COMPLETE trials whose schedules differ, best first.

    Two trials differ when their family, hyperparameters or LR do; of equal values the earlier
    trial ranks first.
    """
    sign = -1.0 if spec.search.direction == "maximize" else 1.0
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    picked: list[FrozenTrial] = []
    seen: set[str] = set()
    for trial in sorted(complete, key=lambda t: (sign * t.value, t.number)):
        key = _config_key(trial.user_attrs[ATTR_SCHEDULE], trial.user_attrs[ATTR_BASE_LR])
        if key not in seen:
            seen.add(key)
            picked.append(trial)
    return picked[: spec.search.finalists]


def _config_key(schedule: dict[str, Any], base_lr: float, lr_free_name: str | None = None) -> str:
    """What a unit trains, as a string: units with equal keys train the same runs."""
    what = [schedule, float(base_lr)] + ([lr_free_name] if lr_free_name else [])
    return json.dumps(what, sort_keys=True)


SKIPPED = "skipped"
"""Stop reasons of queued trials closed unrun start with this: ``skipped: target reached ...``."""


class SearchStopped(QueueRefused):
    """The search hands out no more trials: its target was reached, or its time is up."""


class AtCapacity(QueueRefused):
    """``search.max_parallel`` of the job's units are running: this process takes none now."""


def target_reached(study: optuna.Study, spec: JobSpec) -> str | None:
    """Why the search is over because a finished trial reached ``search.target``; else None.

    Only COMPLETE trials count (a pruned trial did not finish); of several, the earliest.
    """
    target = spec.search.target
    if target is None:
        return None
    maximize = spec.search.direction == "maximize"
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for trial in sorted(complete, key=lambda t: t.number):
        value = float(trial.value)  # type: ignore[arg-type]  # COMPLETE trials have one
        if (value >= target) if maximize else (value <= target):
            relation = ">=" if maximize else "<="
            return (
                f"target reached: trial {trial.number}'s {spec.search.metric} {value:.4g} "
                f"{relation} search.target {target:g}"
            )
    return None


def timeout_passed(spec: JobSpec, searching_for_s: float | None) -> str | None:
    """Why the search is over because ``search.timeout_s`` passed; else None."""
    timeout = spec.search.timeout_s
    if timeout is None or searching_for_s is None or searching_for_s < timeout:
        return None
    return f"search.timeout_s ({timeout:g} s) passed since the job entered searching"


def skipped_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The search's queued trials that were closed unrun when it stopped early."""
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    return [t for t in pruned if str(t.user_attrs.get(ATTR_STOP_REASON, "")).startswith(SKIPPED)]


class UnitGate:
    """What a job's queues check each time they are about to hand out a unit.

    Set on a :class:`QueuedStudy` (its ``gate``) by :func:`run_trials` and
    :func:`run_confirmation`. On the search study: once :func:`target_reached`, or
    ``stop_reason`` (called with no argument) names a reason (a worker's
    :func:`timeout_passed`), the queued trials are closed unrun (PRUNED, stop reason
    ``skipped: <why>``: :func:`lrtune._optuna.close_unstarted`) and nothing more is handed out
    (:class:`SearchStopped`); the trials running finish, and the confirmation follows as after
    a full search. With a ``lock`` (a context manager factory every process that pops the
    job's units shares: :meth:`lrtune.jobs.JobStore.unit_lock`), at most
    ``search.max_parallel`` of the queue's trials run at once: a pop that would exceed it is
    refused (:class:`AtCapacity`) and the process helps another job.

    The bound is exact, with no race to overshoot it, when every process popping the job's
    units uses the lock (workers do): the count of RUNNING trials and the pop happen under
    it, and only a pop under it makes a trial RUNNING. A dead worker's trial keeps its place
    until its heartbeat goes stale (it is then FAILED, stops counting, and its retry is
    queued), so the job may briefly run fewer units than allowed. The one way more train at
    once: a worker cut off from the database (not dead) whose trial went stale keeps training
    it, unable to record it, while its retry runs elsewhere: one extra per such worker, until
    it notices the database is gone. Trials closed
    unrun are RUNNING only inside the lock, between two writes; in the trials' times they are
    zero-length. Without a lock (:func:`tune`; :func:`run_worker` processes sharing a study
    without a job store) only the target is enforced.
    ``handed_out`` counts the pops this gate let through (one may still find the queue
    empty, if another process took its last unit).
    """

    def __init__(
        self,
        spec: JobSpec,
        *,
        lock: Callable[[], AbstractContextManager[None]] | None = None,
        stop_reason: Callable[[], str | None] | None = None,
    ) -> None:
        self.spec = spec
        self.lock = lock
        self.stop_reason = stop_reason
        self.handed_out = 0

    def full(self, queue: optuna.Study) -> bool:
        """Whether the queue's running units already reach ``search.max_parallel`` (a read)."""
        return self.lock is not None and count_running(queue) >= self.spec.search.max_parallel

    @contextmanager
    def __call__(self, queue: QueuedStudy) -> Iterator[None]:
        with self.lock() if self.lock is not None else nullcontext():
            if not queue.study_name.endswith(CONFIRM_SUFFIX):
                why = target_reached(queue, self.spec) or (
                    self.stop_reason() if self.stop_reason is not None else None
                )
                if why is not None:
                    closed = close_unstarted(queue, f"{SKIPPED}: {why}")
                    if closed:
                        logger.info(
                            "study=%s event=search_stopped skipped=%d %s",
                            queue.study_name,
                            closed,
                            why,
                        )
                    raise SearchStopped(why)
            if self.full(queue):
                raise AtCapacity(
                    f"{self.spec.search.max_parallel} units of {queue.study_name} are running "
                    "(search.max_parallel)"
                )
            yield
        self.handed_out += 1


def stop_progress(study: optuna.Study) -> dict[str, Any]:
    """``trials_skipped`` and ``search_stopped`` of a job's progress, from its search study."""
    skipped = skipped_trials(study)
    reason = skipped[0].user_attrs[ATTR_STOP_REASON] if skipped else None
    return {"trials_skipped": len(skipped), "search_stopped": reason}


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
    except torch.OutOfMemoryError as exc:
        reason = out_of_memory_reason(setup, exc)
        trial.set_user_attr(ATTR_FAIL_REASON, reason)
        raise DeviceOutOfMemory(reason) from exc
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        trial.set_user_attr(ATTR_FAIL_REASON, reason)
        raise TrialFailed(reason) from exc
    except BaseException as exc:
        trial.set_user_attr(ATTR_FAIL_REASON, f"{INTERRUPTED} ({type(exc).__name__})")
        raise


def _checkpoint_path(
    artifact_dir: Path | None, trial: optuna.Trial, study_name: str, kind: str
) -> Path | None:
    if artifact_dir is None:
        return None
    return artifact_dir / study_name / f"{kind}-{trial.user_attrs[ATTR_ROOT]}.pt"


UnitStop = StopReason
"""Asked after each epoch of a unit and, within an epoch, at most every ``unit_check_s``
seconds: why to stop it there (e.g. its job was cancelled), else None.

A unit stopped so ends PRUNED with that reason (its stop reason), like a pruned trial."""


def _check_unit_stop(stop_unit: UnitStop | None) -> None:
    reason = stop_unit() if stop_unit is not None else None
    if reason is not None:
        raise StopTraining(reason)


class TrialObjective:
    """Train one sampled schedule; report each epoch's metric; prune, stop or finish."""

    def __init__(
        self,
        setup: TrainingSetup,
        bounds: LRBounds,
        artifact_dir: Path | None = None,
        stop_unit: UnitStop | None = None,
        unit_check_s: float = UNIT_CHECK_S,
    ) -> None:
        self.setup = setup
        self.bounds = bounds
        self.artifact_dir = artifact_dir
        self.stop_unit = stop_unit
        self.unit_check_s = unit_check_s

    def __call__(self, trial: optuna.Trial) -> float:
        with _storage_errors_leave_the_trial_running():
            return self._run(trial)

    def _run(self, trial: optuna.Trial) -> float:
        run, checkpoint = _guarded(trial, self.setup, lambda: self._train(trial))
        trial.set_user_attr(ATTR_RUN, run.model_dump(mode="json"))
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        if run.status in ("pruned", "diverged"):
            trial.set_user_attr(ATTR_STOP_REASON, run.reason)
            raise optuna.TrialPruned(run.reason)
        return run.final(self.setup.metric)

    def _train(self, trial: optuna.Trial) -> tuple[TrainingRun, Path | None]:
        search = self.setup.spec.search
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
        checkpoint = _checkpoint_path(self.artifact_dir, trial, trial.study.study_name, "trial")
        metric = self.setup.metric

        def report(epoch: int, record: dict[str, float]) -> None:
            try:
                trial.report(record[metric], epoch)
                prune = trial.should_prune()
            except Exception as exc:  # the storage's, not the training's
                raise _StorageTrouble(exc) from exc
            if prune:
                raise StopTraining(  # 1-based, as the dashboard's Epochs column counts
                    f"pruned after epoch {epoch + 1} of {search.epochs} "
                    f"({record[metric]:.4g} {metric})"
                )
            _check_unit_stop(self.stop_unit)

        run = train(
            self.setup,
            schedule,
            lr,
            search.epochs,
            lr_threshold=search.lr_threshold,
            on_epoch=report,
            checkpoint=checkpoint,
            stop_reason=self.stop_unit,
            stop_check_s=self.unit_check_s,
        )
        return run, checkpoint


class ConfirmationObjective:
    """Train one confirmation unit: one finalist or baseline on one seed, for the full epochs.

    A finalist unit is resolved from the finished search when it first runs; a finalist whose
    schedule and LR equal a baseline's is not trained again (the baseline's runs stand in).
    """

    def __init__(
        self,
        setup: TrainingSetup,
        search: optuna.Study,
        artifact_dir: Path | None = None,
        stop_unit: UnitStop | None = None,
        unit_check_s: float = UNIT_CHECK_S,
    ) -> None:
        self.setup = setup
        self.search = search
        self.artifact_dir = artifact_dir
        self.stop_unit = stop_unit
        self.unit_check_s = unit_check_s
        self._finalists: list[FrozenTrial] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        with _storage_errors_leave_the_trial_running():
            return self._run(trial)

    def _run(self, trial: optuna.Trial) -> float:
        if ATTR_ROOT not in trial.user_attrs:
            trial.set_user_attr(ATTR_ROOT, trial.number)
        if ATTR_SCHEDULE not in trial.user_attrs:
            self._resolve_finalist(trial)
        attrs = trial.user_attrs
        checkpoint = _checkpoint_path(self.artifact_dir, trial, self.search.study_name, "confirm")
        spec = self.setup.spec
        run = _guarded(
            trial,
            self.setup,
            lambda: train(
                self.setup,
                parse_schedule(attrs[ATTR_SCHEDULE]),
                attrs[ATTR_BASE_LR],
                spec.search.epochs,
                lr_threshold=spec.search.lr_threshold,
                on_epoch=lambda _epoch, _record: _check_unit_stop(self.stop_unit),
                checkpoint=checkpoint,
                seed=attrs[ATTR_SEED],
                lr_free=attrs.get(ATTR_LR_FREE),
                stop_reason=self.stop_unit,
                stop_check_s=self.unit_check_s,
            ),
        )
        trial.set_user_attr(ATTR_RUN, run.model_dump(mode="json"))
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        # diverged: a result (the worst), not a failure to retry; pruned: stopped by stop_unit
        if run.status in ("diverged", "pruned"):
            trial.set_user_attr(ATTR_STOP_REASON, run.reason)
            raise optuna.TrialPruned(run.reason)
        return run.final(self.setup.metric)

    def _resolve_finalist(self, trial: optuna.Trial) -> None:
        """Record the schedule and LR of the finalist this unit names, or prune the unit."""
        if self._finalists is None:
            self._finalists = finalist_trials(self.search, self.setup.spec)
        rank = trial.user_attrs[ATTR_CANDIDATE]["rank"]
        if rank >= len(self._finalists):
            reason = f"no finalist {rank + 1}: {len(self._finalists)} distinct schedules completed"
            trial.set_user_attr(ATTR_STOP_REASON, reason)
            raise optuna.TrialPruned(reason)
        finalist = self._finalists[rank]
        schedule, lr = finalist.user_attrs[ATTR_SCHEDULE], finalist.user_attrs[ATTR_BASE_LR]
        trial.set_user_attr(ATTR_SCHEDULE, schedule)
        trial.set_user_attr(ATTR_BASE_LR, lr)
        bounds = stored_bounds(self.search)
        for baseline in baseline_schedules(self.setup.spec, bounds):
            if baseline.key == _config_key(schedule, lr):
                name = baseline.name
                reason = f"trial {finalist.number} is the baseline {name!r}: its runs stand in"
                trial.set_user_attr(ATTR_SAME_AS, name)
                trial.set_user_attr(ATTR_STOP_REASON, reason)
                raise optuna.TrialPruned(reason)


def run_trials(
    study: optuna.Study,
    setup: TrainingSetup,
    *,
    artifact_dir: Path | None = None,
    timeout_s: float | None = None,
    wait_for_others: bool = True,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    gate: UnitGate | None = None,
    stop_unit: UnitStop | None = None,
    unit_check_s: float = UNIT_CHECK_S,
) -> None:
    """Run queued trials of a prepared study until the queue is empty (or time is up).

    With ``wait_for_others``, keep waiting while trials run elsewhere, so that a trial whose
    worker died (stale heartbeat) is re-queued and run here. Without a heartbeat on the storage
    a dead worker's trial would never go stale, so then nothing is waited for.
    ``should_stop`` is asked after each trial; True stops the run there (e.g. the job was
    cancelled), leaving the rest of the queue. ``gate`` is checked before each trial is handed
    out (default: one that stops the search at ``search.target``; see :class:`UnitGate`).
    ``stop_unit`` is asked after each epoch of the running trial and within an epoch at most
    every ``unit_check_s`` seconds (see :data:`UnitStop`), so a cancelled job's trial stops
    within seconds instead of at its epoch's end; a requested stop
    (:func:`~lrtune.training.request_stop`) is looked for as often.
    """
    study.gate = gate or UnitGate(setup.spec)
    _drain(
        study,
        TrialObjective(setup, stored_bounds(study), artifact_dir, stop_unit, unit_check_s),
        desc="trials",
        timeout_s=timeout_s,
        wait_for_others=wait_for_others,
        progress=progress,
        show_best=True,
        should_stop=should_stop,
    )


def run_confirmation(
    study: optuna.Study,
    setup: TrainingSetup,
    *,
    artifact_dir: Path | None = None,
    wait_for_others: bool = True,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
    gate: UnitGate | None = None,
    stop_unit: UnitStop | None = None,
    unit_check_s: float = UNIT_CHECK_S,
) -> bool:
    """Run the confirmation units of a searched study until none is left; True if it ran them.

    The finalists are known only once the search has no queued or running trial. Call this after
    :func:`run_trials`: trials still queued then were left by a search that ran out of time, so
    the search is unfinished and this returns False (a later run finishes and confirms it).
    While trials run in other processes, with ``wait_for_others`` (and a heartbeat on the
    storage) this waits for them; otherwise it returns False at once and leaves the units to
    whichever process finishes the search. ``should_stop``, ``gate``, ``stop_unit`` and
    ``unit_check_s`` are as in :func:`run_trials`.
    """
    while has_unfinished(study):
        heartbeat = heartbeat_interval(study)
        if has_waiting(study) or not (wait_for_others and heartbeat):
            return False
        time.sleep(heartbeat / 2)
        fail_stale_trials(study)
    confirm = open_confirmation(study, setup.spec)
    confirm.gate = gate
    _drain(
        confirm,
        ConfirmationObjective(setup, study, artifact_dir, stop_unit, unit_check_s),
        desc="confirmation",
        timeout_s=None,
        wait_for_others=wait_for_others,
        progress=progress,
        should_stop=should_stop,
    )
    return True


def _drain(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    desc: str,
    timeout_s: float | None,
    wait_for_others: bool,
    progress: bool,
    show_best: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Pop and run ``study``'s queued trials until the queue is empty, the time is up, or
    ``should_stop`` says so after a trial."""
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
            study.stop()

    stopped: list[int] = []
    with bar:
        while deadline is None or time.monotonic() < deadline:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
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


def recommend(study: optuna.Study, setup: TrainingSetup) -> Recommendation:
    """The recommendation from what the study holds now (trains nothing).

    Run :func:`run_trials` and :func:`run_confirmation` first; without confirmation runs the
    recommendation is the search's best trial, marked unconfirmed.
    """
    spec = setup.spec
    bounds = stored_bounds(study)
    confirm = open_confirmation(study, spec)
    units = confirm.get_trials(deepcopy=False)
    runs = _runs_by_config_and_seed(units)
    ran = {seed for _, seed in runs}
    seeds = [s for s in confirmation_seeds(spec, spec.search.confirm_seeds_cap) if s in ran]
    seeds = seeds or confirmation_seeds(spec)

    def seed_values(key: str) -> list[SeedValue]:
        done = [(s, runs[(key, s)]) for s in seeds if (key, s) in runs]
        return [
            SeedValue(seed=s, value=_seed_value(r, spec), status=r.status, epochs=len(r.epochs))
            for s, r in done
        ]

    finalists = []
    for trial in finalist_trials(study, spec):
        schedule, lr = trial.user_attrs[ATTR_SCHEDULE], trial.user_attrs[ATTR_BASE_LR]
        finalists.append(
            TrainedSchedule(
                name=f"trial {trial.number}",
                role="finalist",
                schedule=schedule,
                base_lr=lr,
                run=TrainingRun.model_validate(trial.user_attrs[ATTR_RUN]),
                trial_number=trial.number,
                seed_values=seed_values(_config_key(schedule, lr)),
            )
        )
    baselines = []
    for baseline in baseline_schedules(spec, bounds):
        if (baseline.key, spec.seed) in runs:  # not yet run: left out
            baselines.append(
                TrainedSchedule(
                    name=baseline.name,
                    role="baseline",
                    schedule=baseline.schedule,
                    base_lr=baseline.lr,
                    run=runs[(baseline.key, spec.seed)],
                    seed_values=seed_values(baseline.key),
                    lr_free=baseline.lr_free,
                )
            )
    return Recommendation.build(
        spec=spec,
        study_name=study.study_name,
        range_test=stored_range_test(study),
        bounds=bounds,
        finalists=finalists,
        baselines=baselines,
        confirm_seeds=seeds,
        steps_per_epoch=setup.steps_per_epoch,
        group_multipliers=setup.group_multipliers,
        n_trials=_count_states(study.get_trials(deepcopy=False)),
        n_confirmation=_count_states(units),
        history=_history(study, units),
    )


def _runs_by_config_and_seed(units: list[FrozenTrial]) -> dict[tuple[str, int], TrainingRun]:
    runs = {}
    for unit in units:
        attrs = unit.user_attrs
        if unit.state in FINISHED and ATTR_RUN in attrs:
            key = _config_key(attrs[ATTR_SCHEDULE], attrs[ATTR_BASE_LR], attrs.get(ATTR_LR_FREE))
            runs[(key, attrs[ATTR_SEED])] = TrainingRun.model_validate(attrs[ATTR_RUN])
    return runs


def _seed_value(run: TrainingRun, spec: JobSpec) -> float:
    return float("nan") if run.status == "diverged" else run.final(spec.search.metric)


def _count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    counts = {state.name.lower(): 0 for state in TrialState}
    for t in trials:
        counts[t.state.name.lower()] += 1
    return counts


class TrialRecord(TrialSummary):
    """What lrtune stored on one search trial or confirmation run, read back.

    A :class:`~lrtune.recommendation.TrialSummary` (the history entry) and what the summary
    leaves out: the ``schedule`` and the ``run`` (per-epoch values, per-step LRs), the queue
    ``slot`` and ``root_trial`` (the first trial of its slot: retries share it, and its
    checkpoint), and when it ran (``started``, ``finished``; not in the history, which is
    deterministic). ``stop_reason`` says why it was pruned or stopped, or, for a FAILED one, why
    it failed.
    """

    model_config = ConfigDict(frozen=True)

    schedule: dict[str, Any] | None
    run: TrainingRun | None
    slot: int | None
    root_trial: int | None
    started: datetime | None = None
    finished: datetime | None = None

    @classmethod
    def read(
        cls, trial: FrozenTrial, kind: Literal["search", "confirmation"] = "search"
    ) -> TrialRecord:
        attrs = trial.user_attrs
        value = trial.value
        if value is None and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        reason = attrs.get(ATTR_STOP_REASON)
        if trial.state == TrialState.FAIL:
            reason = attrs.get(ATTR_FAIL_REASON, NO_FAIL_REASON)
        candidate = attrs.get(ATTR_CANDIDATE)
        if candidate is not None:
            candidate = candidate.get("name") or f"finalist {candidate['rank'] + 1}"
        return cls(
            kind=kind,
            number=trial.number,
            state=trial.state.name,
            value=value,
            family=(attrs.get(ATTR_SCHEDULE) or {}).get("family", trial.params.get("family")),
            schedule=attrs.get(ATTR_SCHEDULE),
            base_lr=attrs.get(ATTR_BASE_LR),
            run=TrainingRun.model_validate(attrs[ATTR_RUN]) if ATTR_RUN in attrs else None,
            stop_reason=reason,
            slot=attrs.get(ATTR_SLOT),
            root_trial=attrs.get(ATTR_ROOT),
            candidate=candidate,
            seed=attrs.get(ATTR_SEED),
            started=trial.datetime_start,
            finished=trial.datetime_complete,
        )

    def summary(self) -> TrialSummary:
        """The history entry: kind, number, state, value, family, LR, reason (and candidate,
        seed for a confirmation run)."""
        return TrialSummary.model_validate(self.model_dump(include=set(TrialSummary.model_fields)))


def search_records(study: optuna.Study) -> list[TrialRecord]:
    """Every trial of the search, in trial order."""
    return [TrialRecord.read(t) for t in study.get_trials(deepcopy=False)]


def confirmation_records(study: optuna.Study) -> list[TrialRecord]:
    """Every confirmation run of a search study's job, in queue order."""
    spec = JobSpec.model_validate(study.user_attrs[ATTR_SPEC])
    units = open_confirmation(study, spec).get_trials(deepcopy=False)
    return [TrialRecord.read(u, "confirmation") for u in units]


def _history(study: optuna.Study, units: list[FrozenTrial]) -> list[TrialSummary]:
    """The search's trials, then the confirmation runs, labelled by ``kind``."""
    records = search_records(study) + [TrialRecord.read(u, "confirmation") for u in units]
    return [r.summary() for r in records]


@storage_errors()
def run_worker(
    study_name: str,
    storage: str | optuna.storages.BaseStorage,
    *,
    artifact_dir: str | Path | None = None,
    wait_for_others: bool = False,
    progress: bool = False,
) -> None:
    """The worker loop: join a prepared study and run its queued work until none is left.

    Runs search trials while any are queued, then, once the search is finished, confirmation
    units. The job spec is read from the study, so a worker needs only the study's name and
    storage.
    """
    storage = _resolve_storage(storage)
    try:
        loaded = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise NotFoundError(f"no study {study_name!r} in the storage") from None
    if ATTR_BOUNDS not in loaded.user_attrs:
        raise NotFoundError(f"study {study_name!r} has not been prepared (no range test stored)")
    spec = JobSpec.model_validate(loaded.user_attrs[ATTR_SPEC])
    study = open_study(spec, storage)
    setup = TrainingSetup.from_spec(spec)
    artifacts = Path(artifact_dir) if artifact_dir else None
    run_trials(
        study,
        setup,
        artifact_dir=artifacts,
        timeout_s=spec.search.timeout_s,
        wait_for_others=wait_for_others,
        progress=progress,
    )
    confirm = {"artifact_dir": artifacts, "wait_for_others": wait_for_others, "progress": progress}
    while run_confirmation(study, setup, **confirm) and extend_confirmation(study, setup):
        pass


@storage_errors()
def tune(
    spec: JobSpec,
    storage: Storage = None,
    *,
    artifact_dir: str | Path | None = None,
    progress: bool = True,
) -> Recommendation:
    """Find the LR schedule for a job: range test, search, confirmation, recommendation.

    Args:
        spec: the job.
        storage: an Optuna storage or URL (``sqlite:///lrtune.db``, ``postgresql+psycopg://...``);
            None keeps the study in memory. With a URL, a crashed run resumes where it stopped.
        artifact_dir: where trials and confirmation runs checkpoint each epoch (needed to resume
            a run mid-way).
        progress: progress bars on stderr.

    ``search.timeout_s`` bounds the search; a search cut short leaves its queue for a later run
    and is not confirmed (the recommendation says so).
    """
    setup = TrainingSetup.from_spec(spec)
    study = prepare_study(spec, storage, setup=setup, progress=progress)
    artifacts = Path(artifact_dir) if artifact_dir else None
    run_trials(
        study, setup, artifact_dir=artifacts, timeout_s=spec.search.timeout_s, progress=progress
    )
    while True:  # confirmation, then more seeds while the best are inside the noise
        confirmed = run_confirmation(study, setup, artifact_dir=artifacts, progress=progress)
        rec = recommend(study, setup)
        if not (confirmed and extend_confirmation(study, setup, rec)):
            return rec
