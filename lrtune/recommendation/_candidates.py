"""What a recommendation is chosen among: the trained schedules (finalists and baselines),
their runs on the confirmation seeds, their paired comparisons, and the job's history.

The rule that compares and picks them is :mod:`lrtune.recommendation`'s (``_pick.py``)."""

from __future__ import annotations

import math
import statistics
from typing import Literal

from pydantic import ConfigDict, Field, computed_field

from lrtune._pydantic import JsonFloat, ResultModel
from lrtune.lr_free import LRFreeName
from lrtune.result import TrainingRun
from lrtune.schedules import ScheduleSpec

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
