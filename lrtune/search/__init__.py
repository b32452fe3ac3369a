"""The schedule search: range test, Optuna study over LR schedules, confirmation, recommendation.

A job runs in four steps, which a single process (:func:`tune`) or a fleet can share, all
through one :class:`JobSearch` (its spec and its two queues):

1. **prepare** (:mod:`lrtune.search.prepare`), once per job: run the multi-seed range test,
   store its result and the LR bounds on the search study, and enqueue all the work
   (:mod:`lrtune.search.queues`): ``n_trials`` queued search trials, the first few fixed to
   earlier close jobs' winners when given, then to the obvious answers (one-cycle, cosine,
   constant at the suggestion), the rest left to the sampler; and, on a second study (the
   *confirmation study*), one queued unit per candidate and seed. Enqueuing happens here only,
   never in workers.
2. **search** (:meth:`JobSearch.run_units`, ``"search"``), in any number of processes sharing
   the storage: each pops queued trials until none is left, and runs each as a
   :class:`~lrtune.search.units.Unit` (plan, train, complete). Workers never create trials
   beyond the queue, so the study ends with exactly ``n_trials`` finished trials however many
   workers share it. A crashed worker's trial goes stale (Optuna's heartbeat), is re-queued
   with the same parameters, and resumes from the last epoch checkpoint. A
   :class:`~lrtune.search.gate.UnitGate` checked before each pop closes the search early once
   a finished trial reaches ``search.target`` (or a worker's ``search.timeout_s`` is up): the
   queued rest are finished unrun with their reason, so the budget still adds up; with a job
   store's lock it also bounds the workers on a job (``search.max_parallel``).
3. **confirmation** (``"confirmation"``), once the search has no queued or running trial: the
   best ``search.finalists`` distinct schedules and the baselines (``search.baselines``:
   constant LR at the suggestion, the optimizer's default LR, the learning-rate-free Prodigy
   and schedule-free) are retrained on ``search.confirm_seeds`` fresh seeds. These units are
   queued, shared, checkpointed and resumed like trials, but on their own study: they never
   feed the sampler and never become the search's ``best_trial``. A finalist unit names a rank
   ("finalist 2"), resolved when it runs from the finished search, so the queue can be filled
   before the search starts. When the confirmation queue is empty,
   :meth:`JobSearch.extend_confirmation` queues one more seed for each candidate still inside
   the best one's seed noise (adaptive confirmation, up to ``search.max_confirm_seeds``); a
   worker does this under its lease, :func:`tune` in its loop.
4. **recommend** (:mod:`lrtune.search.answer`, a read): the best candidate, finalist or
   baseline, by its mean over the confirmation seeds, the simpler of those inside each other's
   seed noise, compared with the others seed by seed (:mod:`lrtune.recommendation` states the
   rule).

Every LR stored or reported is the LR of a parameter whose multiplier is 1.
"""

from lrtune.search.answer import (
    TrialRecord,
    confirmation_records,
    extend_confirmation,
    recommend,
    search_records,
)
from lrtune.search.gate import (
    SKIPPED,
    AtCapacity,
    SearchStopped,
    UnitGate,
    skipped_trials,
    stop_progress,
    target_reached,
    timeout_passed,
)
from lrtune.search.job import JobSearch, Phase, run_worker, tune
from lrtune.search.prepare import prepare_study, range_test, stored_bounds, stored_range_test
from lrtune.search.queues import (
    INTERRUPTED,
    Baseline,
    baseline_schedules,
    confirmation_seeds,
    finalist_trials,
    make_pruner,
    make_sampler,
    open_confirmation,
    open_study,
    requeue_interrupted,
    winner_starts,
)
from lrtune.search.units import (
    DeviceOutOfMemory,
    TrialFailed,
    Unit,
    UnitObjective,
    UnitOptions,
    UnitPlan,
    UnitStop,
    raise_unit_failure,
    unit_failure,
)

__all__ = [
    "INTERRUPTED",
    "SKIPPED",
    "AtCapacity",
    "Baseline",
    "DeviceOutOfMemory",
    "JobSearch",
    "Phase",
    "SearchStopped",
    "TrialFailed",
    "TrialRecord",
    "Unit",
    "UnitGate",
    "UnitObjective",
    "UnitOptions",
    "UnitPlan",
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
    "raise_unit_failure",
    "range_test",
    "recommend",
    "requeue_interrupted",
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
