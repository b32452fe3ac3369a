"""Preparing a job: its range test, the LR bounds it gives, and every unit enqueued.

:func:`prepare_study` runs once per job (again after a crash: it redoes only what is missing):
the multi-seed range test (:func:`range_test`) on the job's model, data and optimizer, its
result and the search's LR bounds stored on the search study, then the search's trial budget
and the confirmation units enqueued (:mod:`lrtune.search.queues`). Enqueuing happens here
only, never in the processes that run the units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import optuna
import torch

from lrtune._optuna import (
    ATTR_BOUNDS,
    ATTR_RANGE_TEST,
    ATTR_RUN_SHAPE,
    ATTR_SPEC,
    ATTR_WARM_STARTS,
    QueuedStudy,
)
from lrtune.exceptions import ConflictError
from lrtune.finder import StepCallback, find_lr
from lrtune.recommendation import Recommendation
from lrtune.result import LRFinderResult
from lrtune.search.queues import (
    Storage,
    confirmation_slots,
    enqueue_missing,
    open_confirmation,
    open_study,
    search_slots,
    winner_starts,
)
from lrtune.search.units import DeviceOutOfMemory
from lrtune.space import LRBounds, search_bounds
from lrtune.spec import JobSpec
from lrtune.training import TrainingSetup, out_of_memory_reason


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
    train_data, criterion, loss_fn = setup.range_test_inputs()
    try:
        with setup.kernels():
            result = find_lr(
                model,
                train_data,
                optimizer,
                criterion,
                loss_fn=loss_fn,
                **options.model_dump(),  # RangeTestSpec's fields are find_lr's keyword names
                seed=spec.seed,
                device=setup.device,
                amp=setup.amp,
                progress=progress,
                callback=callback,
            )
    except torch.OutOfMemoryError as exc:
        raise DeviceOutOfMemory(f"range test: {out_of_memory_reason(setup, exc)}") from exc
    if not spec.param_groups:  # a task's multipliers are its groups' LRs over group 0's
        return result
    return result.rescaled(1 / setup.group_multipliers[0], "a parameter with lr_mult 1")


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
    range_test_result: LRFinderResult | None = None,
) -> QueuedStudy:
    """Run the range test and enqueue the trial budget and the confirmation units.

    Safe to call again after a crash: the range test is kept on the study, and only the trials
    and units that are not yet in the storage are enqueued (a FAILED one again, to resume).
    ``study_name`` is as in :func:`~lrtune.search.queues.open_study`; ``callback`` is called
    after each range-test step (what it raises stops the range test before anything is
    stored).

    ``earlier_winners`` (job id, recommendation) of earlier jobs close to this one (a job
    store's ``warm_start_candidates``) warm-start the search: the first slots of the trial
    budget try their recommended schedules (:func:`~lrtune.search.queues.winner_starts`).
    Which winners is decided once, on the first call, and kept on the study, so a re-run
    enqueues the same ones.

    ``fence`` guards the writes for a caller that may do them only while it holds a lease
    (a worker: it renews its lease, raising :class:`~lrtune.exceptions.LeaseLost` if it lost
    it). It is called right before the first write (the range test's result, or the first
    enqueue when the result is already stored) and again after the last: what it raises
    before stops the writes; raised after, it tells the caller its writes may have overlapped
    a new holder's. What remains is a window, not a guarantee: writes that take longer than
    one lease after the renewal before them (a process paused, or a connection stalled, for a
    whole lease mid-write) can land while a new holder runs the phase, who may enqueue the
    same slots again. The writes take milliseconds against a lease of a minute.

    ``range_test_result`` is the job's range test run elsewhere (an agent ran it on the user's
    machine, with a setup of the run's shape only: :meth:`TrainingSetup.of_shape`).
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
        result = range_test_result or range_test(setup, progress=progress, callback=callback)
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
        starts = winner_starts(spec.search, bounds, setup.steps_per_epoch, earlier_winners)
        study.set_user_attr(ATTR_WARM_STARTS, starts)
    winners = study.user_attrs[ATTR_WARM_STARTS]
    enqueue_missing(study, search_slots(spec.search, bounds, setup.steps_per_epoch, winners))
    confirmation = open_confirmation(study, spec.search, spec.seed)
    enqueue_missing(confirmation, confirmation_slots(spec, bounds))
    hold()
    return study


def stored_bounds(study: optuna.Study) -> LRBounds:
    return LRBounds.model_validate(study.user_attrs[ATTR_BOUNDS])


def stored_range_test(study: optuna.Study) -> LRFinderResult:
    return LRFinderResult.model_validate(study.user_attrs[ATTR_RANGE_TEST])
