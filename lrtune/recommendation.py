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
    >>> rec.schedule["family"], rec.confirmed, len(rec.best.seed_values)
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
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from lrtune._schema import run_length_decode as expand_runs
from lrtune._schema import run_length_encode as compress_runs
from lrtune.result import LRFinderResult
from lrtune.schedules import parse_schedule, preview
from lrtune.snippet import job_code
from lrtune.space import LRBounds
from lrtune.spec import JobSpec
from lrtune.training import TrainingRun

Role = Literal["finalist", "baseline"]
Verdict = Literal["beats", "does not beat", "inside the seed noise", "ties"]


@dataclass
class SeedValue:
    """One candidate's run on one confirmation seed."""

    seed: int
    value: float  # the searched metric after the last epoch; NaN when the run diverged
    status: str  # how the run ended (completed, diverged, lr_threshold)
    epochs: int  # epochs trained (what the run cost)


@dataclass
class TrainedSchedule:
    """One schedule that was trained for the comparison: a finalist or a baseline.

    ``run`` is its run on the search seed (a finalist's is its search trial); ``seed_values``
    are its runs on the confirmation seeds, in seed order.
    """

    name: str
    role: Role
    schedule: dict[str, Any]
    base_lr: float  # the LR of a parameter with multiplier 1
    run: TrainingRun
    trial_number: int | None = None
    seed_values: list[SeedValue] = field(default_factory=list)

    def value(self, metric: str) -> float:
        """The metric on the search seed."""
        return self.run.final(metric)

    def confirmed_values(self) -> dict[int, float]:
        """The metric on each confirmation seed (NaN where the run diverged)."""
        return {s.seed: s.value for s in self.seed_values}

    @property
    def mean(self) -> float | None:
        """The mean over the confirmation seeds; None without any, NaN if one diverged."""
        values = [s.value for s in self.seed_values]
        return statistics.fmean(values) if values else None

    @property
    def std(self) -> float | None:
        """The sample standard deviation over the confirmation seeds; None with fewer than 2."""
        values = [s.value for s in self.seed_values]
        return statistics.stdev(values) if len(values) >= 2 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "schedule": self.schedule,
            "base_lr": self.base_lr,
            "run": self.run.to_dict(),
            "trial_number": self.trial_number,
            "seed_values": [asdict(s) for s in self.seed_values],
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainedSchedule:
        return cls(
            name=data["name"],
            role=data["role"],
            schedule=data["schedule"],
            base_lr=data["base_lr"],
            run=TrainingRun.from_dict(data["run"]),
            trial_number=data.get("trial_number"),
            seed_values=[SeedValue(**s) for s in data.get("seed_values", [])],
        )


@dataclass(frozen=True)
class PairedComparison:
    """The recommendation against one baseline over the seeds both ran (see the module doc)."""

    baseline: str
    seeds: int  # seeds both ran
    wins: int  # seeds where the recommendation is better (a diverged baseline counts)
    mean_improvement: float | None  # mean of d_i over seeds where both runs are finite
    standard_error: float | None  # stdev(d) / sqrt(n); None with fewer than 2 such seeds
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
        return PairedComparison(baseline, len(shared), wins, None, None, verdict)
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        verdict = "beats" if mean > 0 else ("ties" if mean == 0 else "does not beat")
        return PairedComparison(baseline, len(shared), wins, mean, None, verdict)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    if all(d == 0 for d in diffs):
        verdict = "ties"
    elif abs(mean) <= se:
        verdict = "inside the seed noise"
    else:
        verdict = "beats" if mean > 0 else "does not beat"
    return PairedComparison(baseline, len(shared), wins, mean, se, verdict)


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


@dataclass
class Recommendation:
    """The recommended schedule and its evidence.

    ``best`` is the recommended finalist; ``finalists`` are all of them in search order (``best``
    among them); ``baselines`` the constant-at-suggestion and default-LR runs. ``suggested_lr``
    is the range test's suggestion as the LR of a parameter with multiplier 1 (the unit of every
    LR here). ``confirm_seeds`` are the seeds the candidates were retrained on, ``search_seed``
    the one that chose the finalists. ``n_trials`` counts the search's trials by state,
    ``n_confirmation`` the confirmation runs'; ``history`` lists both, each with its ``kind``.
    """

    study_name: str
    fingerprint: str
    spec: dict[str, Any]
    metric: str
    direction: str
    best: TrainedSchedule | None
    baselines: list[TrainedSchedule]
    suggested_lr: float | None
    confidence: float | None
    bounds: LRBounds
    lr_multipliers: list[float]
    steps_per_epoch: int
    finalists: list[TrainedSchedule] = field(default_factory=list)
    search_seed: int = 0
    confirm_seeds: list[int] = field(default_factory=list)
    lr_curve: list[list[float]] = field(default_factory=list)
    n_trials: dict[str, int] = field(default_factory=dict)
    n_confirmation: dict[str, int] = field(default_factory=dict)
    range_test: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

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
        lr_multipliers: list[float],
        n_trials: dict[str, int],
        n_confirmation: dict[str, int],
        history: list[dict[str, Any]],
    ) -> Recommendation:
        """Pick the recommended finalist (:func:`pick_recommended`) and preview its LRs."""
        direction = spec.search.direction or "minimize"
        index = pick_recommended(finalists, direction)
        rec = cls(
            study_name=study_name,
            fingerprint=spec.fingerprint(),
            spec=spec.model_dump(mode="json"),
            metric=spec.search.metric,
            direction=direction,
            best=None if index is None else finalists[index],
            baselines=baselines,
            suggested_lr=bounds.suggestion,
            confidence=range_test.spread_decades,
            bounds=bounds,
            lr_multipliers=lr_multipliers,
            steps_per_epoch=steps_per_epoch,
            finalists=finalists,
            search_seed=spec.seed,
            confirm_seeds=confirm_seeds,
            n_trials=n_trials,
            n_confirmation=n_confirmation,
            range_test=range_test.to_dict(),
            history=history,
        )
        rec.lr_curve = rec._preview_best()
        return rec

    @property
    def schedule(self) -> dict[str, Any] | None:
        return None if self.best is None else self.best.schedule

    @property
    def base_lr(self) -> float | None:
        """The recommended LR, for a parameter whose multiplier is 1."""
        return None if self.best is None else self.best.base_lr

    @property
    def value(self) -> float | None:
        """The recommended schedule's metric: its confirmed mean, else its search-seed value."""
        if self.best is None:
            return None
        return self.best.mean if self.confirmed else self.best.value(self.metric)

    @property
    def confirmed(self) -> bool:
        """Whether the recommendation was chosen on confirmation seeds (not the search seed)."""
        return self.best is not None and bool(self.best.seed_values)

    def _preview_best(self) -> list[list[float]]:
        if self.best is None:
            return []
        spec = parse_schedule(self.best.schedule)
        base_lrs = [self.best.base_lr * m for m in self.lr_multipliers]
        if spec.family != "plateau":  # the full planned run
            epochs = self.spec["search"]["epochs"]
            return preview(
                spec, base_lrs, self.steps_per_epoch, epochs, lr_multipliers=self.lr_multipliers
            ).tolist()
        # Plateau depends on the metric: preview the epochs the run measured.
        metrics = [e["val_loss"] for e in self.best.run.epochs]
        if not metrics:
            return []
        return preview(
            spec,
            base_lrs,
            self.steps_per_epoch,
            len(metrics),
            metrics=metrics,
            lr_multipliers=self.lr_multipliers,
        ).tolist()

    def candidates(self) -> list[TrainedSchedule]:
        """Every trained schedule, the recommended first, then other finalists, then baselines."""
        others = [f for f in self.finalists if f is not self.best]
        return ([self.best] if self.best is not None else []) + others + self.baselines

    def paired_comparisons(self) -> list[PairedComparison]:
        """The recommendation against each baseline on the confirmation seeds."""
        if self.best is None or not self.confirmed:
            return []
        ours = self.best.confirmed_values()
        return [
            paired_comparison(b.name, ours, b.confirmed_values(), self.direction)
            for b in self.baselines
        ]

    def comparison(self) -> list[dict[str, Any]]:
        """One row per trained schedule (see :meth:`candidates`).

        ``role`` is recommended, finalist or baseline; the metric and ``val_loss`` columns are on
        the search seed; ``mean``, ``std`` and ``seed_values`` on the confirmation seeds.
        """
        return [
            {
                "name": c.name,
                "role": "recommended" if c is self.best else c.role,
                "family": c.schedule["family"],
                "base_lr": c.base_lr,
                "trial_number": c.trial_number,
                self.metric: c.value(self.metric),
                "val_loss": c.value("val_loss"),
                "epochs": len(c.run.epochs),
                "status": c.run.status,
                "mean": c.mean,
                "std": c.std,
                "seed_values": {str(s.seed): s.value for s in c.seed_values},
            }
            for c in self.candidates()
        ]

    def verdict(self) -> str:
        """How the recommendation compares with the baselines, by the module doc's rule."""
        if self.best is None:
            return "no trial finished: there is no recommendation"
        if not self.confirmed:
            return self._unconfirmed_verdict()
        seeds = ", ".join(map(str, self.confirm_seeds))
        lines = [p.describe(self.metric) for p in self.paired_comparisons()]
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

    def to_code(self, model_name: str = "model") -> str:
        """Paste-ready PyTorch: the optimizer at the recommended LR and the scheduler.

        Exec'd on a fresh ``model_name`` it reproduces the best trial's LR of every parameter
        at every step (see :func:`lrtune.snippet.job_code`).
        """
        if self.best is None:
            raise ValueError("no trial finished: there is no schedule to write")
        return job_code(
            JobSpec.model_validate(self.spec),
            parse_schedule(self.best.schedule),
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
                f"{name:<24} {c.schedule['family']:<21} {c.base_lr:>9.3g} "
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
        return "\n".join([*rows, note, "", self.verdict()])

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_name": self.study_name,
            "fingerprint": self.fingerprint,
            "spec": self.spec,
            "metric": self.metric,
            "direction": self.direction,
            "schedule": self.schedule,
            "base_lr": self.base_lr,
            "value": self.value,
            "confirmed": self.confirmed,
            "best": None if self.best is None else self.best.to_dict(),
            "finalists": [f.to_dict() for f in self.finalists],
            "baselines": [b.to_dict() for b in self.baselines],
            "search_seed": self.search_seed,
            "confirm_seeds": self.confirm_seeds,
            "suggested_lr": self.suggested_lr,
            "confidence": self.confidence,
            "bounds": self.bounds.to_dict(),
            "lr_multipliers": self.lr_multipliers,
            "steps_per_epoch": self.steps_per_epoch,
            "lr_curve": compress_runs(self.lr_curve),
            "n_trials": self.n_trials,
            "n_confirmation": self.n_confirmation,
            "comparison": self.comparison(),
            "paired_comparisons": [asdict(p) for p in self.paired_comparisons()],
            "verdict": self.verdict(),
            "range_test": self.range_test,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recommendation:
        finalists = [TrainedSchedule.from_dict(f) for f in data.get("finalists", [])]
        best = None if data["best"] is None else TrainedSchedule.from_dict(data["best"])
        if best is not None:  # the recommended finalist is one object in both places
            finalists = [best if f.trial_number == best.trial_number else f for f in finalists]
        return cls(
            study_name=data["study_name"],
            fingerprint=data["fingerprint"],
            spec=data["spec"],
            metric=data["metric"],
            direction=data["direction"],
            best=best,
            baselines=[TrainedSchedule.from_dict(b) for b in data["baselines"]],
            suggested_lr=data["suggested_lr"],
            confidence=data["confidence"],
            bounds=LRBounds.from_dict(data["bounds"]),
            lr_multipliers=data["lr_multipliers"],
            steps_per_epoch=data["steps_per_epoch"],
            finalists=finalists,
            search_seed=data.get("search_seed", 0),
            confirm_seeds=data.get("confirm_seeds", []),
            lr_curve=expand_runs(data["lr_curve"]),
            n_trials=data["n_trials"],
            n_confirmation=data.get("n_confirmation", {}),
            range_test=data["range_test"],
            history=data["history"],
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
