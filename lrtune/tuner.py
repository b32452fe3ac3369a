"""The schedule search's names where users of earlier versions import them.

The search lives in :mod:`lrtune.search` (a job's :class:`~lrtune.search.JobSearch`, its
units, queues and answer); this module re-exports its public names, and keeps
:func:`run_trials` and :func:`run_confirmation`, which run one phase of a study's units
(:meth:`JobSearch.run_units <lrtune.search.JobSearch.run_units>`).

Example:
    >>> import lrtune.search
    >>> from lrtune.tuner import tune
    >>> tune is lrtune.search.tune
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import optuna

from lrtune.search import (
    SKIPPED,
    AtCapacity,
    Baseline,
    DeviceOutOfMemory,
    JobSearch,
    SearchStopped,
    TrialFailed,
    TrialRecord,
    UnitGate,
    UnitOptions,
    UnitStop,
    baseline_schedules,
    confirmation_records,
    confirmation_seeds,
    extend_confirmation,
    finalist_trials,
    make_pruner,
    make_sampler,
    open_confirmation,
    open_study,
    prepare_study,
    range_test,
    requeue_interrupted,
    run_worker,
    search_records,
    skipped_trials,
    stop_progress,
    stored_bounds,
    stored_range_test,
    target_reached,
    timeout_passed,
    tune,
    unit_failure,
    winner_starts,
)
from lrtune.search.answer import recommend
from lrtune.spec import UNIT_CHECK_S
from lrtune.training import TrainingSetup

__all__ = [
    "SKIPPED",
    "AtCapacity",
    "Baseline",
    "DeviceOutOfMemory",
    "JobSearch",
    "SearchStopped",
    "TrialFailed",
    "TrialRecord",
    "UnitGate",
    "UnitStop",
    "baseline_schedules",
    "confirmation_records",
    "confirmation_seeds",
    "extend_confirmation",
    "finalist_trials",
    "make_pruner",
    "make_sampler",
    "open_confirmation",
    "open_study",
    "prepare_study",
    "range_test",
    "recommend",
    "requeue_interrupted",
    "run_confirmation",
    "run_trials",
    "run_worker",
    "search_records",
    "skipped_trials",
    "stop_progress",
    "stored_bounds",
    "stored_range_test",
    "target_reached",
    "timeout_passed",
    "tune",
    "unit_failure",
    "winner_starts",
]


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
    population: int = 1,
) -> None:
    """Run queued trials of a prepared study until the queue is empty (or time is up); the
    arguments are :class:`~lrtune.search.UnitOptions`' fields."""
    options = UnitOptions(
        artifact_dir, wait_for_others, progress, should_stop, gate, stop_unit, unit_check_s
    )
    search = JobSearch(setup.spec, study)  # type: ignore[arg-type]  # a prepared QueuedStudy
    search.run_units("search", setup, replace(options, timeout_s=timeout_s, population=population))


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
    """Run the confirmation units of a searched study until none is left; True if it ran them
    (False: the search is unfinished; see :meth:`~lrtune.search.JobSearch.run_units`)."""
    options = UnitOptions(
        artifact_dir, wait_for_others, progress, should_stop, gate, stop_unit, unit_check_s
    )
    search = JobSearch(setup.spec, study)  # type: ignore[arg-type]  # a prepared QueuedStudy
    return search.run_units("confirmation", setup, options)
