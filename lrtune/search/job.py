"""A job's search as one object: :class:`JobSearch`, and :func:`tune` and :func:`run_worker`.

A :class:`JobSearch` holds a job's spec and its two queues (the search study and the
confirmation study beside it). Everything that does a job's work goes through it, the same way
whoever does it: :func:`tune` in a notebook, a database worker (:mod:`lrtune.workers.loop`) and
its pool's children, a bare :func:`run_worker` process sharing a study:

- :meth:`JobSearch.prepare`: the range test and every unit enqueued (once per job);
- :meth:`JobSearch.run_units`: pop, train and complete units of one phase (``"search"`` or
  ``"confirmation"``) until none is left (:mod:`lrtune.search.units`);
- :meth:`JobSearch.extend_confirmation`: one more seed per candidate still inside the noise;
- :meth:`JobSearch.recommend`: the answer, read from the studies.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import optuna
from optuna.trial import TrialState

from lrtune._optuna import (
    ATTR_BOUNDS,
    ATTR_SPEC,
    QueuedStudy,
    fail_stale_trials,
    has_unfinished,
    has_waiting,
    heartbeat_interval,
    storage_errors,
    trial_counts,
)
from lrtune.exceptions import NotFoundError
from lrtune.finder import StepCallback
from lrtune.recommendation import Recommendation
from lrtune.result import LRFinderResult
from lrtune.search import answer
from lrtune.search.gate import UnitGate
from lrtune.search.populations import drain_population, population_size
from lrtune.search.prepare import prepare_study, stored_bounds
from lrtune.search.queues import (
    Storage,
    open_confirmation,
    open_study,
    requeue_interrupted,
    resolve_storage,
)
from lrtune.search.units import (
    PopulationRunner,
    UnitObjective,
    UnitOptions,
    drain,
    raise_unit_failure,
    unit_failure,
)
from lrtune.space import LRBounds
from lrtune.spec import JobSpec
from lrtune.task import Task
from lrtune.training import TrainingSetup

Phase = Literal["search", "confirmation"]
"""A job's two shared phases: its search trials, then its confirmation runs."""


class JobSearch:
    """One job's search: its spec, its search study and its confirmation study (see the
    module). Cheap to make; the confirmation study is opened when first used.

    Example:
        >>> spec = JobSpec.model_validate({
        ...     "model": {"name": "logreg"}, "dataset": {"name": "wine"},
        ...     "range_test": {"seeds": 2, "num_iter": 40},
        ...     "search": {"n_trials": 2, "epochs": 2, "families": ["constant"],
        ...                "confirm_seeds": 0, "baselines": []}})
        >>> setup = TrainingSetup.from_spec(spec)
        >>> search = JobSearch.prepare(spec, setup=setup, progress=False)
        >>> search.run_units("search", setup, UnitOptions(progress=False))
        True
        >>> counts = search.recommend(setup).n_trials
        >>> counts["complete"] + counts["pruned"]
        2
    """

    def __init__(self, spec: JobSpec, study: QueuedStudy) -> None:
        self.spec = spec
        self.study = study
        """The search study: the search's queue, the range test and bounds on its attributes."""
        self._confirmation: QueuedStudy | None = None

    @classmethod
    def open(
        cls, spec: JobSpec, storage: Storage = None, study_name: str | None = None
    ) -> JobSearch:
        """The search of a job whose study exists or is created empty (``study_name`` defaults
        to ``spec.study_name()``; a job store names it from the job's id)."""
        return cls(spec, open_study(spec, storage, study_name))

    @classmethod
    def prepare(
        cls,
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
    ) -> JobSearch:
        """The search of a prepared job: range test and units enqueued
        (:func:`~lrtune.search.prepare.prepare_study`, whose arguments these are)."""
        study = prepare_study(
            spec,
            storage,
            setup=setup,
            progress=progress,
            study_name=study_name,
            callback=callback,
            earlier_winners=earlier_winners,
            fence=fence,
            range_test_result=range_test_result,
        )
        return cls(spec, study)

    @property
    def confirmation(self) -> QueuedStudy:
        """The confirmation study: the finalists' and baselines' runs on fresh seeds."""
        if self._confirmation is None:
            self._confirmation = open_confirmation(self.study, self.spec.search, self.spec.seed)
        return self._confirmation

    @property
    def bounds(self) -> LRBounds:
        """The LR bounds the range test gave (stored by :meth:`prepare`)."""
        return stored_bounds(self.study)

    def queue(self, phase: Phase) -> QueuedStudy:
        """The queue of ``phase``'s units."""
        return self.study if phase == "search" else self.confirmation

    def run_units(self, phase: Phase, setup: TrainingSetup, options: UnitOptions) -> bool:
        """Run ``phase``'s queued units here until none is left, the time is up
        (``options.timeout_s``, the search only) or ``options.should_stop`` says so.

        The search's gate defaults to one that ends the search at ``search.target``. The
        confirmation's finalists are known only once the search has no queued or running
        trial: while trials run elsewhere, with ``options.wait_for_others`` (and a heartbeat on
        the storage) this waits for them; trials still queued were left by a search that ran
        out of time. Returns False, running nothing, when the confirmation cannot start (a
        later call confirms); else True.
        """
        if phase == "search":
            self.study.gate = options.gate or UnitGate(self.spec.search)
            objective = UnitObjective("trial", setup, self.study, self.bounds, options)
            population = population_size(setup, options.population)
            populations = None
            if population > 1:
                populations = functools.partial(drain_population, self.study, objective, population)
            self._drain(
                self.study, objective, "trials", options, options.timeout_s, True, populations
            )
            return True
        if not self._search_finished(options.wait_for_others):
            return False
        self.confirmation.gate = options.gate
        objective = UnitObjective("confirm", setup, self.study, self.bounds, options)
        self._drain(self.confirmation, objective, "confirmation", options, None, False)
        return True

    def extend_confirmation(self, setup: TrainingSetup, rec: Recommendation | None = None) -> int:
        """Queue one more seed per undecided contender; how many units
        (:func:`~lrtune.search.answer.extend_confirmation`)."""
        return answer.extend_confirmation(self.study, setup, rec)

    def recommend(self, setup: TrainingSetup) -> Recommendation:
        """The recommendation the studies hold now (:func:`~lrtune.search.answer.recommend`)."""
        return answer.recommend(self.study, setup)

    def unit_failure(self, phase: Phase) -> str | None:
        """Why a unit of ``phase`` failed for a reason of its own, else None
        (:func:`~lrtune.search.units.unit_failure`)."""
        return unit_failure(self.queue(phase))

    def check_units(self, phase: Phase) -> None:
        """Raise :class:`~lrtune.search.units.TrialFailed` if a unit of ``phase`` failed for a
        reason of its own: its job must fail with it, not end short of its budget."""
        raise_unit_failure(self.queue(phase))

    def startable(self, phase: Phase) -> int:
        """How many of ``phase``'s queued units a process may start now: those queued, no more
        than ``search.max_parallel`` leaves room for (a read; the pops themselves are bounded
        exactly, under a job store's unit lock: :class:`~lrtune.search.gate.UnitGate`)."""
        counts = trial_counts(self.queue(phase))
        room = self.spec.search.max_parallel - counts[TrialState.RUNNING]
        return max(0, min(counts[TrialState.WAITING], room))

    def requeue_interrupted(self) -> int:
        """Queue again both queues' units an interruption left FAILED; how many."""
        return requeue_interrupted(self.study) + requeue_interrupted(self.confirmation)

    def _search_finished(self, wait_for_others: bool) -> bool:
        while has_unfinished(self.study):
            heartbeat = heartbeat_interval(self.study)
            if has_waiting(self.study) or not (wait_for_others and heartbeat):
                return False
            time.sleep(heartbeat / 2)
            fail_stale_trials(self.study)
        return True

    @staticmethod
    def _drain(
        queue: QueuedStudy,
        objective: UnitObjective,
        desc: str,
        options: UnitOptions,
        timeout_s: float | None,
        show_best: bool,
        populations: PopulationRunner | None = None,
    ) -> None:
        drain(
            queue,
            objective,
            desc=desc,
            timeout_s=timeout_s,
            wait_for_others=options.wait_for_others,
            progress=options.progress,
            show_best=show_best,
            should_stop=options.should_stop,
            populations=populations,
        )


@storage_errors()
def run_worker(
    study_name: str,
    storage: str | optuna.storages.BaseStorage,
    *,
    artifact_dir: str | Path | None = None,
    wait_for_others: bool = False,
    progress: bool = False,
    task: Task | None = None,
) -> None:
    """The worker loop: join a prepared study and run its queued work until none is left.

    Runs search trials while any are queued, then, once the search is finished, confirmation
    units. The job spec is read from the study, so a worker needs only the study's name and
    storage (and, for a job that names a task, the task).
    """
    storage = resolve_storage(storage)
    try:
        loaded = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise NotFoundError(f"no study {study_name!r} in the storage") from None
    if ATTR_BOUNDS not in loaded.user_attrs:
        raise NotFoundError(f"study {study_name!r} has not been prepared (no range test stored)")
    spec = JobSpec.model_validate(loaded.user_attrs[ATTR_SPEC])
    search = JobSearch.open(spec, storage)
    setup = TrainingSetup.from_spec(spec, task=task)
    options = UnitOptions(
        artifact_dir=Path(artifact_dir) if artifact_dir else None,
        wait_for_others=wait_for_others,
        progress=progress,
        timeout_s=spec.search.timeout_s,
    )
    search.run_units("search", setup, options)
    while search.run_units("confirmation", setup, options) and search.extend_confirmation(setup):
        pass


@storage_errors()
def tune(
    spec: JobSpec,
    storage: Storage = None,
    *,
    artifact_dir: str | Path | None = None,
    progress: bool = True,
    task: Task | None = None,
    population: int = 1,
) -> Recommendation:
    """Find the LR schedule for a job: range test, search, confirmation, recommendation.

    Args:
        spec: the job.
        task: the task the job names (``spec.task``), loaded in this process
            (:func:`lrtune.notebook.tune` makes both from a task).
        storage: an Optuna storage or URL (``sqlite:///lrtune.db``, ``postgresql+psycopg://...``);
            None keeps the study in memory. With a URL, a crashed run resumes where it stopped.
        artifact_dir: where trials and confirmation runs checkpoint each epoch (needed to resume
            a run mid-way).
        progress: progress bars on stderr.
        population: train up to this many search trials at once as one population
            (:mod:`lrtune.search.populations`): faster for small models, each trial still its
            own; 1 runs them one at a time.

    ``search.timeout_s`` bounds the search; a search cut short leaves its queue for a later run
    and is not confirmed (the recommendation says so).

    Example:
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
    setup = TrainingSetup.from_spec(spec, task=task)
    search = JobSearch.prepare(spec, storage, setup=setup, progress=progress)
    options = UnitOptions(
        artifact_dir=Path(artifact_dir) if artifact_dir else None,
        progress=progress,
        timeout_s=spec.search.timeout_s,
        population=population,
    )
    search.run_units("search", setup, options)
    while True:  # confirmation, then more seeds while the best are inside the noise
        confirmed = search.run_units("confirmation", setup, options)
        rec = search.recommend(setup)
        if not (confirmed and search.extend_confirmation(setup, rec)):
            return rec
