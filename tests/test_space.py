"""Tests of lrtune.space: LR bounds from the range test, and a search space that always runs."""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
import optuna
import pytest

from lrtune.result import LRFinderResult, RangeTestConfig, SeedCurve
from lrtune.schedules import FAMILIES, preview
from lrtune.space import (
    MAX_SEED_SPREAD_DECADES,
    LRBounds,
    curve_descent,
    search_bounds,
    suggest_schedule,
    warm_starts,
)
from lrtune.spec import JobSpec
from lrtune.training import TrainingSetup
from lrtune.tuner import range_test, tune

optuna.logging.set_verbosity(optuna.logging.WARNING)


def old_rule(result: LRFinderResult, lr_scale: float = 1.0) -> tuple[float, float]:
    """The bounds before unconfident range tests were widened: [s/10, min(10 s, d/2)]."""
    s = result.suggestion * lr_scale
    high = 10 * s if result.divergence_lr is None else min(10 * s, result.divergence_lr / 2)
    return s / 10, max(high, s)


def smoothed(raw: np.ndarray, beta: float = 0.98) -> list[float]:
    """The range test's smoothing: a debiased exponential moving average."""
    average, out = 0.0, []
    for step, loss in enumerate(raw, start=1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**step))
    return out


def sweep(per_seed_raw: list[np.ndarray], lrs: np.ndarray, diverged_at: int | None = None):
    curves = [
        SeedCurve(raw=list(raw), smoothed=smoothed(raw), diverged_at=diverged_at)
        for raw in per_seed_raw
    ]
    config = RangeTestConfig(start_lr=float(lrs[0]), end_lr=float(lrs[-1]), num_iter=len(lrs))
    return LRFinderResult.from_curves(lrs, curves, [1.0], config)


# --- LRBounds ------------------------------------------------------------------------------------


def test_bounds_round_trip_and_bounds_stored_before_widening_still_load() -> None:
    widened = LRBounds(
        low=1e-4,
        high=10.0,
        suggestion=2e-4,
        divergence_lr=None,
        widened=True,
        reason="seeds disagree",
    )
    assert LRBounds.model_validate(widened.model_dump(mode="json")) == widened

    stored_before = {"low": 0.01, "high": 0.5, "suggestion": 0.1, "divergence_lr": 1.0}
    loaded = LRBounds.model_validate(stored_before)
    assert (loaded.low, loaded.high, loaded.widened, loaded.reason) == (0.01, 0.5, False, "")
    assert loaded.warm_start_lr == 0.1


# --- when the range test is trusted, and when not ------------------------------------------------

CONFIDENT_JOBS = [
    # (dataset, model, optimizer, batch size): the built-in tasks whose range tests have the
    # largest seed spread and the smallest descent measured (docs/unconfident_range_test.md).
    ("digits", {"name": "mlp", "params": {"hidden": [128]}}, "sgd", 64),
    ("breast_cancer", {"name": "mlp"}, "sgd", 64),
    ("diabetes", {"name": "mlp"}, "sgd", 32),
    ("wine", {"name": "mlp"}, "adamw", 64),
]


@pytest.mark.parametrize(("dataset", "model", "optimizer", "batch_size"), CONFIDENT_JOBS)
def test_confident_builtin_range_tests_keep_the_bounds_around_the_suggestion(
    dataset: str, model: dict[str, Any], optimizer: str, batch_size: int
) -> None:
    spec = JobSpec.model_validate(
        {
            "model": model,
            "dataset": {"name": dataset},
            "optimizer": {"name": optimizer},
            "batch_size": batch_size,
        }
    )
    result = range_test(TrainingSetup.from_spec(spec), progress=False)

    bounds = search_bounds(result)

    assert not bounds.widened
    assert (bounds.low, bounds.high) == pytest.approx(old_rule(result), rel=1e-12)
    assert "confident" in bounds.reason
    assert bounds.warm_start_lr == pytest.approx(result.suggestion)


LRS = np.geomspace(1e-6, 1.0, 100)


def noise(seed: int) -> np.ndarray:
    """Batch-to-batch noise of the raw loss."""
    return 0.05 * np.random.default_rng(seed).standard_normal(len(LRS))


def test_a_plateau_where_the_seeds_agree_is_widened_for_want_of_a_descent() -> None:
    # Every seed's noise is the same, so the seeds agree on a point of a flat curve.
    flat = [0.69 + noise(0) for _ in range(4)]
    result = sweep(flat, LRS)
    assert result.consensus.spread_decades == 0.0

    bounds = search_bounds(result)

    assert bounds.widened and "never falls clearly" in bounds.reason
    # No divergence: up to the sweep's end, five decades down.
    assert (bounds.low, bounds.high) == pytest.approx((1e-5, 1.0))
    assert bounds.warm_start_lr == pytest.approx(math.sqrt(1e-5))


def test_seeds_that_disagree_widen_from_the_first_clear_descent_to_half_the_divergence() -> None:
    # Two seeds learn around 1e-5, two around 1e-2: three decades apart.
    def learning_at(lr: float) -> np.ndarray:
        return 1.0 - 0.5 * np.clip(np.log10(LRS / lr) + 0.5, 0, 1)

    losses = [learning_at(lr) + noise(seed) for seed, lr in enumerate([1e-5, 1e-5, 1e-2, 1e-2])]
    result = sweep(losses, LRS)
    assert result.consensus.spread_decades > MAX_SEED_SPREAD_DECADES
    descent = curve_descent(result)

    bounds = search_bounds(result, lr_scale=2.0)

    assert bounds.widened and "seeds disagree" in bounds.reason
    assert 10**-5.5 <= descent.first_clear_lr <= 1e-4  # where the early seeds start to fall
    assert bounds.low == pytest.approx(min(2 * descent.first_clear_lr, bounds.suggestion / 10))
    assert bounds.high == pytest.approx(2.0)  # the sweep's end, in base LRs
    low, high = old_rule(result, lr_scale=2.0)
    assert bounds.low <= low and high <= bounds.high


def test_a_diverged_sweep_is_widened_up_to_half_the_divergence_lr() -> None:
    result = sweep([0.69 + noise(seed)[:80] for seed in range(4)], LRS, diverged_at=79)

    bounds = search_bounds(result)

    assert bounds.widened
    assert bounds.high == pytest.approx(LRS[79] / 2)
    assert bounds.low == pytest.approx(LRS[0])  # five decades down would pass the sweep start
    assert "half the divergence LR" in bounds.reason


# --- a search space that runs for the job's step count -------------------------------------------


@pytest.mark.parametrize("epochs", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("steps_per_epoch", [1, 2, 3])
def test_every_sampled_schedule_runs_for_tiny_step_counts(
    epochs: int, steps_per_epoch: int
) -> None:
    bounds = LRBounds(low=1e-3, high=1e-1, suggestion=1e-2, divergence_lr=None)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=epochs))
    for start in warm_starts(FAMILIES, bounds, epochs, steps_per_epoch=steps_per_epoch):
        study.enqueue_trial(start)
    for _ in range(60):
        trial = study.ask()
        schedule, lr = suggest_schedule(trial, FAMILIES, bounds, epochs, steps_per_epoch)
        metrics = [1.0] * epochs if schedule.family == "plateau" else None
        lrs = preview(schedule, [lr], steps_per_epoch, epochs, metrics=metrics)
        assert np.all(np.isfinite(lrs)) and np.all(lrs > 0), schedule
        study.tell(trial, 0.0)


@pytest.mark.parametrize("family", ["cosine", "cosine_warm_restarts"])
def test_no_param_group_anneals_up_to_a_cosine_floor_above_its_own_lr(family: str) -> None:
    bounds = LRBounds(low=1e-3, high=1e-1, suggestion=1e-2, divergence_lr=None)
    multipliers = [1.0, 0.01]  # e.g. a backbone at 1/100 of the head's LR
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        schedule, lr = suggest_schedule(
            trial, [family], bounds, 10, 5, lowest_multiplier=min(multipliers)
        )
        base_lrs = [lr * m for m in multipliers]
        lrs = preview(schedule, base_lrs, 5, 10, group_multipliers=multipliers)
        # every group's LR stays at or below where it started: none rises to the shared floor
        assert np.all(lrs <= np.asarray(base_lrs) * (1 + 1e-12)), schedule
        study.tell(trial, 0.0)


def test_one_cycle_is_left_out_where_the_job_has_a_single_step() -> None:
    bounds = LRBounds(low=1e-3, high=1e-1, suggestion=1e-2, divergence_lr=None)
    starts = warm_starts(["onecycle", "constant"], bounds, epochs=1, steps_per_epoch=1)
    assert [s["family"] for s in starts] == ["constant"]
    trial = optuna.create_study().ask()
    with pytest.raises(ValueError, match="can run for 1 step"):
        suggest_schedule(trial, ["onecycle"], bounds, epochs=1, steps_per_epoch=1)


def test_tiny_wine_job_runs_its_first_one_cycle_warm_start() -> None:
    # 142 training samples in one batch of 256, three epochs: three steps, so the warm start's
    # pct_start = 0.3 ramps for 0.9 steps, which torch's OneCycleLR cannot do.
    spec = JobSpec.model_validate(
        {
            "name": f"tiny-{uuid.uuid4().hex[:12]}",
            "model": {"name": "mlp"},
            "dataset": {"name": "wine"},
            "batch_size": 256,
            "range_test": {"seeds": 2, "num_iter": 40},
            "search": {"n_trials": 3, "epochs": 3, "baselines": False, "pruner": "none"},
        }
    )
    assert TrainingSetup.from_spec(spec).steps_per_epoch == 1

    rec = tune(spec, progress=False)

    searched = [h for h in rec.history if h.kind == "search"]
    assert [h.family for h in searched] == ["onecycle", "cosine", "constant"]
    assert [h.state for h in searched] == ["COMPLETE"] * 3
