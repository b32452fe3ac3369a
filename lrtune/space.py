"""The schedule search space: LR bounds from the range test, families, their hyperparameters.

Every family's peak LR is the one parameter ``lr``, drawn log-uniformly from the bounds the
range test gives (so TPE learns about the LR across families); each family's own parameters
carry its name as a prefix (``step.gamma``), which suits ``TPESampler(group=True)``. Lengths
(step sizes, milestones, T_max, T_0, cycle lengths) are fractions of the run, so one space
fits any epoch budget. Every sampled schedule runs for the job's step count, however small:
step sizes, milestones, restart periods, half-cycles and warm-ups last at least one epoch or
step, one-cycle's ramp lasts more than one step, and one-step jobs do not offer one-cycle.

**When the range test is trusted.** The bounds are ``[s / 10, min(10 s, d / 2)]`` around the
suggestion ``s``, below the divergence LR ``d``, when the range test is *confident*:

- the seeds agree: their suggestions span at most :data:`MAX_SEED_SPREAD_DECADES` (1.3)
  decades of LR (``result.consensus.spread_decades``; with one seed this test is skipped), and
- the curve shows a clear descent: the median smoothed loss falls, after fastai's trim of the
  first tenth, by at least :data:`MIN_DESCENT_NOISE_SDS` (0.5) times the batch-to-batch noise
  of the raw loss (its robust standard deviation, from the median absolute deviation of
  consecutive differences, median over seeds).

Otherwise the suggestion is noise on a flat stretch of the curve (e.g. a recurrent model
whose loss sits on a plateau for longer than the sweep), and the search is *widened* instead:
up to the divergence LR / :data:`DIVERGENCE_MARGIN` (the sweep's end if it never diverged),
and down to the curve's first clear descent, or, without one, :data:`WIDE_DECADES` (5)
decades below that top (never below the sweep's start). :class:`LRBounds` says which was done
and why. The thresholds separate 51 range tests of the built-in tasks (seed spread at most
0.97 decades, descent at least 1.27 noise SDs) from a GRU plateau task (descent at most 0.24
noise SDs); the measurements are in ``docs/unconfident_range_test.md``.

Example:
    >>> import optuna
    >>> bounds = LRBounds(low=0.01, high=0.5, suggestion=0.1, divergence_lr=1.0)
    >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    >>> trial = study.ask({"family": optuna.distributions.CategoricalDistribution(["cosine"])})
    >>> schedule, lr = suggest_schedule(trial, ["cosine"], bounds, epochs=10, steps_per_epoch=20)
    >>> schedule.family, 0.01 <= lr <= 0.5
    ('cosine', True)
    >>> LRBounds.model_validate(bounds.model_dump(mode="json")) == bounds, bounds.widened
    (True, False)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from lrtune.exceptions import InvalidInputError
from lrtune.result import LRBounds, LRFinderResult
from lrtune.schedules import ScheduleSpec, parse_schedule
from lrtune.suggestions import default_skips

# How far the search reaches around the range test's suggestion, and how close to divergence.
LR_DECADES_BELOW = 1.0
LR_DECADES_ABOVE = 1.0
DIVERGENCE_MARGIN = 2.0

MAX_SEED_SPREAD_DECADES = 1.3
"""Seeds whose suggestions span more decades than this make the range test unconfident."""

MIN_DESCENT_NOISE_SDS = 0.5
"""A clear descent: the median loss falls by at least this many SDs of the batch noise."""

WIDE_DECADES = 5.0
"""Without a clear descent, a widened search spans this many decades below its top."""

MIN_ONECYCLE_RAMP_STEPS = 1.5
"""Torch's OneCycleLR needs ``pct_start * total_steps > 1``; the space keeps this much."""

_MAD_TO_SD = 1.4826  # the median absolute deviation of a normal sample, times this, is its SD


def search_bounds(result: LRFinderResult, lr_scale: float = 1.0) -> LRBounds:
    """The LR range to search: around the suggestion when the range test is confident.

    Confident (see the module docstring): ``[s / 10, min(10 s, d / 2)]`` around the suggestion
    ``s``, below divergence ``d``. A decade each side covers where the best constant, peak or
    cyclic LR usually lies relative to a valley-type suggestion; staying a factor 2 under the LR
    where the sweep diverged keeps trials out of the region where training is known to blow up.
    Unconfident: widened, from the first clear descent (or :data:`WIDE_DECADES` below the top)
    up to ``d / 2`` (or the sweep's end). When the range test has no consensus suggestion, the
    smallest answer of the single-curve rules stands in (and the range is widened); with none,
    this raises. ``lr_scale`` converts the range test's group-0 LRs to base LRs (1 / group 0's
    multiplier).
    """
    suggestion = result.suggestion
    if suggestion is None:
        fallback = [s.lr for s in result.suggestions.values() if s.lr is not None]
        if not fallback:
            raise InvalidInputError(
                f"the range test found no usable LR: {result.consensus.suggestion.reason}"
            )
        suggestion = min(fallback)
    suggestion *= lr_scale
    divergence = None if result.divergence_lr is None else result.divergence_lr * lr_scale
    high = suggestion * 10**LR_DECADES_ABOVE
    if divergence is not None:
        high = min(high, divergence / DIVERGENCE_MARGIN)
    high = max(high, suggestion)
    low = suggestion / 10**LR_DECADES_BELOW
    descent = curve_descent(result)
    doubts = _doubts(result, descent)
    if not doubts:
        reason = (
            f"range test confident ({_confidence_words(result, descent)}): searching a decade "
            f"either side of the suggestion {suggestion:.3g}"
            + (f", below half the divergence LR {divergence:.3g}" if divergence else "")
        )
        return LRBounds(
            low=low,
            high=high,
            suggestion=suggestion,
            divergence_lr=divergence,
            widened=False,
            reason=reason,
        )
    old = LRBounds(low=low, high=high, suggestion=suggestion, divergence_lr=divergence)
    return _widened(result, lr_scale, old, descent, doubts)


@dataclass(frozen=True)
class CurveDescent:
    """How clearly a range test's median loss goes down, in units of the batch noise.

    Attributes:
        noise_sd: robust SD of the raw loss from one batch to the next (median over seeds).
        noise_sds: the fall of the median smoothed loss from its start (after the trim) to its
            lowest point, in ``noise_sd`` units (inf when the loss falls without any noise).
        first_clear_lr: the group-0 LR where the median first lies
            :data:`MIN_DESCENT_NOISE_SDS` noise SDs below its start; None without a clear descent.
    """

    noise_sd: float
    noise_sds: float
    first_clear_lr: float | None

    @property
    def clear(self) -> bool:
        return self.first_clear_lr is not None


def curve_descent(result: LRFinderResult) -> CurveDescent:
    """Measure how far and where the range test's median loss falls clearly below its start.

    The median curve is trimmed like the suggestion rules trim it (fastai's first tenth, see
    :func:`lrtune.suggestions.default_skips`); the noise is what a plateau's wiggles are made
    of, so a fall smaller than a fraction of it is no descent, whatever the loss's scale.

    Example:
        >>> from lrtune.result import RangeTestConfig, SeedCurve
        >>> lrs = np.geomspace(1e-5, 1, 60)
        >>> config = RangeTestConfig(start_lr=1e-5, end_lr=1.0, num_iter=60)
        >>> wiggle = 0.05 * np.sin(np.arange(60) * 2.0)
        >>> falling = list(2 - np.clip(np.log10(lrs) + 3, 0, None) + wiggle)
        >>> def descent_of(losses):
        ...     curve = SeedCurve(raw=list(losses), smoothed=list(losses), diverged_at=None)
        ...     return curve_descent(LRFinderResult.from_curves(lrs, [curve], [1.0], config))
        >>> descent = descent_of(falling)
        >>> descent.clear, round(descent.noise_sds), f"{descent.first_clear_lr:.0e}"
        (True, 42, '1e-03')
        >>> descent_of(2 + wiggle).clear  # a plateau: wiggles only
        False
    """
    median = np.asarray(result.median, dtype=float)
    skip_start, skip_end = default_skips(len(median))
    kept = median[skip_start : len(median) - skip_end]
    noise = float(np.median([_batch_noise_sd(curve.raw) for curve in result.seeds]))
    if len(kept) < 2 or not np.all(np.isfinite(kept)):
        return CurveDescent(noise, 0.0, None)
    fall = float(kept[0] - kept.min())
    noise_sds = fall / noise if noise > 0 else (math.inf if fall > 0 else 0.0)
    if noise_sds < MIN_DESCENT_NOISE_SDS:
        return CurveDescent(noise, noise_sds, None)
    first = int(np.argmax(kept <= kept[0] - MIN_DESCENT_NOISE_SDS * noise))
    return CurveDescent(noise, noise_sds, result.lrs[skip_start + first])


def _batch_noise_sd(raw: Sequence[float]) -> float:
    """Robust SD of one batch's loss around the trend: MAD of consecutive differences."""
    losses = np.asarray(raw, dtype=float)
    losses = losses[np.isfinite(losses)]
    if len(losses) < 3:
        return 0.0
    steps = np.diff(losses)
    return float(_MAD_TO_SD * np.median(np.abs(steps - np.median(steps))) / math.sqrt(2))


def _doubts(result: LRFinderResult, descent: CurveDescent) -> list[str]:
    """Why the range test's suggestion is not to be trusted; empty when it is."""
    doubts = []
    if result.suggestion is None:
        doubts.append(f"no consensus over seeds ({result.consensus.suggestion.reason})")
    spread = result.consensus.spread_decades
    if spread is not None and spread > MAX_SEED_SPREAD_DECADES:
        doubts.append(f"seeds disagree by {spread:.2f} decades (> {MAX_SEED_SPREAD_DECADES})")
    if not descent.clear:
        doubts.append(
            f"the loss never falls clearly ({descent.noise_sds:.2f} batch-noise SDs "
            f"< {MIN_DESCENT_NOISE_SDS})"
        )
    return doubts


def _confidence_words(result: LRFinderResult, descent: CurveDescent) -> str:
    spread = result.consensus.spread_decades
    agree = "one seed" if spread is None else f"seeds within {spread:.2f} decades"
    return f"{agree}, loss falls {descent.noise_sds:.1f} batch-noise SDs"


def _widened(
    result: LRFinderResult,
    lr_scale: float,
    around: LRBounds,
    descent: CurveDescent,
    doubts: list[str],
) -> LRBounds:
    """From the first clear descent (or WIDE_DECADES below the top) up to d / 2 or the end."""
    sweep_start, sweep_end = result.lrs[0] * lr_scale, result.lrs[-1] * lr_scale
    if around.divergence_lr is not None:
        top, top_words = around.divergence_lr / DIVERGENCE_MARGIN, "half the divergence LR"
    else:
        top, top_words = sweep_end, "the sweep's end"
    if descent.first_clear_lr is not None:
        low = min(descent.first_clear_lr * lr_scale, around.low)
        low_words = "the loss's first clear descent"
    else:
        low = max(sweep_start, top / 10**WIDE_DECADES)
        low_words = f"{math.log10(top / low):.3g} decades below the top"
    high = max(top, around.high)
    reason = (
        f"range test not trusted ({'; '.join(doubts)}): searching {low:.3g} .. {high:.3g}, "
        f"from {low_words} up to {top_words}, instead of {around.low:.3g} .. "
        f"{around.high:.3g} around the suggestion {around.suggestion:.3g}"
    )
    return LRBounds(
        low=low,
        high=high,
        suggestion=around.suggestion,
        divergence_lr=around.divergence_lr,
        widened=True,
        reason=reason,
    )


def suggest_schedule(
    trial: optuna.Trial,
    families: Sequence[str],
    bounds: LRBounds,
    epochs: int,
    steps_per_epoch: int,
    warmup: bool = True,
    *,
    lowest_multiplier: float = 1.0,
) -> tuple[ScheduleSpec, float]:
    """Sample a family, its hyperparameters, a warm-up and the peak LR; return (spec, lr).

    Only families that can run for ``epochs * steps_per_epoch`` steps are offered (see
    :func:`runnable_families`), and every sampled schedule runs for that many steps.

    The cosine families' ``eta_min`` is one absolute floor for every param group (torch has no
    per-group floor), so it is drawn below the LR of the group with the ``lowest_multiplier``:
    no group then anneals *up* to a floor above its own LR.

    Raises:
        ValueError: none of ``families`` can run for that few steps.
    """
    choices = runnable_families(families, epochs * steps_per_epoch)
    if not choices:
        raise InvalidInputError(
            f"none of the families {list(families)} can run for {epochs * steps_per_epoch} "
            "step(s): train for more epochs or use smaller batches"
        )
    family = trial.suggest_categorical("family", choices)
    lr = trial.suggest_float("lr", bounds.low, bounds.high, log=True)
    warmup_epochs = 0
    if family != "onecycle" and _searches_warmup(warmup, epochs):
        warmup_epochs = trial.suggest_int("warmup_epochs", 0, max(1, epochs // 5))
    main_epochs = epochs - warmup_epochs
    params = _FAMILY_PARAMS[family](trial, lr, main_epochs, steps_per_epoch)
    if "eta_min" in params:
        params["eta_min"] *= min(1.0, lowest_multiplier)
    if warmup_epochs:
        steps = warmup_epochs * (steps_per_epoch if family == "cyclic" else 1)
        params["warmup"] = {"steps": steps, "start_factor": 0.1}
    return parse_schedule({"family": family, **params}), lr


def runnable_families(families: Sequence[str], total_steps: int) -> list[str]:
    """``families`` less those that cannot run for ``total_steps`` optimizer steps.

    Only one-cycle has a minimum: its ramp must last more than one step, so it needs two.

    >>> runnable_families(["onecycle", "cosine"], 1), runnable_families(["onecycle"], 2)
    (['cosine'], ['onecycle'])
    """
    return [f for f in families if f != "onecycle" or total_steps >= 2]


def warm_starts(
    families: Sequence[str],
    bounds: LRBounds,
    epochs: int,
    warmup: bool = True,
    *,
    steps_per_epoch: int | None = None,
) -> list[dict[str, Any]]:
    """The obvious answers, tried first: one-cycle, cosine and constant at the suggestion.

    When the bounds were widened the suggestion is not trusted, and they start mid-range
    instead (:attr:`LRBounds.warm_start_lr`). With ``steps_per_epoch``, families that cannot
    run for the job's step count are left out (one-cycle's fixed ``pct_start`` is made
    runnable by :func:`suggest_schedule` in any case).
    """
    lr = bounds.warm_start_lr
    no_warmup = {"warmup_epochs": 0} if _searches_warmup(warmup, epochs) else {}
    candidates = [
        {
            "family": "onecycle",
            "lr": lr,
            "onecycle.pct_start": 0.3,
            "onecycle.div_factor": 25.0,
            "onecycle.final_div_factor": 1e4,
        },
        {
            "family": "cosine",
            "lr": lr,
            **no_warmup,
            "cosine.t_max_frac": 1.0,
            "cosine.eta_min_ratio": 1e-3,
        },
        {"family": "constant", "lr": lr, **no_warmup},
    ]
    if steps_per_epoch is not None:
        families = runnable_families(families, epochs * steps_per_epoch)
    return [c for c in candidates if c["family"] in families]


def _searches_warmup(warmup: bool, epochs: int) -> bool:
    return warmup and epochs >= 4


def _in_epochs(fraction: float, epochs: int) -> int:
    return min(max(1, round(fraction * epochs)), max(1, epochs))


def _constant(trial: optuna.Trial, lr: float, epochs: int, spe: int) -> dict[str, Any]:
    return {}


def _step(trial: optuna.Trial, lr: float, epochs: int, spe: int) -> dict[str, Any]:
    return {
        "step_size": _in_epochs(trial.suggest_float("step.step_frac", 0.1, 0.6), epochs),
        "gamma": trial.suggest_float("step.gamma", 0.05, 0.7, log=True),
    }


def _multistep(trial: optuna.Trial, lr: float, epochs: int, spe: int) -> dict[str, Any]:
    first = trial.suggest_float("multistep.first", 0.3, 0.7)
    second = first + trial.suggest_float("multistep.gap", 0.1, 0.4)
    milestones = sorted({_in_epochs(first, epochs), _in_epochs(min(second, 0.95), epochs)})
    return {
        "milestones": milestones,
        "gamma": trial.suggest_float("multistep.gamma", 0.05, 0.5, log=True),
    }


def _exponential(trial: optuna.Trial, lr: float, epochs: int, spe: int) -> dict[str, Any]:
    final_ratio = trial.suggest_float("exponential.final_ratio", 1e-3, 0.5, log=True)
    return {"gamma": final_ratio ** (1 / max(1, epochs))}


def _time_decay(trial: optuna.Trial, lr: float, epochs: int, spe: int) -> dict[str, Any]:
    return {"decay": trial.suggest_float("time_decay.decay", 0.01, 2.0, log=True)}


def _cosine(trial: optuna.Trial, lr: float, epochs: int, spe: int) -> dict[str, Any]:
    return {
        "T_max": _in_epochs(trial.suggest_float("cosine.t_max_frac", 0.5, 1.0), epochs),
        "eta_min": lr * trial.suggest_float("cosine.eta_min_ratio", 1e-4, 0.1, log=True),
    }


def _cosine_warm_restarts(trial: optuna.Trial, lr: float, epochs: int, spe: int) -> dict[str, Any]:
    return {
        "T_0": _in_epochs(trial.suggest_float("cosine_warm_restarts.t0_frac", 0.1, 0.5), epochs),
        "T_mult": trial.suggest_int("cosine_warm_restarts.T_mult", 1, 2),
        "eta_min": lr
        * trial.suggest_float("cosine_warm_restarts.eta_min_ratio", 1e-4, 0.1, log=True),
    }


def _onecycle(trial: optuna.Trial, lr: float, epochs: int, spe: int) -> dict[str, Any]:
    return {
        "max_lr": lr,
        "pct_start": _runnable_pct_start(
            trial.suggest_float("onecycle.pct_start", 0.1, 0.5), epochs * spe
        ),
        "div_factor": trial.suggest_float("onecycle.div_factor", 5.0, 100.0, log=True),
        "final_div_factor": trial.suggest_float("onecycle.final_div_factor", 10.0, 1e5, log=True),
    }


def _runnable_pct_start(pct_start: float, total_steps: int) -> float:
    """Lengthen a ramp of fewer than MIN_ONECYCLE_RAMP_STEPS steps (warm starts fix 0.3)."""
    return max(pct_start, min(MIN_ONECYCLE_RAMP_STEPS / total_steps, 0.9))


def _cyclic(trial: optuna.Trial, lr: float, epochs: int, spe: int) -> dict[str, Any]:
    base_ratio = trial.suggest_float("cyclic.base_ratio", 0.01, 0.5, log=True)
    cycle_frac = trial.suggest_float("cyclic.half_cycle_frac", 0.05, 0.5)
    return {
        "base_lr": lr * base_ratio,
        "max_lr": lr,
        "step_size_up": max(1, round(cycle_frac * epochs * spe)),
        "mode": trial.suggest_categorical("cyclic.mode", ["triangular", "triangular2"]),
    }


def _plateau(trial: optuna.Trial, lr: float, epochs: int, spe: int) -> dict[str, Any]:
    return {
        "factor": trial.suggest_float("plateau.factor", 0.1, 0.7),
        "patience": trial.suggest_int("plateau.patience", 0, max(0, min(5, epochs // 3))),
    }


_FAMILY_PARAMS = {
    "constant": _constant,
    "step": _step,
    "multistep": _multistep,
    "exponential": _exponential,
    "time_decay": _time_decay,
    "cosine": _cosine,
    "cosine_warm_restarts": _cosine_warm_restarts,
    "onecycle": _onecycle,
    "cyclic": _cyclic,
    "plateau": _plateau,
}


def schedule_params(
    schedule: ScheduleSpec,
    lr: float,
    *,
    source_epochs: int,
    source_steps_per_epoch: int,
    bounds: LRBounds,
    epochs: int,
    steps_per_epoch: int,
    warmup: bool = True,
) -> tuple[dict[str, Any], str | None]:
    """A schedule another job trained, as fixed parameters of this search space; and why its
    LR was clipped (None if it was not).

    The inverse of :func:`suggest_schedule`: lengths become fractions of the run that trained
    it (``source_epochs`` of ``source_steps_per_epoch`` steps), so the same shape fits this
    job's ``epochs``; each value is clipped into the range this space draws it from, and the
    LR into ``bounds``. A parameter this space does not draw (a warm-up when it searches none)
    is left out.

    >>> bounds = LRBounds(low=0.01, high=0.5, suggestion=0.1, divergence_lr=1.0)
    >>> cosine = parse_schedule({"family": "cosine", "T_max": 20, "eta_min": 0.002})
    >>> params, clipped = schedule_params(cosine, 2.0, source_epochs=20,
    ...     source_steps_per_epoch=10, bounds=bounds, epochs=5, steps_per_epoch=4)
    >>> params["family"], params["lr"], params["cosine.t_max_frac"], clipped
    ('cosine', 0.5, 1.0, "lr 2 clipped to 0.5: the top of this job's bounds 0.01 .. 0.5")
    """
    family = schedule.family
    warm = schedule.warmup
    source_warmup = 0.0
    if warm is not None:
        source_warmup = warm.steps / (source_steps_per_epoch if family == "cyclic" else 1)
    source_main = max(1.0, source_epochs - source_warmup)
    wanted = _inverse_params(schedule, lr, source_main, source_steps_per_epoch)
    params: dict[str, Any] = {"family": family}
    main_epochs = epochs
    if family != "onecycle" and _searches_warmup(warmup, epochs):
        top = max(1, epochs // 5)
        params["warmup_epochs"] = min(top, max(0, round(source_warmup / source_epochs * epochs)))
        main_epochs = epochs - params["warmup_epochs"]
    reader = _SpaceReader()
    _FAMILY_PARAMS[family](reader, lr, main_epochs, steps_per_epoch)  # type: ignore[arg-type]
    for name, space in reader.ranges.items():
        if name in wanted:
            params[name] = _clip(wanted[name], space)
    clipped_lr = min(max(lr, bounds.low), bounds.high)
    params["lr"] = clipped_lr
    clipped = None
    if clipped_lr != lr:
        end = "top" if lr > bounds.high else "bottom"
        clipped = (
            f"lr {lr:.4g} clipped to {clipped_lr:.4g}: the {end} of this job's bounds "
            f"{bounds.low:.4g} .. {bounds.high:.4g}"
        )
    return params, clipped


def _inverse_params(
    schedule: ScheduleSpec, lr: float, main_epochs: float, steps_per_epoch: int
) -> dict[str, Any]:
    """The search parameters :data:`_FAMILY_PARAMS` would turn into ``schedule``."""
    s: Any = schedule
    if s.family == "step":
        return {"step.step_frac": s.step_size / main_epochs, "step.gamma": s.gamma}
    if s.family == "multistep":
        first, *rest = s.milestones
        gap = (rest[0] - first) / main_epochs if rest else 0.1
        return {
            "multistep.first": first / main_epochs,
            "multistep.gap": gap,
            "multistep.gamma": s.gamma,
        }
    if s.family == "exponential":
        return {"exponential.final_ratio": s.gamma ** max(1.0, main_epochs)}
    if s.family == "time_decay":
        return {"time_decay.decay": s.decay}
    if s.family == "cosine":
        return {"cosine.t_max_frac": s.T_max / main_epochs, "cosine.eta_min_ratio": s.eta_min / lr}
    if s.family == "cosine_warm_restarts":
        return {
            "cosine_warm_restarts.t0_frac": s.T_0 / main_epochs,
            "cosine_warm_restarts.T_mult": s.T_mult,
            "cosine_warm_restarts.eta_min_ratio": s.eta_min / lr,
        }
    if s.family == "onecycle":
        return {
            "onecycle.pct_start": s.pct_start,
            "onecycle.div_factor": s.div_factor,
            "onecycle.final_div_factor": s.final_div_factor,
        }
    if s.family == "cyclic":
        return {
            "cyclic.base_ratio": s.base_lr / s.max_lr,
            "cyclic.half_cycle_frac": s.step_size_up / (main_epochs * steps_per_epoch),
            "cyclic.mode": s.mode,
        }
    if s.family == "plateau":
        return {"plateau.factor": s.factor, "plateau.patience": s.patience}
    return {}


Space = tuple[float, float] | tuple[int, int] | list[Any]


class _SpaceReader:
    """Stands in for a trial to read a family's space: each ``suggest_*`` records its range."""

    def __init__(self) -> None:
        self.ranges: dict[str, Space] = {}

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        self.ranges[name] = (float(low), float(high))
        return low

    def suggest_int(self, name: str, low: int, high: int) -> int:
        self.ranges[name] = (int(low), int(high))
        return low

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.ranges[name] = list(choices)
        return choices[0]


def _clip(value: Any, space: Space) -> Any:
    if isinstance(space, list):
        return value if value in space else space[0]
    low, high = space
    if isinstance(low, int) and isinstance(high, int):
        return int(min(max(round(value), low), high))
    return float(min(max(float(value), low), high))
