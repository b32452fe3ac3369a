"""The answer to a job: the schedule to train with, why, and how sure lrtune is of it.

A search picks its best trials on one seed (the *search seed*), and on a small validation set the
top trials are often separated by less than seed noise. So the best ``search.finalists``
distinct schedules, and the baselines (``search.baselines``: a constant LR at the range test's
suggestion, the optimizer's default LR, and the learning-rate-free Prodigy and schedule-free at
their defaults, :mod:`lrtune.lr_free`), are retrained on ``search.confirm_seeds`` fresh seeds
(other initial weights and data order, the same seeds for every candidate), scored by their
**mean over the confirmation seeds only**: the search seed chose the finalists, so counting it
again would bring the winner's curse back. Its value is shown beside the others, marked.

The recommendation is picked among finalists *and* baselines (:func:`pick_recommended`): a
baseline that wins is the answer, since a constant LR or an optimizer that needs no LR is a
legitimate one. The candidate with the best mean leads; every candidate inside its seed noise
(by the rule below) is a contender too, and of the contenders the simplest is recommended
(:func:`simplicity`: a constant LR, then one-parameter decays, then the rest), so an extra
schedule parameter has to earn its place by more than the seed noise. A candidate that another
one beats (by the rule below) is never recommended. While the leader and another contender are
inside each other's noise, adaptive confirmation retrains the contenders on one more seed at a
time, up to ``search.max_confirm_seeds`` (:attr:`Recommendation.undecided`).

Two candidates are compared by :func:`paired_comparison` over the seeds both ran: the per-seed
improvement ``d_i`` (positive when the first is better), its mean ``m`` and standard error
``se = stdev(d) / sqrt(n)``. The rule, stated once:

- ``n >= 2`` and ``|m| <= se``, or ``|m|`` is negligible (at most :data:`NEGLIGIBLE_SHARE` of
  the spread between the best and the worst candidate's mean: a difference nobody would act on,
  such as two validation losses of 1e-6 and 0): the difference is **inside the seed noise**;
- ``n >= 2`` and ``|m| > se``: the recommendation **beats** the baseline (``m > 0``) or **does
  not beat** it (``m < 0``);
- ``n < 2``: the seed noise is **unmeasured**; the sign of the one difference is reported as such;
- every ``d_i`` is zero: the two **tie**.

A run that diverged scores as a loss on its seed and is left out of ``m`` and ``se``; a candidate
with a diverged run ranks last. With ``confirm_seeds: 0`` the search seed alone decides (the
best value there, the simpler of equals), and the recommendation says it is unconfirmed.

Every LR here (``base_lr``, ``suggested_lr``, ``bounds``) is the LR of a parameter whose
multiplier is 1; a param group trains at that LR times its ``lr_mult``.

Example:
    >>> from lrtune.spec import JobSpec
    >>> from lrtune.tuner import tune
    >>> spec = JobSpec.model_validate({
    ...     "model": {"name": "logreg"}, "dataset": {"name": "wine"},
    ...     "range_test": {"seeds": 2, "num_iter": 40},
    ...     "search": {"n_trials": 2, "epochs": 2, "families": ["cosine"], "confirm_seeds": 2}})
    >>> rec = tune(spec, progress=False)
    >>> rec.confirmed, len(rec.best.seed_values), [b.name for b in rec.baselines]
    (True, 2, ['constant at suggestion', 'sgd default lr', 'prodigy', 'schedule-free sgd'])
    >>> all(p.verdict != "does not beat" for p in rec.paired_comparisons)
    True
    >>> "optimizer = " in rec.to_code()
    True
    >>> paired_comparison("constant", {1: 0.9, 2: 0.8}, {1: 0.7, 2: 0.75}, "maximize").verdict
    'beats'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import ConfigDict, Field, SerializationInfo, computed_field, field_serializer

from lrtune._schema import JsonFloat, LRSteps, ResultModel
from lrtune.lr_free import LRFreeName
from lrtune.lr_free import code as lr_free_code
from lrtune.result import LRBounds, LRFinderResult, TrainingRun
from lrtune.schedules import ScheduleSpec, preview
from lrtune.snippet import job_code
from lrtune.spec import JobSpec

Role = Literal["finalist", "baseline"]
Verdict = Literal["beats", "does not beat", "inside the seed noise", "ties"]
SAME_WITHIN_NOISE: tuple[Verdict, ...] = ("inside the seed noise", "ties")
NEGLIGIBLE_SHARE = 1e-3
"""A mean paired difference at most this share of the spread between the best and the worst
candidate's mean is negligible: inside the seed noise, however small the noise measured."""

ONE_PARAMETER_DECAYS = ("exponential", "time_decay", "cosine")


class SeedValue(ResultModel):
    """One candidate's run on one confirmation seed."""

    seed: int
    value: JsonFloat = Field(
        description="the searched metric after the last epoch; NaN (null) when the run diverged"
    )
    status: str = Field(description="how the run ended: completed, diverged, lr_threshold")
    epochs: int = Field(description="epochs trained (what the run cost)")


class TrainedSchedule(ResultModel):
    """One schedule that was trained for the comparison: a finalist or a baseline.

    ``run`` is its run on the search seed (a finalist's is its search trial); ``seed_values``
    are its runs on the confirmation seeds, in seed order.
    """

    name: str
    role: Role
    schedule: ScheduleSpec
    base_lr: float = Field(description="the LR of a parameter whose multiplier is 1")
    run: TrainingRun
    trial_number: int | None = None
    seed_values: list[SeedValue] = Field(default_factory=list)
    lr_free: LRFreeName | None = Field(
        None,
        description="a learning-rate-free optimizer this baseline trains with instead of the "
        "job's (its schedule and lr are that optimizer's recipe); None: the job's optimizer",
    )

    def same_run(self, other: TrainedSchedule) -> bool:
        """Whether both train the same thing (a finalist may equal a baseline)."""
        return (self.schedule, self.base_lr, self.lr_free) == (
            other.schedule,
            other.base_lr,
            other.lr_free,
        )

    @property
    def describe(self) -> str:
        """E.g. ``trial 7 (onecycle at lr 0.2391)``, ``prodigy (lr-free, cosine)``."""
        if self.lr_free is not None:
            return f"{self.name} (learning-rate-free, {self.schedule.family})"
        if self.role == "baseline":
            return f"{self.name} (constant lr {self.base_lr:.4g})"
        return f"{self.name} ({self.schedule.family} at lr {self.base_lr:.4g})"

    def value(self, metric: str) -> float:
        """The metric on the search seed."""
        return self.run.final(metric)

    def confirmed_values(self) -> dict[int, float]:
        """The metric on each confirmation seed (NaN where the run diverged)."""
        return {s.seed: s.value for s in self.seed_values}

    @computed_field
    @property
    def mean(self) -> JsonFloat | None:
        """The mean over the confirmation seeds; None without any, NaN if one diverged."""
        values = [s.value for s in self.seed_values]
        if not values:
            return None
        return statistics.fmean(values) if all(map(math.isfinite, values)) else math.nan

    @computed_field
    @property
    def std(self) -> JsonFloat | None:
        """The sample standard deviation over the confirmation seeds; None with fewer than 2,
        NaN if one diverged."""
        values = [s.value for s in self.seed_values]
        if len(values) < 2:
            return None
        return statistics.stdev(values) if all(map(math.isfinite, values)) else math.nan


class PairedComparison(ResultModel):
    """The recommendation against one baseline over the seeds both ran (see the module doc)."""

    model_config = ConfigDict(frozen=True)

    baseline: str
    seeds: int = Field(description="seeds both ran")
    wins: int = Field(description="seeds where the recommendation is better (or theirs diverged)")
    mean_improvement: float | None = Field(
        description="mean of the per-seed improvement over seeds where both runs are finite"
    )
    standard_error: float | None = Field(
        description="stdev(improvement) / sqrt(n); None with fewer than 2 such seeds"
    )
    verdict: Verdict

    @property
    def noise_measured(self) -> bool:
        return self.standard_error is not None

    def describe(self, metric: str) -> str:
        """E.g. ``beats constant at suggestion on 3/3 seeds, +1.3 +/- 0.5 points``.

        Accuracy differences are in points (percent); other metrics in their own unit.
        """
        scale, unit = (100.0, "points") if metric == "accuracy" else (1.0, metric)
        seeds = f"{self.wins}/{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        if self.mean_improvement is None:
            size = "a run diverged on every shared seed"
        elif self.standard_error is None:
            size = f"{scale * self.mean_improvement:+.3g} {unit} (one seed: noise unmeasured)"
        else:
            size = (
                f"{scale * self.mean_improvement:+.3g} +/- {scale * self.standard_error:.2g} {unit}"
            )
        if self.verdict == "ties":
            return f"ties {self.baseline} on every seed ({self.seeds})"
        if self.verdict == "inside the seed noise":
            return f"inside the seed noise of {self.baseline} (better on {seeds}, {size})"
        return f"{self.verdict} {self.baseline} on {seeds}, {size}"


class ComparisonRow(ResultModel):
    """One trained schedule in the comparison table.

    ``search_value`` and ``search_val_loss`` are on the search seed (which chose the
    finalists); ``mean``, ``std`` and ``seed_values`` on the confirmation seeds only.
    """

    name: str
    role: Literal["recommended", "finalist", "baseline"]
    family: str
    base_lr: float
    lr_free: LRFreeName | None = None
    trial_number: int | None
    search_value: JsonFloat
    search_val_loss: JsonFloat
    epochs: int
    status: str
    mean: JsonFloat | None
    std: JsonFloat | None
    seed_values: dict[int, JsonFloat]


class TrialSummary(ResultModel):
    """One entry of a job's history: a search trial or a confirmation run."""

    kind: Literal["search", "confirmation"]
    number: int
    state: str = Field(description="Optuna's trial state: COMPLETE, PRUNED, FAIL, RUNNING, ...")
    value: JsonFloat | None = Field(description="the final (or last reported) metric")
    family: str | None
    base_lr: float | None
    stop_reason: str | None = Field(description="why it was pruned, stopped early or failed")
    candidate: str | None = Field(None, description="a confirmation run's candidate")
    seed: int | None = Field(None, description="a confirmation run's seed")


def paired_comparison(
    baseline: str,
    ours: Mapping[int, float],
    theirs: Mapping[int, float],
    direction: str,
    negligible: float = 0.0,
) -> PairedComparison:
    """Compare two candidates seed by seed over the seeds both ran (the rule in the module doc).

    ``ours`` and ``theirs`` map seed to the metric (NaN for a diverged run); ``direction`` says
    whether larger is better; a mean difference of at most ``negligible`` is inside the noise.
    """
    sign = 1.0 if direction == "maximize" else -1.0
    shared = sorted(set(ours) & set(theirs))
    wins, diffs = 0, []
    for seed in shared:
        a, b = ours[seed], theirs[seed]
        if math.isfinite(a) and math.isfinite(b):
            diffs.append(sign * (a - b))
            wins += diffs[-1] > 0
        elif math.isfinite(a):  # theirs diverged
            wins += 1
    if not diffs:
        verdict: Verdict = "beats" if 2 * wins > len(shared) else "does not beat"
        return _paired(baseline, len(shared), wins, None, None, verdict)
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        verdict = "beats" if mean > 0 else ("ties" if mean == 0 else "does not beat")
        return _paired(baseline, len(shared), wins, mean, None, verdict)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    if all(d == 0 for d in diffs):
        verdict = "ties"
    elif abs(mean) <= max(se, negligible):
        verdict = "inside the seed noise"
    else:
        verdict = "beats" if mean > 0 else "does not beat"
    return _paired(baseline, len(shared), wins, mean, se, verdict)


def _paired(
    baseline: str,
    seeds: int,
    wins: int,
    mean: float | None,
    se: float | None,
    verdict: Verdict,
) -> PairedComparison:
    return PairedComparison(
        baseline=baseline,
        seeds=seeds,
        wins=wins,
        mean_improvement=mean,
        standard_error=se,
        verdict=verdict,
    )


def simplicity(candidate: TrainedSchedule) -> int:
    """How much a candidate asks of the user's run, lower is simpler.

    0: a constant LR; 1: a one-parameter decay (``exponential``, ``time_decay``, ``cosine``),
    or a constant LR behind a warm-up; 2: every other family, a decay behind a warm-up, and a
    learning-rate-free optimizer (it replaces the user's optimizer, the largest change).

    >>> from lrtune.schedules import parse_schedule
    >>> from lrtune.result import TrainingRun
    >>> def of(schedule):
    ...     return TrainedSchedule(name="x", role="finalist", schedule=parse_schedule(schedule),
    ...                            base_lr=0.1, run=TrainingRun())
    >>> [simplicity(of(s)) for s in ({"family": "constant"}, {"family": "cosine", "T_max": 5},
    ...                               {"family": "onecycle", "max_lr": 0.1})]
    [0, 1, 2]
    """
    if candidate.lr_free is not None:
        return 2
    family = candidate.schedule.family
    level = 0 if family == "constant" else 1 if family in ONE_PARAMETER_DECAYS else 2
    return min(2, level + (candidate.schedule.warmup is not None))


def _badness(candidate: TrainedSchedule, direction: str, metric: str | None) -> float:
    """Lower is better: the confirmed mean, or (``metric`` given) the search-seed value; a
    diverged or missing value is ``inf``."""
    value = candidate.value(metric) if metric is not None else candidate.mean
    if value is None or not math.isfinite(value):
        return math.inf
    return -value if direction == "maximize" else value


def negligible_difference(candidates: Sequence[TrainedSchedule]) -> float:
    """:data:`NEGLIGIBLE_SHARE` of the spread of the candidates' finite confirmed means."""
    means = [c.mean for c in candidates if c.mean is not None and math.isfinite(c.mean)]
    return NEGLIGIBLE_SHARE * (max(means) - min(means)) if means else 0.0


def compare(
    a: TrainedSchedule, b: TrainedSchedule, direction: str, negligible: float = 0.0
) -> PairedComparison:
    """``a`` against ``b`` over their confirmation seeds (:func:`paired_comparison`)."""
    return paired_comparison(
        b.name, a.confirmed_values(), b.confirmed_values(), direction, negligible
    )


def contenders(candidates: Sequence[TrainedSchedule], direction: str) -> list[int]:
    """Indices of the leader (the best confirmed mean) and of every finite candidate inside its
    seed noise, leader first, then by mean. Empty without candidates."""
    ranked = sorted(
        range(len(candidates)), key=lambda i: (_badness(candidates[i], direction, None), i)
    )
    if not ranked:
        return []
    leader = candidates[ranked[0]]
    negligible = negligible_difference(candidates)
    return ranked[:1] + [
        i
        for i in ranked[1:]
        if math.isfinite(_badness(candidates[i], direction, None))
        and compare(candidates[i], leader, direction, negligible).verdict in SAME_WITHIN_NOISE
    ]


def pick_recommended(
    candidates: Sequence[TrainedSchedule], direction: str, metric: str | None = None
) -> int | None:
    """Index of the candidate to recommend (the rule in the module doc); None without any.

    With confirmation values: the simplest of the :func:`contenders` (of equals, the better
    mean) that no finite candidate beats; the leader if every contender is beaten. Without
    (``metric`` given: the search seed alone decides): the best value on the search seed, the
    simpler of equals.

    >>> from lrtune.schedules import parse_schedule
    >>> from lrtune.result import TrainingRun
    >>> def of(name, family, values, **extra):
    ...     seeds = [SeedValue(seed=s, value=v, status="completed", epochs=5)
    ...              for s, v in enumerate(values)]
    ...     return TrainedSchedule(name=name, role="finalist", base_lr=0.1, run=TrainingRun(),
    ...                            schedule=parse_schedule({"family": family, **extra}),
    ...                            seed_values=seeds)
    >>> onecycle = of("trial 3", "onecycle", [0.91, 0.95, 0.90], max_lr=0.3)
    >>> constant = of("constant", "constant", [0.92, 0.93, 0.91])
    >>> pick_recommended([onecycle, constant], "maximize")  # inside the noise: the simpler
    1
    >>> far_better = of("trial 4", "onecycle", [0.97, 0.98, 0.96], max_lr=0.3)
    >>> pick_recommended([constant, far_better], "maximize")
    1
    """
    if not candidates:
        return None
    if metric is not None:
        return min(
            range(len(candidates)),
            key=lambda i: (
                _badness(candidates[i], direction, metric),
                simplicity(candidates[i]),
                i,
            ),
        )
    group = contenders(candidates, direction)
    finite = [c for c in candidates if math.isfinite(_badness(c, direction, None))]
    negligible = negligible_difference(candidates)
    for i in sorted(
        group,
        key=lambda i: (simplicity(candidates[i]), _badness(candidates[i], direction, None), i),
    ):
        if not any(
            compare(candidates[i], other, direction, negligible).verdict == "does not beat"
            for other in finite
            if other is not candidates[i]
        ):
            return i
    return group[0]


def comparable(
    finalists: Sequence[TrainedSchedule], baselines: Sequence[TrainedSchedule], confirmed: bool
) -> list[int]:
    """Indices in ``finalists + baselines`` of the candidates a recommendation is chosen among.

    A finalist that trains what a baseline trains is that baseline (its runs stand in), so it
    is counted once, as the baseline; when the recommendation is confirmed, a candidate without
    confirmation values (not run yet) cannot be compared and is left out.
    """
    return [
        k
        for k, c in enumerate([*finalists, *baselines])
        if not (c.role == "finalist" and any(c.same_run(b) for b in baselines))
        and (c.seed_values or not confirmed)
    ]


class Recommendation(ResultModel):
    """The recommended schedule and its evidence: what ``lrtune tune --json`` prints.

    ``finalists`` are the search's best distinct schedules in search order, ``baselines`` the
    runs of ``search.baselines`` (constant at the suggestion, the default LR, the
    learning-rate-free optimizers), and ``recommended`` the index of the one recommended
    (:attr:`best`) in ``finalists + baselines``: a baseline may be the answer (see the module
    doc). ``suggested_lr`` is the range test's suggestion
    and ``spread_decades`` how far its seeds disagree (lower is better). ``confirm_seeds`` are
    the seeds the candidates were retrained on, ``search_seed`` the one that chose the
    finalists. ``n_trials`` counts the search's trials by state, ``n_confirmation`` the
    confirmation runs'; ``history`` lists both, each with its ``kind``. Every LR is the LR of a
    parameter whose multiplier is 1; ``group_multipliers`` are the param groups' multipliers in
    the optimizer's order.

    The JSON also carries what is derived from these (``schedule``, ``base_lr``, ``value``,
    ``confirmed``, ``comparison``, ``paired_comparisons``, ``verdict`` and the paste-ready
    ``code``); they are recomputed, not read, when the JSON is validated back.
    """

    study_name: str
    fingerprint: str
    spec: JobSpec
    metric: str
    direction: Literal["minimize", "maximize"]
    finalists: list[TrainedSchedule]
    recommended: int | None = Field(
        description="index of the recommended candidate in finalists + baselines"
    )
    baselines: list[TrainedSchedule]
    suggested_lr: float | None
    spread_decades: float | None
    bounds: LRBounds
    group_multipliers: list[float]
    steps_per_epoch: int
    search_seed: int
    confirm_seeds: list[int]
    lr_curve: LRSteps = Field(
        default_factory=list, description="the recommended schedule's LR of every group per step"
    )
    n_trials: dict[str, int]
    n_confirmation: dict[str, int]
    range_test: LRFinderResult
    history: list[TrialSummary]
    provisional: bool = Field(
        False,
        description="the job ended (cancelled, failed) before its confirmation: this is the "
        "best finished search trial on the search seed alone, unconfirmed",
    )

    @classmethod
    def build(
        cls,
        *,
        spec: JobSpec,
        study_name: str,
        range_test: LRFinderResult,
        bounds: LRBounds,
        finalists: list[TrainedSchedule],
        baselines: list[TrainedSchedule],
        confirm_seeds: list[int],
        steps_per_epoch: int,
        group_multipliers: list[float],
        n_trials: dict[str, int],
        n_confirmation: dict[str, int],
        history: list[TrialSummary],
        provisional: bool = False,
    ) -> Recommendation:
        """Pick the recommended candidate (:func:`pick_recommended`) and preview its LRs.

        ``provisional``: the best so far of a job that ended early (see the field); its LR
        curve is the one its search trial trained with, not a preview (no torch needed).
        """
        direction = spec.search.direction or "minimize"
        everyone = [*finalists, *baselines]
        confirmed = any(c.seed_values for c in everyone)
        distinct = comparable(finalists, baselines, confirmed=confirmed)
        pick = pick_recommended(
            [everyone[k] for k in distinct],
            direction,
            metric=None if confirmed else spec.search.metric,
        )
        rec = cls(
            study_name=study_name,
            fingerprint=spec.fingerprint(),
            spec=spec,
            metric=spec.search.metric,
            direction=direction,
            finalists=finalists,
            recommended=None if pick is None else distinct[pick],
            baselines=baselines,
            suggested_lr=bounds.suggestion,
            spread_decades=range_test.spread_decades,
            bounds=bounds,
            group_multipliers=group_multipliers,
            steps_per_epoch=steps_per_epoch,
            search_seed=spec.seed,
            confirm_seeds=confirm_seeds,
            n_trials=n_trials,
            n_confirmation=n_confirmation,
            range_test=range_test,
            history=history,
            provisional=provisional,
        )
        if provisional:
            rec.lr_curve = rec.best.run.lr_steps if rec.best is not None else []
        else:
            rec.lr_curve = rec._preview_best()
        return rec

    @property
    def best(self) -> TrainedSchedule | None:
        """The recommended candidate, or None when no trial finished."""
        everyone = self.finalists + self.baselines
        return None if self.recommended is None else everyone[self.recommended]

    def _compared(self) -> list[TrainedSchedule]:
        """The candidates the recommendation was chosen among (:func:`comparable`)."""
        everyone = self.finalists + self.baselines
        return [everyone[k] for k in comparable(self.finalists, self.baselines, self.confirmed)]

    @property
    def undecided(self) -> list[TrainedSchedule]:
        """The contenders to retrain on one more seed (adaptive confirmation); [] when decided.

        While the leader and another candidate are inside each other's seed noise and the
        leader has fewer than ``search.confirm_seeds_cap`` seeds, every contender (see
        :func:`contenders`) that has fewer seeds than the cap gets one more.
        """
        if not self.confirmed:
            return []
        candidates = self._compared()
        group = [candidates[i] for i in contenders(candidates, self.direction)]
        cap = self.spec.search.confirm_seeds_cap
        if len(group) < 2 or len(group[0].seed_values) >= cap:
            return []
        return [c for c in group if len(c.seed_values) < cap]

    @computed_field
    @property
    def decided_on_seeds(self) -> int | None:
        """How many confirmation seeds the recommendation was compared on (more than
        ``search.confirm_seeds`` when adaptive confirmation added some); None unconfirmed."""
        return len(self.best.seed_values) if self.best is not None and self.confirmed else None

    @computed_field
    @property
    def schedule(self) -> ScheduleSpec | None:
        """The recommended schedule."""
        return None if self.best is None else self.best.schedule

    @computed_field
    @property
    def base_lr(self) -> float | None:
        """The recommended LR, for a parameter whose multiplier is 1."""
        return None if self.best is None else self.best.base_lr

    @computed_field
    @property
    def value(self) -> JsonFloat | None:
        """The recommended schedule's metric: its confirmed mean, else its search-seed value."""
        if self.best is None:
            return None
        return self.best.mean if self.confirmed else self.best.value(self.metric)

    @computed_field
    @property
    def confirmed(self) -> bool:
        """Whether the recommendation was chosen on confirmation seeds (not the search seed)."""
        return self.best is not None and bool(self.best.seed_values)

    def _preview_best(self) -> list[list[float]]:
        best = self.best
        if best is None:
            return []
        base_lrs = [best.base_lr * m for m in self.group_multipliers]
        if best.schedule.family != "plateau":  # the full planned run
            epochs, metrics = self.spec.search.epochs, None
        else:  # plateau depends on the metric: preview the epochs the run measured
            metrics = [e["val_loss"] for e in best.run.epochs]
            epochs = len(metrics)
            if not metrics:
                return []
        lrs = preview(
            best.schedule,
            base_lrs,
            self.steps_per_epoch,
            epochs,
            metrics=metrics,
            group_multipliers=self.group_multipliers,
        )
        return lrs.tolist()

    def candidates(self) -> list[TrainedSchedule]:
        """Every trained schedule, the recommended first, then other finalists, then baselines."""
        best = self.best
        others = [c for c in self.finalists + self.baselines if c is not best]
        return ([best] if best is not None else []) + others

    @computed_field
    @property
    def paired_comparisons(self) -> list[PairedComparison]:
        """The recommendation against every other candidate it was chosen among (baselines
        and finalists; ``baseline`` names the other one), on the confirmation seeds."""
        best = self.best
        if best is None or not self.confirmed:
            return []
        compared = self._compared()
        negligible = negligible_difference(compared)
        return [
            compare(best, other, self.direction, negligible)
            for other in compared
            if other is not best and not other.same_run(best)
        ]

    @computed_field
    @property
    def comparison(self) -> list[ComparisonRow]:
        """One row per trained schedule (see :meth:`candidates`)."""
        best = self.best
        return [
            ComparisonRow(
                name=c.name,
                role="recommended" if c is best else c.role,
                family=c.schedule.family,
                base_lr=c.base_lr,
                lr_free=c.lr_free,
                trial_number=c.trial_number,
                search_value=c.value(self.metric),
                search_val_loss=c.value("val_loss"),
                epochs=len(c.run.epochs),
                status=c.run.status,
                mean=c.mean,
                std=c.std,
                seed_values=c.confirmed_values(),
            )
            for c in self.candidates()
        ]

    @computed_field
    @property
    def verdict(self) -> str:
        """Why this candidate, and how it compares with the others (the module doc's rule)."""
        if self.best is None:
            return "no trial finished: there is no recommendation"
        if self.provisional:
            return (
                f"provisional: the job ended before its confirmation, so this is the best "
                f"finished search trial so far, {self.best.describe}, {self.metric} "
                f"{self.best.value(self.metric):.4g} on the search seed {self.search_seed} alone: "
                "unconfirmed, and not compared with any baseline"
            )
        if not self.confirmed:
            return self._unconfirmed_verdict()
        seeds = ", ".join(str(s.seed) for s in self.best.seed_values)
        lines = [p.describe(self.metric) for p in self.paired_comparisons]
        text = f"{self._why_this_one()} on confirmation seeds {seeds}"
        first = self.spec.search.confirm_seeds
        if self.decided_on_seeds and self.decided_on_seeds > first:
            text += (
                f" (decided on {self.decided_on_seeds} seeds: after {first}, the best were "
                "inside each other's seed noise, so seeds were added"
            )
            if self.decided_on_seeds >= self.spec.search.confirm_seeds_cap:
                text += ", up to search.max_confirm_seeds"
            text += ")"
        return text + (": " + "; ".join(lines) if lines else ": nothing else to compare with")

    def _why_this_one(self) -> str:
        best = self.best
        assert best is not None
        candidates = self._compared()
        leader = candidates[contenders(candidates, self.direction)[0]]
        if best is not leader:
            head = (
                f"{leader.describe} had the best mean {self.metric}, inside the seed noise of "
                f"the simpler {best.describe}, which is recommended"
            )
        elif best.lr_free is not None:
            head = (
                f"tuning did not beat {best.describe}: it needs no LR, and is recommended "
                f"(best mean {self.metric})"
            )
        elif best.role == "baseline":
            head = (
                f"no schedule beat a constant LR of {best.base_lr:.4g} ({best.name}): it is "
                f"recommended (best mean {self.metric})"
            )
        else:
            head = f"the recommended schedule, {best.describe}, has the best mean {self.metric}"
        return head

    def _unconfirmed_verdict(self) -> str:
        best = self.best
        assert best is not None
        ours = best.value(self.metric)
        lines = []
        for other in self._compared():
            if other is best or other.same_run(best):
                continue
            theirs = other.value(self.metric)
            if not math.isfinite(theirs):
                lines.append(f"beats {other.name} (which diverged)")
                continue
            better = ours > theirs if self.direction == "maximize" else ours < theirs
            word = "beats" if better else ("ties" if ours == theirs else "does NOT beat")
            lines.append(f"{word} {other.name} ({ours:.4g} vs {theirs:.4g} {self.metric})")
        text = f"the recommendation, {best.describe}, " + "; ".join(lines) if lines else ""
        return (
            f"{text or 'nothing else to compare with'} (unconfirmed: chosen and compared on the "
            f"search seed {self.search_seed} alone, so seed noise is not measured)"
        )

    @computed_field
    @property
    def code(self) -> str | None:
        """Paste-ready PyTorch for the recommendation (:meth:`to_code`), None without one.

        Written for the tuned run length; ``GET /v1/jobs/{id}/recommendation?epochs=E`` (and
        ``&steps_per_epoch=S``) and ``lrtune recommend JOB --epochs E`` write it for another.
        In Python: ``to_code(epochs=E)``, or serialize with ``context={"code_for": {"epochs":
        E, "steps_per_epoch": S}}`` (either may be None).
        """
        return None if self.best is None else self.to_code()

    @field_serializer("code")
    def _code_for_run(self, code: str | None, info: SerializationInfo) -> str | None:
        run = info.context.get("code_for") if isinstance(info.context, dict) else None
        return code if code is None or run is None else self.to_code(**run)

    def to_code(
        self,
        model_name: str = "model",
        *,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
    ) -> str:
        """Paste-ready PyTorch: the optimizer at the recommended LR and the scheduler.

        It declares ``epochs`` (and ``steps_per_epoch = len(train_loader)`` for a schedule
        stepped per batch) at the tuned values, saying so, and rescales every schedule length
        from them, so a user who trains longer changes one number. Exec'd on a fresh
        ``model_name`` it reproduces the best trial's LR of every parameter at every step, to
        the 4 significant digits its LRs are written with (see
        :func:`lrtune.snippet.job_code`). ``epochs`` and ``steps_per_epoch`` write it for a
        run of another length: those values, the comment still saying what it was tuned for.

        Raises:
            ValueError: no trial finished; ``epochs`` or ``steps_per_epoch`` outside 1 to
                :data:`~lrtune.schedules.MAX_RUN_EPOCHS` or
                :data:`~lrtune.schedules.MAX_RUN_STEPS_PER_EPOCH`.
        """
        if self.best is None:
            raise ValueError("no trial finished: there is no schedule to write")
        if self.best.lr_free is not None:
            return lr_free_code(self.best.lr_free, self.spec, model_name=model_name, epochs=epochs)
        return job_code(
            self.spec,
            self.best.schedule,
            self.best.base_lr,
            steps_per_epoch=self.steps_per_epoch,
            model_name=model_name,
            run_epochs=epochs,
            run_steps_per_epoch=steps_per_epoch,
        )

    def table(self) -> str:
        """Every trained schedule as an aligned text table, with the verdict underneath.

        The metric column is the search seed's (marked ``*``); mean, std and each seed's value
        are over the confirmation seeds only.
        """
        search_col = f"{self.metric}*"
        names = [f"{c.name} (recommended)" if c is self.best else c.name for c in self.candidates()]
        width = max([32, *map(len, names)])  # "constant at suggestion (recommended)" is 36
        header = f"{'schedule':<{width}} {'family':<24} {'lr':>9} {search_col:>10}"
        if self.confirm_seeds:
            header += f" {'mean':>10} {'std':>9}" + "".join(
                f" {'seed ' + str(s):>10}" for s in self.confirm_seeds
            )
        rows = [header, "-" * len(header)]
        for name, c in zip(names, self.candidates(), strict=True):
            family = c.schedule.family
            if c.lr_free is not None:  # "prodigy (cosine)", "schedule-free (constant)"
                family = f"{c.lr_free.replace('_', '-')} ({family})"
            line = f"{name:<{width}} {family:<24} {c.base_lr:>9.4g} {c.value(self.metric):>10.4g}"
            if self.confirm_seeds:
                by_seed = c.confirmed_values()
                line += f" {_fmt(c.mean):>10} {_fmt(c.std):>9}" + "".join(
                    f" {_fmt(by_seed.get(s)):>10}" for s in self.confirm_seeds
                )
            rows.append(line)
        note = f"* on the search seed ({self.search_seed}), which chose the finalists"
        if self.confirm_seeds:
            note += "; mean and std over the confirmation seeds only"
        return "\n".join([*rows, note, "", self.verdict])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
