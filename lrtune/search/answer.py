"""The answer: the recommendation a job's studies hold, adaptive confirmation, the records.

:func:`recommend` reads (it trains nothing): the best candidate, finalist or baseline, by its
mean over the confirmation seeds, the simpler of those inside each other's seed noise, compared
with the others seed by seed (:mod:`lrtune.recommendation` states the rule). While the best
candidates are inside each other's noise, :func:`extend_confirmation` queues one more seed for
each (up to ``search.max_confirm_seeds``). :class:`TrialRecord` reads back what one trial or
confirmation run stored.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import ConfigDict

from lrtune._optuna import (
    ATTR_BASE_LR,
    ATTR_CANDIDATE,
    ATTR_FAIL_REASON,
    ATTR_LR_FREE,
    ATTR_ROOT,
    ATTR_RUN,
    ATTR_SCHEDULE,
    ATTR_SEED,
    ATTR_SLOT,
    ATTR_SPEC,
    ATTR_STOP_REASON,
    FINISHED,
)
from lrtune.recommendation import Recommendation, SeedValue, TrainedSchedule, TrialSummary
from lrtune.search.prepare import stored_bounds, stored_range_test
from lrtune.search.queues import (
    baseline_schedules,
    baseline_unit,
    config_key,
    confirmation_seeds,
    confirmation_slots,
    finalist_trials,
    finalist_unit,
    open_confirmation,
)
from lrtune.spec import JobSpec, SearchSpec
from lrtune.training import TrainingRun, TrainingSetup

logger = logging.getLogger(__name__)
NO_FAIL_REASON = "no reason recorded: the process died or stopped sending heartbeats"


def extend_confirmation(
    study: optuna.Study, setup: TrainingSetup, rec: Recommendation | None = None
) -> int:
    """Queue one more confirmation seed for each undecided contender; return how many units.

    Call it when the confirmation queue has no queued or running unit. While the best
    candidates are inside each other's seed noise (:attr:`Recommendation.undecided`), each
    contender is retrained on its next seed of ``confirmation_seeds(spec,
    search.confirm_seeds_cap)``; 0 means the recommendation is decided. Each such unit has a
    fixed slot (after :func:`~lrtune.search.queues.confirmation_slots`' by seed, then
    candidate), so calling this again, or from two processes, queues no unit twice: a worker
    calls it under its lease.
    ``rec``: the study's :func:`recommend` as it stands, when the caller has it.
    """
    spec = setup.spec
    rec = rec or recommend(study, setup)
    undecided = rec.undecided
    if not undecided:
        return 0
    bounds = stored_bounds(study)
    baselines = {b.name: b for b in baseline_schedules(spec, bounds)}
    base = len(confirmation_slots(spec, bounds))
    per_seed = spec.search.finalists + len(baselines)
    seeds = confirmation_seeds(spec.search, spec.seed, spec.search.confirm_seeds_cap)
    confirm = open_confirmation(study, spec.search, spec.seed)
    taken = {u.user_attrs.get(ATTR_SLOT) for u in confirm.get_trials(deepcopy=False)}
    queued = 0
    for candidate in undecided:
        done = {s.seed for s in candidate.seed_values}
        k = next(k for k, seed in enumerate(seeds) if seed not in done)
        if k < spec.search.confirm_seeds:  # a planned unit of it did not run: not an extension
            continue
        if candidate.role == "finalist":
            index = next(rank for rank, f in enumerate(rec.finalists) if f is candidate)
            unit = finalist_unit(index, seeds[k])
        else:
            index = spec.search.finalists + list(baselines).index(candidate.name)
            unit = baseline_unit(baselines[candidate.name], seeds[k])
        slot = base + (k - spec.search.confirm_seeds) * per_seed + index
        if slot not in taken:
            confirm.enqueue_trial({}, user_attrs={ATTR_SLOT: slot, **unit})
            queued += 1
    logger.info("study=%s event=confirmation_extended units=%d", study.study_name, queued)
    return queued


def recommend(study: optuna.Study, setup: TrainingSetup) -> Recommendation:
    """The recommendation from what the study holds now (trains nothing).

    Run the search's and the confirmation's units first (:meth:`lrtune.search.JobSearch.run_units`);
    without confirmation runs the recommendation is the search's best trial, marked
    unconfirmed.
    """
    spec = setup.spec
    bounds = stored_bounds(study)
    confirm = open_confirmation(study, spec.search, spec.seed)
    units = confirm.get_trials(deepcopy=False)
    runs = _runs_by_config_and_seed(units)
    ran = {seed for _, seed in runs}
    seeds = [
        s
        for s in confirmation_seeds(spec.search, spec.seed, spec.search.confirm_seeds_cap)
        if s in ran
    ]
    seeds = seeds or confirmation_seeds(spec.search, spec.seed)

    def seed_values(key: str) -> list[SeedValue]:
        done = [(s, runs[(key, s)]) for s in seeds if (key, s) in runs]
        return [
            SeedValue(
                seed=s, value=_seed_value(r, spec.search), status=r.status, epochs=len(r.epochs)
            )
            for s, r in done
        ]

    finalists = []
    for trial in finalist_trials(study, spec.search):
        schedule, lr = trial.user_attrs[ATTR_SCHEDULE], trial.user_attrs[ATTR_BASE_LR]
        finalists.append(
            TrainedSchedule(
                name=f"trial {trial.number}",
                role="finalist",
                schedule=schedule,
                base_lr=lr,
                run=TrainingRun.model_validate(trial.user_attrs[ATTR_RUN]),
                trial_number=trial.number,
                seed_values=seed_values(config_key(schedule, lr)),
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
            key = config_key(attrs[ATTR_SCHEDULE], attrs[ATTR_BASE_LR], attrs.get(ATTR_LR_FREE))
            runs[(key, attrs[ATTR_SEED])] = TrainingRun.model_validate(attrs[ATTR_RUN])
    return runs


def _seed_value(run: TrainingRun, search: SearchSpec) -> float:
    return float("nan") if run.status == "diverged" else run.final(search.metric)


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
    units = open_confirmation(study, spec.search, spec.seed).get_trials(deepcopy=False)
    return [TrialRecord.read(u, "confirmation") for u in units]


def _history(study: optuna.Study, units: list[FrozenTrial]) -> list[TrialSummary]:
    """The search's trials, then the confirmation runs, labelled by ``kind``."""
    records = search_records(study) + [TrialRecord.read(u, "confirmation") for u in units]
    return [r.summary() for r in records]
