from __future__ import annotations

import doctest
import json
import math
from collections.abc import Callable

import numpy as np
import pytest

from lrtune import suggestions
from lrtune.suggestions import (
    DEFAULT_RULE,
    MIN_POINTS,
    PEER_RULES,
    RULES,
    Consensus,
    Suggestion,
    consensus,
    default_skips,
    longest_run,
    minimum,
    slide,
    steepest,
    steepest_per_lr,
    steepest_per_step,
    suggest_all,
    valley,
)

NO_SKIP = {"skip_start": 0, "skip_end": 0}
EMA_BETA = 0.98  # fastai's and Lightning's smoothing


def smooth(raw: np.ndarray) -> np.ndarray:
    """Bias-corrected EMA, as the finder applies it before a rule ever sees the curve."""
    smoothed = np.empty_like(raw)
    average = 0.0
    for step, loss in enumerate(raw):
        average = EMA_BETA * average + (1 - EMA_BETA) * loss
        smoothed[step] = average / (1 - EMA_BETA ** (step + 1))
    return smoothed


def range_test_curve(
    seed: int, noise: float = 0.1, n: int = 100
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A sweep from 1e-7 to 10: flat near 2.3, falls to 0.4 around 1e-3, explodes past 3e-2.

    Returns the LRs, the smoothed noisy losses (NaN after the sweep stops at 4x the best
    loss, like a diverged tail), and the smoothed noise-free losses.
    """
    lrs = np.logspace(-7, 1, n)
    x = np.log10(lrs)
    clean = 0.4 + 1.9 / (1 + np.exp(3.0 * (x + 3.0))) + np.where(x > -1.5, 30 ** (x + 1.5) - 1, 0)
    noisy = clean + noise * np.random.default_rng(seed).standard_normal(n)
    smoothed = smooth(noisy)
    diverged = np.flatnonzero(smoothed > 4 * np.minimum.accumulate(smoothed))
    if diverged.size:
        smoothed[diverged[0] + 1 :] = np.nan
    return lrs, smoothed, smooth(clean)


def falling_region(lrs: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """From where the noise-free curve has lost 5% of its drop to its minimum."""
    lowest = int(np.argmin(clean))
    top = clean[0]
    started = int(np.argmax(clean < top - 0.05 * (top - clean[lowest])))
    return float(lrs[started]), float(lrs[lowest])


def single_curve_rules() -> list[Callable[..., Suggestion]]:
    return [*RULES.values(), *PEER_RULES.values()]


def decreasing_run_bounds(losses: np.ndarray) -> list[tuple[int, int]]:
    """Every maximal strictly decreasing run as (first point, last point), by brute force."""
    runs = []
    start = 0
    for i in range(1, len(losses) + 1):
        if i == len(losses) or not losses[i] < losses[i - 1]:
            if i - 1 > start:
                runs.append((start, i - 1))
            start = i
    return runs


# --- single-curve rules -------------------------------------------------------------------------


def test_steepest_picks_the_steepest_descent_of_a_small_curve() -> None:
    lrs = np.logspace(-4, 1, 6)
    losses = np.array([10.0, 8.0, 4.0, 1.0, 4.0, 16.0])
    slopes = np.gradient(losses, np.log10(lrs))
    expected = 1 + int(np.argmin(slopes[1:-1]))

    result = steepest(lrs, losses, **NO_SKIP)

    assert result == Suggestion(rule="steepest", lr=float(lrs[expected]), index=expected)
    assert expected == 2  # the central difference (1 - 8) / 2 is the most negative


def test_steepest_uses_log_lr_spacing_not_index_spacing() -> None:
    # Uneven spacing: a drop of 1 over a tiny LR step is steeper per decade than a drop of 2
    # over a wide one, although per index it is shallower.
    lrs = 10.0 ** np.array([-5.0, -4.0, -3.9, -3.8, -1.0, 0.0])
    losses = np.array([5.0, 5.0, 4.0, 4.0, 2.0, 2.0])
    slopes = np.gradient(losses, np.log10(lrs))
    expected = 1 + int(np.argmin(slopes[1:-1]))

    result = steepest(lrs, losses, **NO_SKIP)

    assert result.index == expected
    assert expected != 1 + int(np.argmin(np.gradient(losses)[1:-1]))


def test_u_shaped_curve_rules_land_left_of_the_minimum() -> None:
    lrs = np.logspace(-5, 0, 51)
    losses = (np.log10(lrs) + 2.0) ** 2
    lowest = int(np.argmin(losses))
    assert lrs[lowest] == pytest.approx(1e-2)

    results = suggest_all(lrs, losses)

    for name in ("steepest", "valley", "slide"):
        assert results[name].lr is not None and results[name].lr < 1e-2, name
    minimum = results["minimum"]
    assert (minimum.lr, minimum.index) == (pytest.approx(1e-3), lowest)


def test_longest_run_lands_at_the_fastai_offset_inside_the_decreasing_run() -> None:
    lrs = np.logspace(-5, 0, 51)
    losses = (np.log10(lrs) + 2.0) ** 2
    skip_start, skip_end = default_skips(len(losses))
    kept = losses[skip_start : len(losses) - skip_end]
    start, end = max(decreasing_run_bounds(kept), key=lambda run: run[1] - run[0])
    span = end - start
    expected = skip_start + start + int(span / 3) + int(span / 6)

    result = longest_run(lrs, losses)

    assert result.index == expected
    assert skip_start + start <= result.index <= skip_start + end
    assert result.lr == lrs[expected]


def test_longest_run_picks_the_longest_run_not_the_first_or_the_deepest() -> None:
    # A short deep drop (points 0-2), a bump, then a long shallow drop (points 3-9).
    losses = np.array([9.0, 5.0, 1.0, 3.0, 2.9, 2.8, 2.7, 2.6, 2.5, 2.4, 2.6, 3.0])
    lrs = np.logspace(-6, 0, len(losses))
    span = 9 - 3

    result = longest_run(lrs, losses, **NO_SKIP)

    assert result.index == 3 + int(span / 3) + int(span / 6)


def test_longest_run_of_equally_long_runs_takes_the_earliest() -> None:
    losses = np.array([5.0, 4.0, 3.0, 6.0, 5.0, 4.0, 7.0])
    lrs = np.logspace(-6, 0, len(losses))

    assert longest_run(lrs, losses, **NO_SKIP).index == 0 + int(2 / 3) + int(2 / 6)


def test_minimum_is_a_tenth_of_the_lr_at_the_lowest_loss() -> None:
    lrs = np.logspace(-6, 0, 13)
    losses = np.array([3.0, 2.9, 2.5, 2.0, 1.0, 0.5, 0.2, 0.3, 0.9, 2.0, 3.0, 5.0, 9.0])

    result = minimum(lrs, losses, **NO_SKIP)

    assert result.index == 6
    assert result.lr == pytest.approx(lrs[6] / 10)


def fastai_slide_index(losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005) -> int:
    """fastai's slide loop, per index, returning a non-negative index."""
    gradient = np.gradient(losses)
    n = len(losses)
    right = n - 1
    left = right - lr_diff
    candidate = left
    while left >= 0 and abs(gradient[right] - gradient[left]) > thresh:
        candidate = left
        right -= 1
        left -= 1
    return candidate


@pytest.mark.parametrize("seed", range(5))
def test_slide_matches_fastai_on_a_uniform_exponential_sweep(seed: int) -> None:
    lrs, losses, _ = range_test_curve(seed)
    finite = losses[np.isfinite(losses)]
    skip_start, skip_end = default_skips(len(finite))
    kept = finite[skip_start : len(finite) - skip_end]

    result = slide(lrs, losses)

    assert result.index == skip_start + fastai_slide_index(kept)


def test_slide_agrees_with_fastai_in_every_stopping_case() -> None:
    lrs = np.logspace(-6, 0, 40)
    straight = np.linspace(3.0, 1.0, 40)  # constant gradient: stops at once
    curved = (np.arange(40.0, 0.0, -1.0) / 10) ** 2  # gradient keeps changing: slides to 0
    kinked = np.concatenate([np.linspace(3.0, 2.0, 20), np.linspace(1.9, 0.0, 20) ** 2])
    expected = [40 - 1 - 15, 0, fastai_slide_index(kinked)]
    assert [fastai_slide_index(losses) for losses in (straight, curved)] == expected[:2]
    assert 0 < expected[2] < 40 - 1 - 15

    found = [slide(lrs, losses, **NO_SKIP).index for losses in (straight, curved, kinked)]

    assert found == expected


def test_slide_answers_on_curves_shorter_than_its_window() -> None:
    lrs = np.logspace(-4, 0, 8)
    losses = np.array([3.0, 2.9, 2.5, 1.5, 0.8, 0.6, 1.0, 3.0])

    result = slide(lrs, losses, **NO_SKIP)

    assert result.lr is not None and 0 <= result.index < len(losses)


@pytest.mark.parametrize("seed", range(8))
def test_rules_land_in_the_falling_region_of_a_noisy_range_test(seed: int) -> None:
    lrs, losses, clean = range_test_curve(seed)
    low, high = falling_region(lrs, clean)

    results = suggest_all(lrs, losses)

    for name in ("steepest", "valley", "slide"):
        assert low <= results[name].lr <= high, (name, results[name].lr, low, high)


@pytest.mark.parametrize("rule", single_curve_rules())
def test_answers_point_into_the_callers_arrays(rule: Callable[..., Suggestion]) -> None:
    lrs, losses, _ = range_test_curve(seed=0)

    result = rule(lrs.tolist(), losses.tolist())

    factor = 0.1 if rule is minimum else 1.0
    assert result.lr == pytest.approx(lrs[result.index] * factor)
    assert isinstance(result.lr, float) and isinstance(result.index, int)


def test_default_skips_follow_fastai_on_long_curves_and_shrink_on_short_ones() -> None:
    assert default_skips(100) == (10, 5)
    assert default_skips(50) == (5, 5)
    assert default_skips(30) == (3, 3)
    assert default_skips(9) == (0, 0)
    for n in range(MIN_POINTS, 200):
        skip_start, skip_end = default_skips(n)
        assert n - skip_start - skip_end >= MIN_POINTS


def test_default_trim_drops_the_noisy_start_and_the_exploding_end() -> None:
    lrs = np.logspace(-7, 1, 100)
    losses = np.linspace(3.0, 1.0, 100)
    losses[:10] = [0.1 * i for i in range(10, 0, -1)]  # a steep artefact that trimming hides
    losses[95:] = 0.0  # a lower "minimum" in the last five points

    assert 10 <= steepest(lrs, losses).index <= 94
    assert minimum(lrs, losses).index == 94


# --- the peers' rules, against the peers' own code ----------------------------------------------


def fastai_valley_reference(losses: list[float]) -> tuple[int, int, int]:
    """fastai's ``valley`` (fastai/callback/schedule.py) line by line: (index, start, end).

    The index is fastai's, before Python wraps a negative one around.
    """
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2), max_start, max_end


def longest_decreasing_subsequence_length(losses: np.ndarray) -> int:
    best = [1] * len(losses)
    for i in range(len(losses)):
        for j in range(i):
            if losses[i] < losses[j]:
                best[i] = max(best[i], best[j] + 1)
    return max(best)


def random_curves(count: int) -> list[np.ndarray]:
    """Noisy range-test curves, random walks, and curves with many tied losses."""
    rng = np.random.default_rng(11)
    curves = []
    for k in range(count):
        n = int(rng.integers(5, 80))
        kind = k % 3
        if kind == 0:
            curves.append(range_test_curve(seed=k, noise=float(rng.uniform(0.02, 0.5)))[1][:n])
        elif kind == 1:
            curves.append(np.cumsum(rng.standard_normal(n)))
        else:
            curves.append(rng.integers(0, 4, n).astype(float))  # ties: not a decrease
    return [c[np.isfinite(c)] for c in curves if np.isfinite(c).sum() >= MIN_POINTS]


def test_valley_is_fastais_valley_on_random_curves() -> None:
    for losses in random_curves(300):
        if np.ptp(losses) == 0 or np.all(np.diff(losses) >= 0):
            continue  # flat or rising: lrtune answers "no suggestion" instead
        lrs = np.logspace(-7, 1, len(losses))
        index, start, end = fastai_valley_reference(losses.tolist())

        result = valley(lrs, losses, **NO_SKIP)

        assert result.index == max(index, 0)
        assert result.lr == lrs[max(index, 0)]
        assert end - start == longest_decreasing_subsequence_length(losses)


def test_valley_follows_the_subsequence_not_the_contiguous_run() -> None:
    # The longest decreasing subsequence 5 > 4 > 3 > 2 > 1 (points 0, 1, 3, 5, 7) skips the
    # bumps; no contiguous run is longer than two points.
    losses = np.array([5.0, 4.0, 4.5, 3.0, 3.5, 2.0, 2.5, 1.0, 6.0, 7.0])
    lrs = np.logspace(-6, 0, len(losses))
    start, end = 7 - 5, 7  # fastai: end of the subsequence minus its length
    span = end - start

    assert valley(lrs, losses, **NO_SKIP).index == start + int(span / 3) + int(span / 6) == 3
    assert longest_run(lrs, losses, **NO_SKIP).index == 0


def test_valley_answers_the_first_point_where_fastai_would_wrap_to_the_last() -> None:
    losses = [3.0, 2.0, 5.0, 6.0, 7.0]  # fastai: max_end 1, max_start -1, index -1
    assert fastai_valley_reference(losses)[0] == -1

    assert valley(np.logspace(-4, 0, 5), losses, **NO_SKIP).index == 0


def test_valley_lands_lower_than_the_contiguous_run_on_noisy_curves() -> None:
    # The defect: the contiguous rule, on noisy curves, lands a good part of a decade higher.
    shifts = []
    for seed in range(20):
        lrs, losses, _ = range_test_curve(seed=seed, noise=0.2)
        shifts.append(math.log10(longest_run(lrs, losses).lr / valley(lrs, losses).lr))

    assert np.mean(shifts) > 0.2


def tlf_suggestion(lrs: np.ndarray, losses: np.ndarray, **plot_options: int) -> float:
    """pytorch-lr-finder's own suggestion: ``LRFinder.plot(suggest_lr=True)`` on a history."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from torch_lr_finder import LRFinder

    model = torch.nn.Linear(1, 1)
    finder = LRFinder(model, torch.optim.SGD(model.parameters(), lr=1e-3), torch.nn.MSELoss())
    finder.history = {"lr": list(lrs), "loss": list(losses)}
    figure, ax = plt.subplots()
    try:
        _, lr = finder.plot(ax=ax, suggest_lr=True, **plot_options)
    finally:
        plt.close(figure)
    return float(lr)


@pytest.mark.parametrize("seed", range(6))
def test_steepest_per_step_is_pytorch_lr_finders_suggestion(
    seed: int, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch_lr_finder")
    lrs, losses, _ = range_test_curve(seed=seed, noise=0.05 * (seed + 1))
    finite = np.isfinite(losses)
    lrs, losses = lrs[finite], losses[finite]

    assert steepest_per_step(lrs, losses).lr == tlf_suggestion(lrs, losses)
    assert steepest_per_step(lrs, losses, skip_start=3, skip_end=0).lr == tlf_suggestion(
        lrs, losses, skip_start=3, skip_end=0
    )


def test_steepest_per_step_on_pytorch_lr_finders_small_example() -> None:
    # The steepest per-index descent of [10, 8, 4, 1, 4, 16] is the central difference at
    # index 2, (1 - 8) / 2 (tie with index 3 broken by argmin's first index).
    lrs = np.logspace(-4, 1, 6)
    losses = np.array([10.0, 8.0, 4.0, 1.0, 4.0, 16.0])

    assert steepest_per_step(lrs, losses, **NO_SKIP).index == 2
    if pytest.importorskip("torch_lr_finder"):
        assert steepest_per_step(lrs, losses, **NO_SKIP).lr == tlf_suggestion(
            lrs, losses, skip_start=0, skip_end=0
        )


def lightning_suggestion(
    lrs: np.ndarray, losses: np.ndarray, skip_begin: int = 10, skip_end: int = 1
) -> float | None:
    """Lightning's ``_LRFinder.suggestion`` (lightning/pytorch/tuner/lr_finder.py) verbatim,
    on a results dict instead of the finder."""
    import torch

    results = {"lr": list(lrs), "loss": list(losses)}
    trimmed_losses = torch.tensor(results["loss"][skip_begin:-skip_end])
    trimmed_lrs = torch.tensor(results["lr"][skip_begin:-skip_end])
    is_finite = torch.isfinite(trimmed_losses)
    trimmed_losses, trimmed_lrs = trimmed_losses[is_finite], trimmed_lrs[is_finite]
    if len(trimmed_losses) < 2:
        return None
    gradients = torch.gradient(trimmed_losses, spacing=[trimmed_lrs])[0]
    min_grad = torch.argmin(gradients).item()
    all_losses_idx = torch.arange(len(results["loss"]))
    idx_finite = all_losses_idx[skip_begin:-skip_end][is_finite]
    return results["lr"][idx_finite[min_grad].item()]


@pytest.mark.parametrize("seed", range(6))
def test_steepest_per_lr_is_lightnings_suggestion(seed: int) -> None:
    lrs, losses, _ = range_test_curve(seed=seed, noise=0.05 * (seed + 1))

    assert steepest_per_lr(lrs, losses).lr == lightning_suggestion(lrs, losses)
    assert steepest_per_lr(lrs, losses, skip_start=2, skip_end=2).lr == lightning_suggestion(
        lrs, losses, skip_begin=2, skip_end=2
    )


def test_steepest_per_lr_on_lightnings_sine_example() -> None:
    # Lightning's test_gradient_correctness: losses sin(lr) for lr in [0, 2 pi] (1000 steps),
    # suggestion(skip_begin=2, skip_end=2) within 1e-2 of pi. The first LR must be positive
    # here; it is trimmed away in both.
    lrs = np.linspace(0, 2 * math.pi, 1000)
    lrs[0] = 1e-9
    losses = np.sin(lrs)

    result = steepest_per_lr(lrs, losses, skip_start=2, skip_end=2)

    assert abs(result.lr - math.pi) < 1e-2
    assert result.lr == pytest.approx(lightning_suggestion(lrs, losses, 2, 2))


# --- non-finite, short, flat and rising curves ---------------------------------------------------


@pytest.mark.parametrize("rule", single_curve_rules())
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_tail_changes_nothing(rule: Callable[..., Suggestion], bad: float) -> None:
    lrs, losses, _ = range_test_curve(seed=1, noise=0.0)
    losses = losses[np.isfinite(losses)]
    with_tail = np.concatenate([losses, [bad, 1.0, np.nan]])
    tail_lrs = np.logspace(-7, 1, 100)[: len(with_tail)]

    assert rule(tail_lrs, with_tail) == rule(lrs[: len(losses)], losses)


@pytest.mark.parametrize("rule", single_curve_rules())
def test_a_nan_in_the_middle_truncates_the_curve_there(rule: Callable[..., Suggestion]) -> None:
    lrs, losses, _ = range_test_curve(seed=2)
    middle = 70
    holed = losses.copy()
    holed[middle] = np.nan

    assert rule(lrs, holed) == rule(lrs[:middle], losses[:middle])


@pytest.mark.parametrize("rule", single_curve_rules())
def test_an_all_nan_curve_has_no_answer(rule: Callable[..., Suggestion]) -> None:
    result = rule(np.logspace(-5, 0, 20), np.full(20, np.nan))

    assert result.lr is None and result.index is None
    assert "no finite loss" in result.reason


@pytest.mark.parametrize("rule", single_curve_rules())
@pytest.mark.parametrize("n", range(MIN_POINTS))
def test_too_short_curves_have_no_answer(rule: Callable[..., Suggestion], n: int) -> None:
    lrs = np.logspace(-5, 0, n)
    losses = np.linspace(3.0, 1.0, n)

    result = rule(lrs, losses, **NO_SKIP)

    assert result.lr is None
    assert result.reason == f"curve too short: {n} finite points, need at least {MIN_POINTS}"


def test_the_shortest_answerable_curve_gets_an_answer_from_every_rule() -> None:
    lrs = np.logspace(-4, 0, MIN_POINTS)
    losses = np.array([3.0, 2.5, 1.0, 0.8, 2.0])

    for rule in single_curve_rules():
        assert rule(lrs, losses, **NO_SKIP).lr is not None, rule.__name__


def test_too_short_reason_names_the_divergence_and_the_skips() -> None:
    lrs = np.logspace(-5, 0, 12)
    losses = np.concatenate([np.linspace(3.0, 1.0, 8), [np.inf] * 4])

    result = valley(lrs, losses, skip_start=2, skip_end=2)

    assert result.reason == (
        "curve too short: 8 finite points (loss is inf at index 8), "
        "4 left after skipping 2 at the start and 2 at the end, need at least 5"
    )


@pytest.mark.parametrize("rule", single_curve_rules())
@pytest.mark.parametrize(
    "losses",
    [np.full(30, 2.3), np.zeros(30), 2.3 + 1e-9 * np.random.default_rng(0).standard_normal(30)],
    ids=["constant", "zeros", "noise-below-tolerance"],
)
def test_flat_curves_have_no_answer(rule: Callable[..., Suggestion], losses: np.ndarray) -> None:
    result = rule(np.logspace(-5, 0, 30), losses)

    assert result == Suggestion(rule=rule.__name__, lr=None, index=None, reason="curve is flat")


@pytest.mark.parametrize("rule", single_curve_rules())
def test_rising_curves_have_no_answer(rule: Callable[..., Suggestion]) -> None:
    lrs = np.logspace(-5, 0, 30)
    rising = np.exp(np.linspace(0.0, 3.0, 30))
    rising[10:14] = rising[10]  # plateaus are not decreases

    result = rule(lrs, rising)

    assert result == Suggestion(
        rule=rule.__name__, lr=None, index=None, reason="loss never decreases"
    )


def test_steepest_has_no_answer_when_only_the_skipped_end_points_fall() -> None:
    lrs = np.logspace(-4, 0, 5)
    losses = np.array([5.0, 4.0, 6.0, 7.0, 8.0])

    assert steepest(lrs, losses).reason == "loss never decreases"


@pytest.mark.parametrize(
    ("lrs", "losses", "message"),
    [
        ([1e-3, 1e-2, 1e-1], [1.0, 0.5], "3 lrs but 2 losses"),
        ([1e-3, 0.0, 1e-1], [1.0, 0.5, 0.3], r"lrs\[1\] = 0.0"),
        ([1e-3, -1e-2, 1e-1], [1.0, 0.5, 0.3], "positive"),
        ([1e-3, np.nan, 1e-1], [1.0, 0.5, 0.3], "finite"),
        ([1e-3, 1e-2, 1e-2], [1.0, 0.5, 0.3], "strictly increasing"),
        ([1e-2, 1e-3, 1e-1], [1.0, 0.5, 0.3], "strictly increasing"),
        ([[1e-3, 1e-2]], [[1.0, 0.5]], "one-dimensional"),
    ],
)
def test_caller_mistakes_raise_value_error(lrs: list, losses: list, message: str) -> None:
    for rule in single_curve_rules():
        with pytest.raises(ValueError, match=message):
            rule(lrs, losses)


def test_invalid_options_raise_value_error() -> None:
    lrs, losses = np.logspace(-4, 0, 10), np.linspace(2.0, 1.0, 10)
    with pytest.raises(ValueError, match="skip_start"):
        valley(lrs, losses, skip_start=-1)
    with pytest.raises(ValueError, match="skip_end"):
        valley(lrs, losses, skip_end=-1)
    with pytest.raises(ValueError, match="lr_diff"):
        slide(lrs, losses, lr_diff=0)
    with pytest.raises(ValueError, match="threshold"):
        slide(lrs, losses, threshold=-0.1)


def test_suggest_all_applies_every_rule() -> None:
    lrs, losses, _ = range_test_curve(seed=3)

    results = suggest_all(lrs, losses, skip_start=12)

    assert list(results) == list(RULES)
    for name, rule in RULES.items():
        assert results[name] == rule(lrs, losses, skip_start=12)
        assert results[name].rule == name


# --- consensus ---------------------------------------------------------------------------------

default_rule = RULES[DEFAULT_RULE]


def shifted_curves(shift_steps: list[int], n: int = 80) -> tuple[np.ndarray, list[np.ndarray]]:
    """Noise-free curves on a uniform log grid, each shifted right by whole grid steps.

    A constant start and end keeps the decreasing run clear of the trimmed ends, so each
    seed's valley moves by exactly its shift.
    """
    lrs = np.logspace(-6, 0, n)
    base = np.concatenate([np.full(30, 3.0), np.linspace(3.0, 0.5, 26)[1:], np.full(n, 0.5)])
    base += np.concatenate([np.zeros(60), np.linspace(0.0, 2.0, len(base) - 60)])
    return lrs, [np.roll(base, shift)[:n] for shift in shift_steps]


def test_identical_seeds_agree_completely() -> None:
    lrs, losses, _ = range_test_curve(seed=4)

    result = consensus(lrs, [losses] * 4)

    single = default_rule(lrs, losses)
    assert result.suggestion == Suggestion(rule="consensus", lr=single.lr, index=single.index)
    assert result.per_seed == [single] * 4
    assert result.spread_decades == 0.0
    assert result.agreement == "high"


@pytest.mark.parametrize(
    ("shift_steps", "agreement"),
    [([0, 1, 2, 3], "high"), ([0, 2, 5, 7], "medium"), ([0, 3, 9, 14], "low"), ([3, 0, 1], "high")],
)
def test_shifted_seeds_give_the_log_median_and_the_shift_as_spread(
    shift_steps: list[int], agreement: str
) -> None:
    lrs, curves = shifted_curves(shift_steps)
    step_decades = np.log10(lrs[1] / lrs[0])

    result = consensus(lrs, curves)

    answers = np.log10([s.lr for s in result.per_seed])
    shifts_decades = step_decades * np.array(shift_steps)
    assert answers - answers[0] == pytest.approx(shifts_decades - shifts_decades[0])
    assert result.spread_decades == pytest.approx(float(np.ptp(shifts_decades)))
    assert math.log10(result.suggestion.lr) == pytest.approx(float(np.median(answers)))
    assert result.suggestion.index == int(np.argmin(np.abs(np.log10(lrs) - np.median(answers))))
    assert result.agreement == agreement


def test_one_noisy_seed_moves_the_median_less_than_the_mean() -> None:
    lrs, curves = shifted_curves([0, 1, 1, 20])
    answers = np.log10([default_rule(lrs, c).lr for c in curves])

    result = consensus(lrs, curves)

    assert math.log10(result.suggestion.lr) == pytest.approx(float(np.median(answers)))
    assert abs(math.log10(result.suggestion.lr) - answers[1]) < abs(np.mean(answers) - answers[1])
    assert result.agreement == "low"


def test_consensus_survives_one_all_nan_seed_among_four() -> None:
    lrs, curves = shifted_curves([0, 1, 2, 0])
    curves[3] = np.full(len(lrs), np.nan)

    result = consensus(lrs, curves)

    assert result.per_seed[3].lr is None
    assert result.suggestion.lr is not None
    answered = np.log10([s.lr for s in result.per_seed[:3]])
    assert math.log10(result.suggestion.lr) == pytest.approx(float(np.median(answered)))
    assert result.spread_decades == pytest.approx(float(np.ptp(answered)))


def test_consensus_needs_half_of_the_seeds() -> None:
    lrs, curves = shifted_curves([0, 1, 2, 3])
    flat, rising = np.full(len(lrs), 2.0), np.linspace(1.0, 3.0, len(lrs))

    half = consensus(lrs, [curves[0], curves[1], flat, rising])
    too_few = consensus(lrs, [curves[0], flat, rising, curves[3][:3]])

    assert half.suggestion.lr is not None
    assert too_few.suggestion.lr is None and too_few.suggestion.index is None
    assert too_few.spread_decades is None and too_few.agreement == "n/a"
    reason = too_few.suggestion.reason
    assert reason.startswith("only 1 of 4 seeds gave a suggestion")
    assert "seed 1: curve is flat" in reason
    assert "seed 2: loss never decreases" in reason
    assert "seed 3: curve too short: 3 finite points" in reason


def test_consensus_pairs_each_seed_with_its_own_prefix_of_lrs() -> None:
    lrs, losses, _ = range_test_curve(seed=5)
    stopped_early = losses[np.isfinite(losses)][:60]

    result = consensus(lrs, [losses, stopped_early])

    assert result.per_seed == [default_rule(lrs, losses), default_rule(lrs[:60], stopped_early)]


def test_a_single_seed_has_no_spread() -> None:
    lrs, losses, _ = range_test_curve(seed=6)

    result = consensus(lrs, [losses], rule="steepest", skip_start=15)

    assert result.suggestion.lr == steepest(lrs, losses, skip_start=15).lr
    assert result.spread_decades is None and result.agreement == "n/a"


def test_consensus_accepts_a_rule_function() -> None:
    lrs, curves = shifted_curves([0, 1, 2])

    assert consensus(lrs, curves, rule=minimum) == consensus(lrs, curves, rule="minimum")


def test_consensus_caller_mistakes_raise_value_error() -> None:
    lrs, curves = shifted_curves([0])
    with pytest.raises(ValueError, match="empty"):
        consensus(lrs, [])
    with pytest.raises(ValueError, match="seed 0 has 81 losses"):
        consensus(lrs, [np.append(curves[0], 1.0)])
    with pytest.raises(ValueError, match="unknown rule 'steep'"):
        consensus(lrs, curves, rule="steep")
    with pytest.raises(ValueError, match="strictly increasing"):
        consensus(lrs[::-1], curves)


# --- serialisation -----------------------------------------------------------------------------


def test_suggestion_round_trips_through_json() -> None:
    for original in (
        Suggestion(rule="valley", lr=3e-3, index=42),
        Suggestion(rule="slide", lr=None, index=None, reason="curve is flat"),
    ):
        data = json.loads(original.model_dump_json())
        assert Suggestion.model_validate(data) == original


def test_consensus_round_trips_through_json() -> None:
    lrs, curves = shifted_curves([0, 2, 3])
    curves.append(np.full(len(lrs), np.nan))
    for original in (consensus(lrs, curves), consensus(lrs, curves[2:])):
        data = json.loads(original.model_dump_json())
        assert Consensus.model_validate(data) == original


def test_suggestion_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="both"):
        Suggestion(rule="valley", lr=1e-3, index=None)
    with pytest.raises(ValueError, match="reason"):
        Suggestion(rule="valley", lr=None, index=None)


def test_module_docstring_examples_run() -> None:
    failures, tried = doctest.testmod(suggestions)
    assert tried > 0 and failures == 0
