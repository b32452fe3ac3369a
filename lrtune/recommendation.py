"""The answer to a job: the schedule to train with, why, and how sure lrtune is of it.

A search picks its best trials on one seed (the *search seed*), and on a small validation set the
top trials are often separated by less than seed noise. So the best ``search.finalists``
distinct schedules, and the baselines (a constant LR at the range test's suggestion, and the
optimizer's common default LR), are retrained on ``search.confirm_seeds`` fresh seeds (other
initial weights and data order, the same seeds for every candidate). The recommendation is the
finalist with the best **mean over the confirmation seeds only**: the search seed chose the
finalists, so counting it again would bring the winner's curse back. Its value is shown beside
the others, marked.

The recommended schedule is compared with each baseline by :func:`paired_comparison` over the
seeds both ran: the per-seed improvement ``d_i`` (positive when the recommendation is better), its
mean ``m`` and standard error ``se = stdev(d) / sqrt(n)``. The rule, stated once:

- ``n >= 2`` and ``|m| <= se``: the difference is **inside the seed noise**;
- ``n >= 2`` and ``|m| > se``: the recommendation **beats** the baseline (``m > 0``) or **does
  not beat** it (``m < 0``);
- ``n < 2``: the seed noise is **unmeasured**; the sign of the one difference is reported as such;
- every ``d_i`` is zero: the two **tie**.

A run that diverged scores as a loss on its seed and is left out of ``m`` and ``se``. With
``confirm_seeds: 0`` the search seed alone decides, and the recommendation says it is
unconfirmed.

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
    >>> rec.schedule.family, rec.confirmed, len(rec.best.seed_values)
    ('cosine', True, 2)
    >>> "lr_scheduler.CosineAnnealingLR" in rec.to_code()
    True
    >>> paired_comparison("constant", {1: 0.9, 2: 0.8}, {1: 0.7, 2: 0.75}, "maximize").verdict
    'beats'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import ConfigDict, Field, computed_field

from lrtune._schema import JsonFloat, LRSteps, ResultModel
from lrtune.result import LRBounds, LRFinderResult, TrainingRun
from lrtune.schedules import ScheduleSpec, preview
from lrtune.snippet import job_code
from lrtune.spec import JobSpec

Role = Literal["finalist", "baseline"]
Verdict = Literal["beats", "does not beat", "inside the seed noise", "ties"]


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
) -> PairedComparison:
    """Compare two candidates seed by seed over the seeds both ran (the rule in the module doc).

    ``ours`` and ``theirs`` map seed to the metric (NaN for a diverged run); ``direction`` says
    whether larger is better.
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
    elif abs(mean) <= se:
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


def pick_recommended(finalists: Sequence[TrainedSchedule], direction: str) -> int | None:
    """Index of the finalist with the best mean over its confirmation seeds.

    A finalist with a diverged seed ranks last; ties go to the better search rank (the order
    given). Without confirmation values the first finalist (the search's best) is returned.
    """
    if not finalists:
        return None
    sign = -1.0 if direction == "maximize" else 1.0

    def key(index: int) -> tuple[float, int]:
        mean = finalists[index].mean
        if mean is None or not math.isfinite(mean):
            return (math.inf, index)
        return (sign * mean, index)

    return min(range(len(finalists)), key=key)


class Recommendation(ResultModel):
    """The recommended schedule and its evidence: what ``lrtune tune --json`` prints.

    ``finalists`` are the search's best distinct schedules in search order, and
    ``recommended`` the index of the one recommended (:attr:`best`); ``baselines`` the
    constant-at-suggestion and default-LR runs. ``suggested_lr`` is the range test's suggestion
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
    recommended: int | None = Field(description="index of the recommended finalist")
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
    ) -> Recommendation:
        """Pick the recommended finalist (:func:`pick_recommended`) and preview its LRs."""
        direction = spec.search.direction or "minimize"
        rec = cls(
            study_name=study_name,
            fingerprint=spec.fingerprint(),
            spec=spec,
            metric=spec.search.metric,
            direction=direction,
            finalists=finalists,
            recommended=pick_recommended(finalists, direction),
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
        )
        rec.lr_curve = rec._preview_best()
        return rec

    @property
    def best(self) -> TrainedSchedule | None:
        """The recommended finalist, or None when no trial finished."""
        return None if self.recommended is None else self.finalists[self.recommended]

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
        others = [f for k, f in enumerate(self.finalists) if k != self.recommended]
        return ([self.best] if self.best is not None else []) + others + self.baselines

    @computed_field
    @property
    def paired_comparisons(self) -> list[PairedComparison]:
        """The recommendation against each baseline on the confirmation seeds."""
        if self.best is None or not self.confirmed:
            return []
        ours = self.best.confirmed_values()
        return [
            paired_comparison(b.name, ours, b.confirmed_values(), self.direction)
            for b in self.baselines
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
        """How the recommendation compares with the baselines, by the module doc's rule."""
        if self.best is None:
            return "no trial finished: there is no recommendation"
        if not self.confirmed:
            return self._unconfirmed_verdict()
        seeds = ", ".join(map(str, self.confirm_seeds))
        lines = [p.describe(self.metric) for p in self.paired_comparisons]
        head = (
            f"the recommended schedule ({self.best.name}, best mean {self.metric} over "
            f"confirmation seeds {seeds})"
        )
        return head + (": " + "; ".join(lines) if lines else ": no baselines run")

    def _unconfirmed_verdict(self) -> str:
        best = self.best.value(self.metric)
        lines = []
        for b in self.baselines:
            other = b.value(self.metric)
            if not math.isfinite(other):
                lines.append(f"beats {b.name} (which diverged)")
                continue
            better = best > other if self.direction == "maximize" else best < other
            word = "beats" if better else ("ties" if best == other else "does NOT beat")
            lines.append(f"{word} {b.name} ({best:.4g} vs {other:.4g} {self.metric})")
        text = "the recommended schedule " + "; ".join(lines) if lines else "no baselines run"
        return (
            f"{text} (unconfirmed: chosen and compared on the search seed {self.search_seed} "
            "alone, so seed noise is not measured)"
        )

    @computed_field
    @property
    def code(self) -> str | None:
        """Paste-ready PyTorch for the recommendation (:meth:`to_code`), None without one."""
        return None if self.best is None else self.to_code()

    def to_code(self, model_name: str = "model") -> str:
        """Paste-ready PyTorch: the optimizer at the recommended LR and the scheduler.

        Exec'd on a fresh ``model_name`` it reproduces the best trial's LR of every parameter
        at every step (see :func:`lrtune.snippet.job_code`).
        """
        if self.best is None:
            raise ValueError("no trial finished: there is no schedule to write")
        return job_code(
            self.spec,
            self.best.schedule,
            self.best.base_lr,
            steps_per_epoch=self.steps_per_epoch,
            model_name=model_name,
        )

    def table(self) -> str:
        """Every trained schedule as an aligned text table, with the verdict underneath.

        The metric column is the search seed's (marked ``*``); mean, std and each seed's value
        are over the confirmation seeds only.
        """
        search_col = f"{self.metric}*"
        header = f"{'schedule':<24} {'family':<21} {'lr':>9} {search_col:>10}"
        if self.confirm_seeds:
            header += f" {'mean':>10} {'std':>9}" + "".join(
                f" {'seed ' + str(s):>10}" for s in self.confirm_seeds
            )
        rows = [header, "-" * len(header)]
        for c in self.candidates():
            name = f"{c.name} (recommended)" if c is self.best else c.name
            line = (
                f"{name:<24} {c.schedule.family:<21} {c.base_lr:>9.3g} "
                f"{c.value(self.metric):>10.4g}"
            )
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
