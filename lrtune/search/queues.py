"""A job's queues: its two Optuna studies, the units enqueued on them, and its candidates.

Every job has a *search study* (``search.n_trials`` trials, sampled by TPE inside the range
test's bounds) and beside it, in the same storage, a *confirmation study* (the finalists and
baselines retrained on fresh seeds): :func:`open_study` and :func:`open_confirmation`. Both are
:class:`~lrtune._optuna.QueuedStudy` queues: every unit is enqueued up front, in a numbered
*slot* (:data:`~lrtune._optuna.ATTR_SLOT`), and workers only pop what is queued, so a budget
adds up exactly however many processes share it. This module says what the slots hold
(:func:`search_slots`, :func:`confirmation_slots`), enqueues the missing ones
(:func:`enqueue_missing`) and queues interrupted ones again (:func:`requeue_interrupted`).

The candidates a recommendation compares: the search's best distinct schedules
(:func:`finalist_trials`) and the job's baselines (:func:`baseline_schedules`), keyed by what
they train (:func:`config_key`).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrtune import lr_free
from lrtune._optuna import (
    ATTR_BASE_LR,
    ATTR_CANDIDATE,
    ATTR_FAIL_REASON,
    ATTR_LR_FREE,
    ATTR_SCHEDULE,
    ATTR_SEED,
    ATTR_SLOT,
    ATTR_WARM_START,
    CONFIRM_SUFFIX,
    QueuedStudy,
    open_queued_study,
    storage_of,
)
from lrtune.optuna_storage import open_storage
from lrtune.params import MAX_SEED
from lrtune.recommendation import Recommendation
from lrtune.schedules import parse_schedule
from lrtune.space import LRBounds, runnable_families, schedule_params, warm_starts
from lrtune.spec import JobSpec, SearchSpec

logger = logging.getLogger(__name__)

Storage = str | optuna.storages.BaseStorage | None
INTERRUPTED = "interrupted"
"""Fail reasons of units stopped by a signal or Ctrl-C start with this: they are retried."""
Slot = tuple[dict[str, Any], dict[str, Any]]  # (fixed params, user attrs) of one queued trial


def make_sampler(search: SearchSpec, seed: int) -> optuna.samplers.BaseSampler:
    """TPE with explicit settings for a conditional space (Optuna's defaults changed in 5.0)."""
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            multivariate=True,
            group=True,
            constant_liar=True,
            seed=seed,
            n_startup_trials=max(3, min(10, search.n_trials // 3)),
        )


def make_pruner(search: SearchSpec) -> optuna.pruners.BasePruner:
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=search.epochs, reduction_factor=3
        )
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def resolve_storage(storage: Storage) -> optuna.storages.BaseStorage:
    return open_storage(storage) if storage is None or isinstance(storage, str) else storage


def open_study(spec: JobSpec, storage: Storage, study_name: str | None = None) -> QueuedStudy:
    """Create the job's search study, or load it when it exists (a resumed or shared job).

    ``study_name`` defaults to ``spec.study_name()``; the job store names each job's study from
    the job's id instead (``JobRecord.study_name``), and its workers pass that name.
    """
    return open_queued_study(
        resolve_storage(storage),
        study_name or spec.study_name(),
        direction=spec.search.direction or "minimize",
        sampler=make_sampler(spec.search, spec.seed),
        pruner=make_pruner(spec.search),
    )


def open_confirmation(study: optuna.Study, search: SearchSpec, seed: int) -> QueuedStudy:
    """The confirmation study beside a search study, in the same storage (``seed``: the
    job's)."""
    return open_queued_study(
        storage_of(study),
        study.study_name + CONFIRM_SUFFIX,
        direction=search.direction or "minimize",
        sampler=optuna.samplers.RandomSampler(seed=seed),  # units sample nothing
        pruner=optuna.pruners.NopPruner(),
    )


def confirmation_seeds(search: SearchSpec, seed: int, count: int | None = None) -> list[int]:
    """``count`` (default ``search.confirm_seeds``) seeds after the job's ``seed``: the same
    for every candidate; adaptive confirmation takes the next ones in this order."""
    count = search.confirm_seeds if count is None else count
    return [(seed + 1 + k) % (MAX_SEED + 1) for k in range(count)]


def search_slots(
    search: SearchSpec,
    bounds: LRBounds,
    steps_per_epoch: int,
    winners: Sequence[dict[str, Any]] = (),
) -> list[Slot]:
    """The trial budget: earlier jobs' winners, the obvious answers, then the sampler's."""
    starts = warm_starts(
        search.families, bounds, search.epochs, search.warmup, steps_per_epoch=steps_per_epoch
    )
    slots: list[Slot] = [(w["params"], {ATTR_WARM_START: w["from"]}) for w in winners]
    slots += [(start, {}) for start in starts]
    slots += [({}, {})] * search.n_trials
    return slots[: search.n_trials]


def winner_starts(
    search: SearchSpec,
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


def confirmation_slots(spec: JobSpec, bounds: LRBounds) -> list[Slot]:
    """Finalist ranks x confirmation seeds, then baselines x (search seed + confirmation seeds).

    The baselines also run on the search seed, for the search-seed column beside the finalists'
    trials (and for the single-seed comparison when ``confirm_seeds`` is 0). Adaptive
    confirmation's units come after these
    (:func:`lrtune.search.recommend.extend_confirmation`).
    """
    seeds = confirmation_seeds(spec.search, spec.seed)
    slots: list[Slot] = [
        ({}, finalist_unit(rank, seed))
        for rank in range(spec.search.finalists if seeds else 0)
        for seed in seeds
    ]
    for baseline in baseline_schedules(spec, bounds):
        slots += [({}, baseline_unit(baseline, s)) for s in [spec.seed, *seeds]]
    return slots


def finalist_unit(rank: int, seed: int) -> dict[str, Any]:
    return {ATTR_CANDIDATE: {"role": "finalist", "rank": rank}, ATTR_SEED: seed}


def baseline_unit(baseline: Baseline, seed: int) -> dict[str, Any]:
    unit = {
        ATTR_CANDIDATE: {"role": "baseline", "name": baseline.name},
        ATTR_SCHEDULE: baseline.schedule,
        ATTR_BASE_LR: baseline.lr,
        ATTR_SEED: seed,
    }
    return unit | ({ATTR_LR_FREE: baseline.lr_free} if baseline.lr_free else {})


def enqueue_missing(study: optuna.Study, slots: list[Slot]) -> None:
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


class Baseline(NamedTuple):
    """One of ``search.baselines`` as it trains: its name, schedule, LR and optimizer."""

    name: str
    schedule: dict[str, Any]
    lr: float
    lr_free: lr_free.LRFreeName | None = None

    @property
    def key(self) -> str:
        return config_key(self.schedule, self.lr, self.lr_free)


def baseline_schedules(spec: JobSpec, bounds: LRBounds) -> list[Baseline]:
    """The job's ``search.baselines``, in its order: a constant LR at the range test's
    suggestion, at the optimizer's default, and the learning-rate-free optimizers' recipes
    (but one that cannot train the job as it asks: :func:`lrtune.lr_free.unsupported`)."""
    constant = parse_schedule({"family": "constant"}).model_dump(mode="json")
    baselines = []
    for which in spec.search.baselines:
        if which == "constant_at_suggestion":
            baselines.append(Baseline("constant at suggestion", constant, bounds.suggestion))
        elif which == "optimizer_default" and spec.task is not None:
            if spec.task.lrs is not None:  # the LRs the task's code builds its optimizer with
                baselines.append(Baseline("your lr as written", constant, spec.task.lrs[0]))
        elif which == "optimizer_default":
            name = f"{spec.optimizer.name} default lr"
            baselines.append(Baseline(name, constant, spec.optimizer.default_lr))
        elif (why := lr_free.unsupported(which, spec)) is not None:
            logger.info("baseline %s left out: %s", which, why)
        else:
            schedule, lr = lr_free.recipe(which, spec.optimizer, spec.search.epochs)
            schedule = parse_schedule(schedule).model_dump(mode="json")
            baselines.append(Baseline(lr_free.label(which, spec.optimizer), schedule, lr, which))
    return baselines


def finalist_trials(study: optuna.Study, search: SearchSpec) -> list[FrozenTrial]:
    """The best ``search.finalists`` COMPLETE trials whose schedules differ, best first.

    Two trials differ when their family, hyperparameters or LR do; of equal values the earlier
    trial ranks first.
    """
    sign = -1.0 if search.direction == "maximize" else 1.0
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    picked: list[FrozenTrial] = []
    seen: set[str] = set()
    for trial in sorted(complete, key=lambda t: (sign * t.value, t.number)):
        key = config_key(trial.user_attrs[ATTR_SCHEDULE], trial.user_attrs[ATTR_BASE_LR])
        if key not in seen:
            seen.add(key)
            picked.append(trial)
    return picked[: search.finalists]


def config_key(schedule: dict[str, Any], base_lr: float, lr_free_name: str | None = None) -> str:
    """What a unit trains, as a string: units with equal keys train the same runs."""
    what = [schedule, float(base_lr)] + ([lr_free_name] if lr_free_name else [])
    return json.dumps(what, sort_keys=True)
