"""The schedule search space: LR bounds from the range test, families, their hyperparameters.

Every family's peak LR is the one parameter ``lr``, drawn log-uniformly from the bounds the
range test gives (so TPE learns about the LR across families); each family's own parameters
carry its name as a prefix (``step.gamma``), which suits ``TPESampler(group=True)``. Lengths
(step sizes, milestones, T_max, T_0, cycle lengths) are fractions of the run, so one space
fits any epoch budget.

Example:
    >>> import optuna
    >>> bounds = LRBounds(low=0.01, high=0.5, suggestion=0.1, divergence_lr=1.0)
    >>> study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    >>> trial = study.ask({"family": optuna.distributions.CategoricalDistribution(["cosine"])})
    >>> schedule, lr = suggest_schedule(trial, ["cosine"], bounds, epochs=10, steps_per_epoch=20)
    >>> schedule.family, 0.01 <= lr <= 0.5
    ('cosine', True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from lrtune.result import LRFinderResult
from lrtune.schedules import ScheduleSpec, parse_schedule

# How far the search reaches around the range test's suggestion, and how close to divergence.
LR_DECADES_BELOW = 1.0
LR_DECADES_ABOVE = 1.0
DIVERGENCE_MARGIN = 2.0


@dataclass(frozen=True)
class LRBounds:
    """The LR range the search draws from, and where it came from."""

    low: float
    high: float
    suggestion: float
    divergence_lr: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LRBounds:
        return cls(**data)


def search_bounds(result: LRFinderResult, lr_scale: float = 1.0) -> LRBounds:
    """``[s / 10, min(10 s, d / 2)]`` around the suggestion ``s``, below divergence ``d``.

    A decade each side covers where the best constant, peak or cyclic LR usually lies relative
    to a valley-type suggestion; staying a factor 2 under the LR where the sweep diverged keeps
    trials out of the region where training is known to blow up. When the range test has no
    suggestion, the smallest answer of the single-curve rules stands in; with none, this raises.
    ``lr_scale`` converts the range test's group-0 LRs to base LRs (1 / group 0's multiplier).
    """
    suggestion = result.suggestion
    if suggestion is None:
        fallback = [s.lr for s in result.suggestions.values() if s.lr is not None]
        if not fallback:
            raise ValueError(
                f"the range test found no usable LR: {result.consensus.suggestion.reason}"
            )
        suggestion = min(fallback)
    suggestion *= lr_scale
    divergence = None if result.divergence_lr is None else result.divergence_lr * lr_scale
    high = suggestion * 10**LR_DECADES_ABOVE
    if divergence is not None:
        high = min(high, divergence / DIVERGENCE_MARGIN)
    high = max(high, suggestion)
    return LRBounds(suggestion / 10**LR_DECADES_BELOW, high, suggestion, divergence)


def suggest_schedule(
    trial: optuna.Trial,
    families: Sequence[str],
    bounds: LRBounds,
    epochs: int,
    steps_per_epoch: int,
    warmup: bool = True,
) -> tuple[ScheduleSpec, float]:
    """Sample a family, its hyperparameters, a warm-up and the peak LR; return (spec, lr)."""
    family = trial.suggest_categorical("family", list(families))
    lr = trial.suggest_float("lr", bounds.low, bounds.high, log=True)
    warmup_epochs = 0
    if family != "onecycle" and _searches_warmup(warmup, epochs):
        warmup_epochs = trial.suggest_int("warmup_epochs", 0, max(1, epochs // 5))
    main_epochs = epochs - warmup_epochs
    params = _FAMILY_PARAMS[family](trial, lr, main_epochs, steps_per_epoch)
    if warmup_epochs:
        steps = warmup_epochs * (steps_per_epoch if family == "cyclic" else 1)
        params["warmup"] = {"steps": steps, "start_factor": 0.1}
    return parse_schedule({"family": family, **params}), lr


def warm_starts(
    families: Sequence[str], bounds: LRBounds, epochs: int, warmup: bool = True
) -> list[dict[str, Any]]:
    """The obvious answers, tried first: one-cycle, cosine and constant at the suggestion."""
    lr = min(max(bounds.suggestion, bounds.low), bounds.high)
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
        "pct_start": trial.suggest_float("onecycle.pct_start", 0.1, 0.5),
        "div_factor": trial.suggest_float("onecycle.div_factor", 5.0, 100.0, log=True),
        "final_div_factor": trial.suggest_float("onecycle.final_div_factor", 10.0, 1e5, log=True),
    }


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
