"""The answer to a job: the schedule to train with, why, and how it compares.

A :class:`Recommendation` holds the best trial's schedule and LR, its LR-per-step curve (from
:func:`lrtune.schedules.preview`), its validation metric, the range test's suggestion and
confidence, and a comparison, trained for the same epochs and seed, with a constant LR at the
suggestion and with the optimizer's common default LR. It serialises to a plain dict.

Example:
    >>> from lrtune.spec import JobSpec
    >>> from lrtune.tuner import tune
    >>> spec = JobSpec.model_validate({
    ...     "model": {"name": "logreg"}, "dataset": {"name": "wine"},
    ...     "range_test": {"seeds": 2, "num_iter": 40},
    ...     "search": {"n_trials": 2, "epochs": 2, "families": ["cosine"]}})
    >>> rec = tune(spec, progress=False)
    >>> rec.schedule["family"]
    'cosine'
    >>> "lr_scheduler.CosineAnnealingLR" in rec.to_code()
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lrtune._schema import run_length_decode as expand_runs
from lrtune._schema import run_length_encode as compress_runs
from lrtune.result import LRFinderResult
from lrtune.schedules import parse_schedule, preview
from lrtune.snippet import job_code
from lrtune.space import LRBounds
from lrtune.spec import JobSpec
from lrtune.training import TrainingRun


@dataclass
class Baseline:
    """One trained schedule in the comparison."""

    name: str
    schedule: dict[str, Any]
    base_lr: float
    run: TrainingRun
    trial_number: int | None = None

    def value(self, metric: str) -> float:
        return self.run.final(metric)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "schedule": self.schedule,
            "base_lr": self.base_lr,
            "run": self.run.to_dict(),
            "trial_number": self.trial_number,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        return cls(
            name=data["name"],
            schedule=data["schedule"],
            base_lr=data["base_lr"],
            run=TrainingRun.from_dict(data["run"]),
            trial_number=data.get("trial_number"),
        )


@dataclass
class Recommendation:
    """The recommended schedule and its evidence."""

    study_name: str
    fingerprint: str
    spec: dict[str, Any]
    metric: str
    direction: str
    best: Baseline | None
    baselines: list[Baseline]
    suggested_lr: float | None
    confidence: float | None
    bounds: LRBounds
    lr_multipliers: list[float]
    steps_per_epoch: int
    lr_curve: list[list[float]] = field(default_factory=list)
    n_trials: dict[str, int] = field(default_factory=dict)
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
        best: Baseline | None,
        baselines: list[Baseline],
        steps_per_epoch: int,
        lr_multipliers: list[float],
        n_trials: dict[str, int],
        history: list[dict[str, Any]],
    ) -> Recommendation:
        rec = cls(
            study_name=study_name,
            fingerprint=spec.fingerprint(),
            spec=spec.model_dump(mode="json"),
            metric=spec.search.metric,
            direction=spec.search.direction or "minimize",
            best=best,
            baselines=baselines,
            suggested_lr=range_test.suggestion,
            confidence=range_test.spread_decades,
            bounds=bounds,
            lr_multipliers=lr_multipliers,
            steps_per_epoch=steps_per_epoch,
            n_trials=n_trials,
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
        return None if self.best is None else self.best.base_lr

    @property
    def value(self) -> float | None:
        return None if self.best is None else self.best.value(self.metric)

    def _preview_best(self) -> list[list[float]]:
        if self.best is None:
            return []
        spec = parse_schedule(self.best.schedule)
        base_lrs = [self.best.base_lr * m for m in self.lr_multipliers]
        if spec.family != "plateau":  # the full planned run
            epochs = self.spec["search"]["epochs"]
            return preview(spec, base_lrs, self.steps_per_epoch, epochs).tolist()
        # Plateau depends on the metric: preview the epochs the run measured.
        metrics = [e["val_loss"] for e in self.best.run.epochs]
        if not metrics:
            return []
        return preview(spec, base_lrs, self.steps_per_epoch, len(metrics), metrics=metrics).tolist()

    def comparison(self) -> list[dict[str, Any]]:
        """One row per trained schedule, best first: name, family, LR, metric, val loss."""
        rows = [self.best] if self.best is not None else []
        rows += self.baselines
        return [
            {
                "name": b.name,
                "family": b.schedule["family"],
                "base_lr": b.base_lr,
                self.metric: b.value(self.metric),
                "val_loss": b.value("val_loss"),
                "epochs": len(b.run.epochs),
                "status": b.run.status,
            }
            for b in rows
        ]

    def verdict(self) -> str:
        """One honest sentence: does the recommended schedule beat the baselines?"""
        if self.best is None:
            return "no trial finished: there is no recommendation"
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
        return "the recommended schedule " + "; ".join(lines) if lines else "no baselines run"

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
        """The comparison as an aligned text table, with the verdict underneath."""
        columns = list(dict.fromkeys([self.metric, "val_loss"]))  # once if metric is val_loss
        header = f"{'schedule':<24} {'family':<21} {'lr':>9}" + "".join(
            f" {c:>10}" for c in columns
        )
        rows = [header, "-" * len(header)]
        for row in self.comparison():
            values = "".join(f" {row[c]:>10.4g}" for c in columns)
            rows.append(f"{row['name']:<24} {row['family']:<21} {row['base_lr']:>9.3g}{values}")
        return "\n".join([*rows, "", self.verdict()])

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
            "best": None if self.best is None else self.best.to_dict(),
            "baselines": [b.to_dict() for b in self.baselines],
            "suggested_lr": self.suggested_lr,
            "confidence": self.confidence,
            "bounds": self.bounds.to_dict(),
            "lr_multipliers": self.lr_multipliers,
            "steps_per_epoch": self.steps_per_epoch,
            "lr_curve": compress_runs(self.lr_curve),
            "n_trials": self.n_trials,
            "comparison": self.comparison(),
            "verdict": self.verdict(),
            "range_test": self.range_test,
            "history": self.history,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recommendation:
        return cls(
            study_name=data["study_name"],
            fingerprint=data["fingerprint"],
            spec=data["spec"],
            metric=data["metric"],
            direction=data["direction"],
            best=None if data["best"] is None else Baseline.from_dict(data["best"]),
            baselines=[Baseline.from_dict(b) for b in data["baselines"]],
            suggested_lr=data["suggested_lr"],
            confidence=data["confidence"],
            bounds=LRBounds.from_dict(data["bounds"]),
            lr_multipliers=data["lr_multipliers"],
            steps_per_epoch=data["steps_per_epoch"],
            lr_curve=expand_runs(data["lr_curve"]),
            n_trials=data["n_trials"],
            range_test=data["range_test"],
            history=data["history"],
        )
