"""The outcome of a range test: curves per seed, their median and band, and the suggestions.

Everything in it serialises to plain JSON-safe dicts (``to_dict``/``from_dict``), so a worker
can store it and a service can serve it; ``plot()`` draws it with matplotlib, on demand only.

Example:
    >>> import numpy as np
    >>> lrs = np.geomspace(1e-4, 1, 50)
    >>> losses = list((np.log10(lrs) + 1.5) ** 2 + 1)
    >>> result = LRFinderResult.from_curves(lrs, [SeedCurve(losses, losses, None, [])], [1.0], {})
    >>> 1e-4 < result.suggestion < 10**-1.5  # on the way down, left of the minimum
    True
    >>> LRFinderResult.from_dict(result.to_dict()).suggestion == result.suggestion
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lrtune.suggestions import Consensus, Suggestion, consensus, suggest_all

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass
class SeedCurve:
    """One sweep: raw and smoothed loss per step, where it diverged, validation points."""

    raw: list[float]
    smoothed: list[float]
    diverged_at: int | None
    val: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "raw": _json_floats(self.raw),
            "smoothed": _json_floats(self.smoothed),
            "diverged_at": self.diverged_at,
            "val": [[step, _json_float(loss)] for step, loss in self.val],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedCurve:
        return cls(
            raw=_floats(data["raw"]),
            smoothed=_floats(data["smoothed"]),
            diverged_at=data["diverged_at"],
            val=[(int(step), _float(loss)) for step, loss in data.get("val", [])],
        )


@dataclass
class LRFinderResult:
    """Loss-vs-LR curves and the suggested LR.

    Attributes:
        lrs: group 0's LR at each recorded step.
        seeds: one :class:`SeedCurve` per sweep.
        median: per step, the median of the seeds' smoothed losses, a diverged seed counting as
            +inf; it ends where half the seeds have diverged.
        band_low, band_high: the 25th and 75th percentiles on the same terms (NaN = unbounded).
        suggestions: every single-curve rule applied to the median curve.
        consensus: the default rule: the median of per-seed valley suggestions, with its spread.
        group_lr_ratios: each param group's LR relative to group 0 during the sweep.
        config: the options the test ran with.
    """

    lrs: list[float]
    seeds: list[SeedCurve]
    median: list[float]
    band_low: list[float]
    band_high: list[float]
    suggestions: dict[str, Suggestion]
    consensus: Consensus
    group_lr_ratios: list[float]
    config: dict[str, Any]

    @classmethod
    def from_curves(
        cls,
        lrs: Sequence[float],
        curves: list[SeedCurve],
        group_lr_ratios: Sequence[float],
        config: dict[str, Any],
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
            config=dict(config),
        )

    @property
    def suggestion(self) -> float | None:
        """The suggested LR for param group 0 (the consensus rule), or None with a reason."""
        return self.consensus.suggestion.lr

    @property
    def confidence(self) -> float | None:
        """Spread of the per-seed suggestions in decades of LR: 0 means every seed agrees."""
        return self.consensus.spread_decades

    @property
    def group_suggestions(self) -> list[float] | None:
        """The suggested LR for every param group, keeping their ratios."""
        lr = self.suggestion
        return None if lr is None else [lr * r for r in self.group_lr_ratios]

    @property
    def diverged_at(self) -> int | None:
        """The step by which half the seeds had diverged (the one seed's, with one), or None."""
        steps = sorted(c.diverged_at for c in self.seeds if c.diverged_at is not None)
        needed = math.ceil(len(self.seeds) / 2)
        return steps[needed - 1] if len(steps) >= needed else None

    @property
    def divergence_lr(self) -> float | None:
        """Group 0's LR where the median curve diverged."""
        step = self.diverged_at
        return None if step is None else self.lrs[step]

    def to_dict(self) -> dict[str, Any]:
        return {
            "lrs": self.lrs,
            "seeds": [c.to_dict() for c in self.seeds],
            "median": _json_floats(self.median),
            "band_low": _json_floats(self.band_low),
            "band_high": _json_floats(self.band_high),
            "suggestions": {name: s.to_dict() for name, s in self.suggestions.items()},
            "consensus": self.consensus.to_dict(),
            "suggestion": self.suggestion,
            "confidence": self.confidence,
            "diverged_at": self.diverged_at,
            "group_lr_ratios": self.group_lr_ratios,
            "config": self.config,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LRFinderResult:
        return cls(
            lrs=[float(x) for x in data["lrs"]],
            seeds=[SeedCurve.from_dict(c) for c in data["seeds"]],
            median=_floats(data["median"]),
            band_low=_floats(data["band_low"]),
            band_high=_floats(data["band_high"]),
            suggestions={k: Suggestion.from_dict(v) for k, v in data["suggestions"].items()},
            consensus=Consensus.from_dict(data["consensus"]),
            group_lr_ratios=[float(x) for x in data["group_lr_ratios"]],
            config=dict(data["config"]),
        )

    def summary(self) -> str:
        """A few lines for a terminal: the suggestion, its confidence, the other rules."""
        chosen = self.consensus.suggestion
        if chosen.lr is None:
            lines = [f"no suggestion: {chosen.reason}"]
        else:
            spread = self.confidence
            conf = "n/a (one seed)" if spread is None else f"seeds within {spread:.2f} decades"
            lines = [
                f"suggested lr: {chosen.lr:.3g}  (confidence: {conf}, {self.consensus.agreement})"
            ]
        for name, s in self.suggestions.items():
            lines.append(
                f"  {name:<9} {s.lr:.3g}" if s.lr is not None else f"  {name:<9} - ({s.reason})"
            )
        if self.divergence_lr is not None:
            lines.append(f"  diverged at lr {self.divergence_lr:.3g} (step {self.diverged_at})")
        return "\n".join(lines)

    def plot(self, ax: Axes | None = None) -> Figure:
        """Loss vs LR on a log axis: seeds faint, median bold, band shaded, suggestions marked."""
        from matplotlib.figure import Figure

        if ax is None:
            fig = Figure(figsize=(7, 4.5), layout="constrained")
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        lrs = np.asarray(self.lrs)
        multi = len(self.seeds) > 1
        for curve in self.seeds:
            ax.plot(
                lrs[: len(curve.smoothed)],
                curve.smoothed,
                color="tab:blue",
                alpha=0.25 if multi else 1.0,
                lw=1,
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
        for (name, s), color in zip(
            self.suggestions.items(), ("C1", "C2", "C4", "C5"), strict=False
        ):
            if s.lr is not None:
                ax.axvline(s.lr, color=color, ls=":", lw=1, label=f"{name} {s.lr:.2g}")
        if self.suggestion is not None:
            ax.axvline(self.suggestion, color="C3", lw=2, label=f"suggested {self.suggestion:.2g}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (param group 0)")
        ax.set_ylabel("loss (smoothed)")
        finite = [v for v in self.median if math.isfinite(v)]
        if finite:
            ax.set_ylim(
                min(finite) * 0.95 if min(finite) > 0 else None, max(finite[0], min(finite)) * 1.6
            )
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        return fig


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _json_floats(values: Sequence[float]) -> list[float | None]:
    return [_json_float(float(v)) for v in values]


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _floats(values: Sequence[float | None]) -> list[float]:
    return [_float(v) for v in values]
