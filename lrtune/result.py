"""Results a job produces: the range test's curves and suggestions, the LR bounds it gives the
search, and what a training run did.

They are pydantic models (strict JSON through ``model_dump(mode="json")``, read back with
``model_validate``), so a worker can store them and a service can serve them as they are; this
module imports neither torch nor optuna. ``LRFinderResult.plot()`` draws with matplotlib, on
demand only.

Example:
    >>> import numpy as np
    >>> lrs = np.geomspace(1e-4, 1, 50)
    >>> losses = list((np.log10(lrs) + 1.5) ** 2 + 1)
    >>> curve = SeedCurve(raw=losses, smoothed=losses, diverged_at=None)
    >>> config = RangeTestConfig(start_lr=1e-4, end_lr=1.0, num_iter=50)
    >>> result = LRFinderResult.from_curves(lrs, [curve], group_lr_ratios=[1.0], config=config)
    >>> 1e-4 < result.suggestion < 10**-1.5  # on the way down, left of the minimum
    True
    >>> again = LRFinderResult.model_validate(result.model_dump(mode="json"))
    >>> again.suggestion == result.suggestion
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import ConfigDict, Field, computed_field

from lrtune._pydantic import JsonFloat, LRSteps, ResultModel
from lrtune.spec import JobSpec
from lrtune.suggestions import Consensus, Suggestion, consensus, suggest_all

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


class SeedCurve(ResultModel):
    """One sweep: raw and smoothed loss per step, where it diverged, validation points."""

    raw: list[JsonFloat] = Field(description="the loss at each step, as measured")
    smoothed: list[JsonFloat] = Field(description="the debiased EMA of the loss at each step")
    diverged_at: int | None = Field(description="the step at which the sweep stopped, if it did")
    val: list[tuple[int, JsonFloat]] = Field(
        default_factory=list, description="(step, loss on the validation subset) pairs"
    )


class RangeTestConfig(ResultModel):
    """The options a range test ran with, as :func:`lrtune.find_lr` records them.

    The sweep's options are required; the rest default to ``find_lr``'s defaults, and
    ``optimizer``/``device``/``engine`` to what it resolves them to with one seed on a CPU.
    Every field is in the JSON (a reader can rely on each being there): range tests stored
    since the first release hold exactly these keys.
    """

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    start_lr: float = Field(description="the LR of the first step")
    end_lr: float = Field(description="the LR of the last step")
    num_iter: int = Field(description="steps in a sweep (fewer were recorded if it diverged)")
    mode: Literal["exp", "linear"] = Field("exp", description="how the LR grows step by step")
    smooth_beta: float = Field(0.98, description="EMA factor of the loss smoothing")
    diverge_threshold: float | None = Field(
        4.0, description="how far above its best the smoothed loss may rise; null: never stop"
    )
    accumulation_steps: int = Field(1, description="micro-batches per optimizer step")
    seeds: int = Field(1, description="independent sweeps")
    seed: int | None = Field(None, description="base seed of the data orders")
    reinit: bool = Field(False, description="each seed re-initialised the weights")
    optimizer: str = Field("SGD", description="the emulated optimizer's class name")
    device: str = Field("cpu", description="where the sweeps ran, e.g. cpu or cuda:0")
    amp: bool = Field(False, description="mixed precision was on")
    engine: Literal["sequential", "vectorized"] = Field(
        "sequential", description="seeds one after another, or as one vmap sweep"
    )


class LRFinderResult(ResultModel):
    """Loss-vs-LR curves and the suggested LR.

    Every LR here is group 0's LR during the sweep (``group_lr_ratios`` gives the others), or,
    after :meth:`rescaled`, the LR of the parameter ``lr_reference`` names.
    Serialise with ``model_dump(mode="json")`` (strict JSON: non-finite values are ``null``) and
    read back with ``LRFinderResult.model_validate``; the derived values (``suggestion``,
    ``spread_decades``, ``diverged_at``, ``divergence_lr``) are in the JSON for readers and
    ignored when it is read back.

    Attributes:
        lrs: group 0's (``lr_reference``'s) LR at each recorded step.
        seeds: one :class:`SeedCurve` per sweep.
        median: per step, the median of the seeds' smoothed losses, a diverged seed counting as
            +inf; it ends where half the seeds have diverged.
        band_low, band_high: the 25th and 75th percentiles on the same terms (NaN = unbounded).
        suggestions: every single-curve rule applied to the median curve.
        consensus: the default rule: the median of per-seed ``longest_run`` suggestions and
            their spread.
        group_lr_ratios: each param group's LR relative to group 0 during the sweep.
        config: the options the test ran with.
    """

    lrs: list[float]
    lr_reference: str = Field(
        "param group 0", description="whose LR ``lrs`` and the suggestions are (their unit)"
    )
    seeds: list[SeedCurve]
    median: list[JsonFloat]
    band_low: list[JsonFloat]
    band_high: list[JsonFloat]
    suggestions: dict[str, Suggestion]
    consensus: Consensus
    group_lr_ratios: list[float]
    config: RangeTestConfig

    @classmethod
    def from_curves(
        cls,
        lrs: Sequence[float],
        curves: list[SeedCurve],
        group_lr_ratios: Sequence[float],
        config: RangeTestConfig,
    ) -> LRFinderResult:
        steps = max(len(c.smoothed) for c in curves)
        lrs = [float(lr) for lr in lrs[:steps]]
        grid = np.full((len(curves), steps), np.inf)
        for k, curve in enumerate(curves):
            values = np.asarray(curve.smoothed, dtype=float)
            grid[k, : len(values)] = np.where(np.isfinite(values), values, np.inf)
        with np.errstate(invalid="ignore"):  # percentiles between +inf entries are NaN
            low, median, high = np.percentile(grid, [25, 50, 75], axis=0)
        end = int(np.argmax(~np.isfinite(median))) if not np.all(np.isfinite(median)) else steps
        median_curve = median[:end].tolist()
        return cls(
            lrs=lrs,
            seeds=curves,
            median=median_curve,
            band_low=np.where(np.isfinite(low), low, np.nan)[:end].tolist(),
            band_high=np.where(np.isfinite(high), high, np.nan)[:end].tolist(),
            suggestions=suggest_all(lrs[:end], median_curve),
            consensus=consensus(lrs, [c.smoothed for c in curves]),
            group_lr_ratios=[float(r) for r in group_lr_ratios],
            config=config,
        )

    def rescaled(self, factor: float, lr_reference: str) -> LRFinderResult:
        """The same result with every LR multiplied by ``factor``, now ``lr_reference``'s LR.

        A job's range test sweeps group 0; ``rescaled(1 / m0, ...)`` reports it as the LR of a
        parameter whose multiplier is 1, like everything else a job produces. The group ratios
        become ratios to that reference (the groups' multipliers).
        """

        def scaled(s: Suggestion) -> Suggestion:
            return s if s.lr is None else s.model_copy(update={"lr": s.lr * factor})

        consensus = self.consensus.model_copy(
            update={
                "suggestion": scaled(self.consensus.suggestion),
                "per_seed": [scaled(s) for s in self.consensus.per_seed],
            }
        )
        return self.model_copy(
            update={
                "lrs": [lr * factor for lr in self.lrs],
                "lr_reference": lr_reference,
                "suggestions": {name: scaled(s) for name, s in self.suggestions.items()},
                "consensus": consensus,
                "group_lr_ratios": [r / factor for r in self.group_lr_ratios],
            }
        )

    @computed_field
    @property
    def suggestion(self) -> float | None:
        """The suggested LR for param group 0 (the consensus rule), or None with a reason."""
        return self.consensus.suggestion.lr

    @computed_field
    @property
    def spread_decades(self) -> float | None:
        """Spread of the per-seed suggestions in decades of LR; lower is better, 0 = all agree."""
        return self.consensus.spread_decades

    @property
    def group_suggestions(self) -> list[float] | None:
        """The suggested LR for every param group, keeping their ratios."""
        lr = self.suggestion
        return None if lr is None else [lr * r for r in self.group_lr_ratios]

    @computed_field
    @property
    def diverged_at(self) -> int | None:
        """The step by which half the seeds had diverged (the one seed's, with one), or None."""
        steps = sorted(c.diverged_at for c in self.seeds if c.diverged_at is not None)
        needed = math.ceil(len(self.seeds) / 2)
        return steps[needed - 1] if len(steps) >= needed else None

    @computed_field
    @property
    def divergence_lr(self) -> float | None:
        """Group 0's LR where the median curve diverged."""
        step = self.diverged_at
        return None if step is None else self.lrs[step]

    def summary(self) -> str:
        """A few lines for a terminal: the suggestion, the seeds' spread, the other rules."""
        chosen = self.consensus.suggestion
        if chosen.lr is None:
            lines = [f"no suggestion: {chosen.reason}"]
        else:
            spread = self.spread_decades
            conf = "n/a (one seed)" if spread is None else f"seeds within {spread:.2f} decades"
            lines = [
                f"suggested lr: {chosen.lr:.3g}  ({conf}, agreement {self.consensus.agreement})"
            ]
        for name, s in self.suggestions.items():
            lines.append(
                f"  {name:<11} {s.lr:.3g}" if s.lr is not None else f"  {name:<11} - ({s.reason})"
            )
        if self.divergence_lr is not None:
            lines.append(f"  diverged at lr {self.divergence_lr:.3g} (step {self.diverged_at})")
        return "\n".join(lines)

    def plot(self, ax: Axes | None = None, *, bounds: LRBounds | None = None) -> Figure:
        """Loss vs LR on a log axis: seeds faint, median bold, band shaded, every rule's
        suggestion dotted, the chosen one (the consensus) bold red, and, given ``bounds``, the
        LR range the search draws from shaded."""
        from matplotlib.figure import Figure

        if ax is None:
            fig = Figure(figsize=(8.5, 4.5), layout="constrained")
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        lrs = np.asarray(self.lrs)
        multi = len(self.seeds) > 1
        for k, curve in enumerate(self.seeds):
            ax.plot(
                lrs[: len(curve.smoothed)],
                curve.smoothed,
                color="tab:blue",
                alpha=0.25 if multi else 1.0,
                lw=1,
                label=("seeds" if multi else "loss") if k == 0 else None,
            )
        if multi:
            n = len(self.median)
            ax.fill_between(
                lrs[:n],
                self.band_low,
                self.band_high,
                color="tab:blue",
                alpha=0.15,
                label="25-75% of seeds",
            )
            ax.plot(lrs[:n], self.median, color="tab:blue", lw=2.5, label="median")
        if bounds is not None:
            ax.axvspan(
                bounds.low,
                bounds.high,
                color="tab:green",
                alpha=0.08,
                label=f"search range {bounds.low:.2g}-{bounds.high:.2g}",
            )
        for (name, s), color in zip(
            self.suggestions.items(), ("C1", "C2", "C4", "C5", "C6"), strict=False
        ):
            if s.lr is not None:
                ax.axvline(s.lr, color=color, ls=":", lw=1.2, label=f"{name} {s.lr:.2g}")
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="C3", lw=2.5, label=f"chosen {self.suggestion:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel(f"learning rate ({self.lr_reference})")
        ax.set_ylabel("loss (smoothed)")
        ax.set_title(self._plot_title(), fontsize="medium")
        finite = [v for v in self.median if math.isfinite(v)]
        if finite:
            ax.set_ylim(
                min(finite) * 0.95 if min(finite) > 0 else None, max(finite[0], min(finite)) * 1.6
            )
        # beside the axes: up to a dozen entries would hide part of the curve
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.grid(alpha=0.3)
        return fig

    def _plot_title(self) -> str:
        seeds = f"{len(self.seeds)} seed{'s' if len(self.seeds) > 1 else ''}"
        if self.suggestion is None:
            return f"range test, {seeds}: no suggestion ({self.consensus.suggestion.reason})"
        spread = self.spread_decades
        agree = "" if spread is None else f", seeds within {spread:.2f} decades"
        return f"range test, {seeds}: chosen lr {self.suggestion:.3g}{agree}"


class LRBounds(ResultModel):
    """The LR range the schedule search draws from, and where it came from.

    Every LR here is the LR of a parameter whose multiplier is 1 (a param group trains at it
    times its ``lr_mult``).

    Attributes:
        low, high: the range ``lr`` is drawn from, log-uniformly.
        suggestion: the range test's suggestion.
        divergence_lr: where the range test diverged, or None.
        widened: True when the range test was not trusted and the range was widened.
        reason: one sentence for the report: what the range is and why.
    """

    model_config = ConfigDict(frozen=True)

    low: float
    high: float
    suggestion: float
    divergence_lr: float | None
    widened: bool = False
    reason: str = ""

    @property
    def warm_start_lr(self) -> float:
        """The LR of the first, fixed trials: the suggestion, or mid-range when widened."""
        if self.widened:
            return math.sqrt(self.low * self.high)
        return min(max(self.suggestion, self.low), self.high)


Status = Literal["completed", "pruned", "diverged", "lr_threshold"]


class TrainingRun(ResultModel):
    """What one run did: per-epoch records, per-step LRs of every group, how it ended."""

    epochs: list[dict[str, JsonFloat]] = Field(
        default_factory=list,
        description="per epoch: epoch (its index from 0), train_loss, val_loss and the "
        "dataset's metrics",
    )
    lr_steps: LRSteps = Field(
        default_factory=list,
        description="the LR of every param group at every step (run-length encoded in JSON)",
    )
    status: Status = "completed"
    reason: str | None = None
    resumed_from: int | None = Field(
        None,
        description="the index (from 0) of the first epoch this process trained, when resumed "
        "from a checkpoint",
    )

    def final(self, metric: str) -> float:
        return self.epochs[-1][metric] if self.epochs else math.nan


class RangeTestReport(LRFinderResult):
    """What ``lrtune find --json`` prints: the range test and the job it ran (as a spec)."""

    job: JobSpec = Field(description="the job the range test ran")


class FinderView(ResultModel):
    """A job's range test as the dashboard draws it: ``GET /v1/jobs/{id}/finder``.

    ``range_test`` holds the per-seed curves (``seeds``), the ``median`` and the band
    (``band_low``/``band_high``), every rule's suggestion (``suggestions``), the chosen one
    (``consensus.suggestion``, with the seeds' ``spread_decades``); ``bounds`` the LR range the
    search draws from. Both are null until the range test has finished; meanwhile
    ``steps_done``/``steps_total`` say how far it has got (from the job's progress). Here, not
    in :mod:`lrtune.api.schemas`, so that :meth:`lrtune.client.Client.finder` reads it without
    importing the server (which a folder named ``lrtune`` in the working directory can shadow).
    """

    job_id: str
    status: str = Field(description="the job's state")
    steps_done: int = Field(description="range-test steps done (all seeds' sweeps together)")
    steps_total: int = Field(description="range-test steps in all (0 until known)")
    chosen_rule: str = Field(
        "consensus", description="the rule whose suggestion the search used (consensus)"
    )
    range_test: LRFinderResult | None = Field(description="null until the range test finished")
    bounds: LRBounds | None = Field(description="null until the range test finished")
