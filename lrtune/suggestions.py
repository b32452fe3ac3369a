"""Learning-rate suggestions read off an LR range-test curve.

Every rule is a pure function ``rule(lrs, losses, **options) -> Suggestion`` on the learning
rates of a sweep (positive, strictly increasing) and the already smoothed losses recorded at
them. A rule never raises on a bad *curve*: when it has no answer, the :class:`Suggestion` has
``lr=None`` and a ``reason`` in plain words. It raises :class:`ValueError` only for caller
mistakes (mismatched lengths, non-positive or non-increasing learning rates, bad options).

Preprocessing, shared by every rule:

1. **Truncate at the first non-finite loss.** The first NaN/inf and everything after it are
   dropped, so a NaN in the middle of a curve truncates it there, exactly like a diverged tail.
2. **Trim the ends** like fastai: ``skip_start`` points at the start (default ``n // 10``) and
   ``skip_end`` at the end (default ``min(5, n // 10)``), where ``n`` counts the finite points
   kept by step 1. For ``n >= 50`` these are fastai's ``[n // 10 : -5]``; shorter curves are
   trimmed less, and curves of fewer than 10 points not at all, so that a short sweep still
   gets an answer (see :func:`default_skips`).
3. **Give up with a reason** when fewer than :data:`MIN_POINTS` points remain ("curve too
   short"), when the kept losses are flat ("curve is flat"), or when they never go down
   ("loss never decreases").

Single-curve rules (lrtune's in :data:`RULES`, applied by :func:`suggest_all`; the last two
in :data:`PEER_RULES`, for comparison):

- :func:`steepest`: the most negative slope of the loss with respect to ``log10(lr)``.
- :func:`valley`: fastai's default, transcribed from fastai's code: the longest strictly
  decreasing *subsequence* of the loss (not necessarily contiguous), read about halfway along.
- :func:`longest_run`: the same reading on the longest *contiguous* run of falling losses
  (what lrtune called ``valley`` before it matched fastai).
- :func:`minimum`: a tenth of the LR at the lowest loss (fastai's ``minimum``).
- :func:`slide`: fastai's interval slide rule, on log-LR spacing.
- :func:`steepest_per_step`: pytorch-lr-finder's suggestion, the most negative ``np.gradient``
  of the loss per sweep step, on the curve trimmed ``[10:-5]``.
- :func:`steepest_per_lr`: PyTorch Lightning's ``suggestion()``, the most negative gradient of
  the loss with respect to the raw LR, on the curve trimmed ``[10:-1]``.

The peers' rules (``valley``, ``slide``, ``minimum``, ``steepest_per_step``,
``steepest_per_lr``) compute what the peer's own code computes on the same curve (``slide``
on a uniform exponential sweep; it takes uneven LR steps into account); the deliberate
differences are the shared preprocessing below and a suggestion with a reason instead of an
exception or a log line when there is no answer.

Why :func:`consensus` over seeds is lrtune's default: the answer of a single sweep moves with
the order in which the data arrived. Running the sweep with a few seeds and taking the median
of their answers in log10 space is robust to one noisy seed, and the spread of the answers, in
decades of LR, is the measure of confidence that users of the other LR finders keep asking
for. Which rule the consensus applies to each seed (:data:`DEFAULT_RULE`) was chosen by
measurement: ``bench/suggest.py`` trains at every rule's suggestion and compares it with the
best constant LR of a grid (``docs/benchmark_suggest.md``).

Example:
    >>> import numpy as np
    >>> from lrtune.suggestions import consensus, suggest_all
    >>> lrs = np.logspace(-5, 0, 51)
    >>> losses = (np.log10(lrs) + 2.0) ** 2  # lowest loss at lr = 1e-2
    >>> suggestions = suggest_all(lrs, losses)
    >>> print(f"{suggestions['minimum'].lr:.0e}")
    1e-03
    >>> print(f"{suggestions['valley'].lr:.0e} at index {suggestions['valley'].index}")
    4e-04 at index 16
    >>> print(f"{suggestions['longest_run'].lr:.0e} at index {suggestions['longest_run'].index}")
    5e-04 at index 17
    >>> # Three seeds; the third stopped early, so it is trimmed differently.
    >>> result = consensus(lrs, [losses, losses * 1.5, losses[:45]])
    >>> [f"{seed.lr:.0e}" for seed in result.per_seed]
    ['5e-04', '5e-04', '4e-04']
    >>> print(f"{result.suggestion.lr:.0e}, spread {result.spread_decades:.1f} decades")
    5e-04, spread 0.1 decades
    >>> result.agreement
    'high'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
from pydantic import ConfigDict, model_validator

from lrtune._pydantic import ResultModel

__all__ = [
    "DEFAULT_RULE",
    "FLAT_TOLERANCE",
    "MIN_POINTS",
    "PEER_RULES",
    "RULES",
    "Consensus",
    "Suggestion",
    "consensus",
    "default_skips",
    "longest_run",
    "minimum",
    "slide",
    "steepest",
    "steepest_per_lr",
    "steepest_per_step",
    "suggest_all",
    "valley",
]

FloatArrayLike: TypeAlias = "Sequence[float] | npt.NDArray[np.floating[Any]]"
FloatArray: TypeAlias = "npt.NDArray[np.float64]"

MIN_POINTS = 5
"""Fewest points a curve must keep after preprocessing for a rule to answer."""

FLAT_TOLERANCE = 1e-6
"""A curve is flat when ``max - min`` of its losses is at most this fraction of ``max |loss|``."""

_FASTAI_SKIP_END = 5
_TLF_SKIPS = (10, 5)  # pytorch-lr-finder's plot(skip_start=10, skip_end=5)
_LIGHTNING_SKIPS = (10, 1)  # Lightning's suggestion(skip_begin=10, skip_end=1)
_HIGH_AGREEMENT_DECADES = 0.3
_MEDIUM_AGREEMENT_DECADES = 0.7

_CURVE_IS_FLAT = "curve is flat"
_LOSS_NEVER_DECREASES = "loss never decreases"


class Suggestion(ResultModel):
    """One rule's answer on one curve.

    Attributes:
        rule: Name of the rule (see :data:`RULES` and :data:`PEER_RULES`) or ``"consensus"``.
        lr: Suggested learning rate, or ``None`` when the rule has no answer.
        index: Index into the caller's original arrays of the point the answer is read from
            (for ``minimum``, the lowest loss, whose LR is ten times ``lr``); ``None`` exactly
            when ``lr`` is.
        reason: Why there is no answer, in words for a user; ``None`` when there is one.
    """

    model_config = ConfigDict(frozen=True)

    rule: str
    lr: float | None
    index: int | None
    reason: str | None = None

    @model_validator(mode="after")
    def _lr_and_index_together(self) -> Suggestion:
        if (self.lr is None) != (self.index is None):
            raise ValueError(f"lr and index must both be set or both be None: {self!r}")
        if self.lr is None and not self.reason:
            raise ValueError(f"a suggestion without lr needs a reason: {self!r}")
        return self


class Consensus(ResultModel):
    """A rule applied to several seeds' curves, and how much the seeds agree.

    Attributes:
        suggestion: The median of the per-seed LRs in log10 space (rule ``"consensus"``);
            ``index`` is that of the sweep LR closest to it. ``lr`` is ``None`` when fewer
            than half of the seeds answered.
        per_seed: Each seed's own suggestion, in the order the curves were given.
        spread_decades: ``max(log10 lr) - min(log10 lr)`` over the seeds that answered; 0.0
            when they all agree (lower is better), ``None`` when fewer than two answered or
            there is no consensus.
        agreement: ``"high"`` (spread at most 0.3 decades), ``"medium"`` (at most 0.7),
            ``"low"``, or ``"n/a"`` when there is no spread: a label for the spread.
    """

    model_config = ConfigDict(frozen=True)

    suggestion: Suggestion
    per_seed: list[Suggestion]
    spread_decades: float | None
    agreement: Literal["high", "medium", "low", "n/a"]


class _NoSuggestion(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Curve:
    """The part of a curve that a rule looks at, and where it starts in the caller's arrays."""

    lrs: FloatArray
    losses: FloatArray
    offset: int


def default_skips(n_finite: int) -> tuple[int, int]:
    """Return the default ``(skip_start, skip_end)`` for a curve of ``n_finite`` finite points.

    ``skip_start = n // 10`` and ``skip_end = min(5, n // 10)``: fastai's trim for sweeps of 50
    points or more, proportionally less below that, and none under 10 points.

    Example:
        >>> default_skips(100), default_skips(30), default_skips(8)
        ((10, 5), (3, 3), (0, 0))
    """
    return n_finite // 10, min(_FASTAI_SKIP_END, n_finite // 10)


def steepest(
    lrs: FloatArrayLike,
    losses: FloatArrayLike,
    *,
    skip_start: int | None = None,
    skip_end: int | None = None,
) -> Suggestion:
    """Suggest the LR where the loss falls fastest per decade of LR.

    The slope is ``np.gradient(losses, log10(lrs))``; the first and last points are skipped
    because their one-sided differences are the noisiest. Unlike tlf (slope per index) and
    Lightning (slope per raw LR), this is the slope as the log-scale plot shows it, so uneven
    steps (a linear sweep, Lightning's first step) do not distort it and the huge raw-LR
    steps at the end of an exponential sweep do not flatten it.
    """
    return _apply_rule("steepest", lrs, losses, skip_start, skip_end, _steepest_index)


def valley(
    lrs: FloatArrayLike,
    losses: FloatArrayLike,
    *,
    skip_start: int | None = None,
    skip_end: int | None = None,
) -> Suggestion:
    """Suggest an LR about halfway along the longest valley, exactly as fastai's ``valley``.

    fastai finds the longest strictly decreasing *subsequence* of the loss by an O(n^2)
    dynamic programme, takes its last point as ``end`` and ``start = end - length`` (one point
    before a contiguous run of that length would start), and answers at
    ``start + int(span / 3) + int(span / 6)`` with ``span = end - start``; of several longest
    subsequences, the one that ends first counts. One deliberate change: when the subsequence
    is two points ending at the curve's second point, fastai's index is -1, which Python reads
    as the *last* point (the largest LR of the sweep); here it is 0.
    """
    return _apply_rule("valley", lrs, losses, skip_start, skip_end, _fastai_valley_index)


def longest_run(
    lrs: FloatArrayLike,
    losses: FloatArrayLike,
    *,
    skip_start: int | None = None,
    skip_end: int | None = None,
) -> Suggestion:
    """Suggest an LR about halfway along the longest *contiguous* run of falling losses.

    With ``start`` and ``end`` the first and last points of the run (the earliest one if several
    are longest) and ``span = end - start``, the answer is at
    ``start + int(span / 3) + int(span / 6)``, fastai's placement. Unlike :func:`valley`, every
    step of the run is a decrease, so the answer always lies where the loss really falls; on a
    noisy curve the runs are short and it lands later (higher) than fastai's valley.
    """
    return _apply_rule("longest_run", lrs, losses, skip_start, skip_end, _longest_run_index)


def minimum(
    lrs: FloatArrayLike,
    losses: FloatArrayLike,
    *,
    skip_start: int | None = None,
    skip_end: int | None = None,
) -> Suggestion:
    """Suggest a tenth of the LR at the lowest loss (fastai's ``minimum``).

    ``index`` is that of the lowest loss, so ``lr == lrs[index] / 10``.
    """
    return _apply_rule("minimum", lrs, losses, skip_start, skip_end, _minimum_index, lr_factor=0.1)


def slide(
    lrs: FloatArrayLike,
    losses: FloatArrayLike,
    *,
    skip_start: int | None = None,
    skip_end: int | None = None,
    lr_diff: int = 15,
    threshold: float = 0.005,
) -> Suggestion:
    """Suggest an LR by fastai's interval slide rule.

    A window of ``lr_diff`` points slides left from the end of the curve for as long as the
    loss gradients at its two ends differ by more than ``threshold``; the answer is the left end
    of the last window where they still did (the left end of the curve if they always did).

    Args:
        lrs: Learning rates of the sweep.
        losses: Smoothed losses at ``lrs``.
        skip_start: Points dropped at the start; see :func:`default_skips`.
        skip_end: Points dropped at the end; see :func:`default_skips`.
        lr_diff: Width of the window in points. On curves of fewer than ``2 * lr_diff + 1``
            points it shrinks to ``(n - 1) // 2`` so that short sweeps still get an answer.
        threshold: Largest gradient difference, in loss per sweep step, at which the window
            stops. The gradient is taken along ``log10(lr)`` and scaled by the curve's mean
            step in ``log10(lr)``: on a uniform exponential sweep this is exactly fastai's
            per-index gradient, so fastai's threshold keeps its meaning, while uneven spacing
            (a linear sweep, Lightning's first step) no longer distorts the slopes. Like
            fastai's, it is an absolute loss difference, tuned for losses of order 1.
    """
    if lr_diff < 1:
        raise ValueError(f"lr_diff must be >= 1, got {lr_diff}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")

    def pick(curve: _Curve) -> int:
        return _slide_index(curve, lr_diff, threshold)

    return _apply_rule("slide", lrs, losses, skip_start, skip_end, pick)


def steepest_per_step(
    lrs: FloatArrayLike,
    losses: FloatArrayLike,
    *,
    skip_start: int | None = _TLF_SKIPS[0],
    skip_end: int | None = _TLF_SKIPS[1],
) -> Suggestion:
    """Suggest the LR where the loss falls most per sweep step, as pytorch-lr-finder does.

    pytorch-lr-finder's ``plot(suggest_lr=True)`` trims the curve to
    ``[skip_start:-skip_end]`` (10 and 5 by default, whatever the curve's length) and answers
    at ``argmin(np.gradient(losses))``: the slope per index, end points included. On an
    exponential sweep that is the slope per decade up to a constant factor.
    """
    return _apply_rule(
        "steepest_per_step", lrs, losses, skip_start, skip_end, _steepest_per_step_index
    )


def steepest_per_lr(
    lrs: FloatArrayLike,
    losses: FloatArrayLike,
    *,
    skip_start: int | None = _LIGHTNING_SKIPS[0],
    skip_end: int | None = _LIGHTNING_SKIPS[1],
) -> Suggestion:
    """Suggest the LR where the loss falls most per unit of LR, as PyTorch Lightning does.

    Lightning's ``_LRFinder.suggestion(skip_begin=10, skip_end=1)`` trims the curve to
    ``[skip_begin:-skip_end]`` and answers at ``argmin(torch.gradient(losses, spacing=[lrs]))``:
    the slope against the raw LR (not its log), which favours the low-LR end of an exponential
    sweep where the LR steps are tiny. Lightning drops non-finite points wherever they are;
    here, as for every rule, the curve ends at its first non-finite point.
    """
    return _apply_rule("steepest_per_lr", lrs, losses, skip_start, skip_end, _steepest_per_lr_index)


RULES: dict[str, Callable[..., Suggestion]] = {
    "steepest": steepest,
    "valley": valley,
    "longest_run": longest_run,
    "minimum": minimum,
    "slide": slide,
}
"""The single-curve rules :func:`suggest_all` applies, by name; each is called as
``rule(lrs, losses, **options)``."""

PEER_RULES: dict[str, Callable[..., Suggestion]] = {
    "steepest_per_step": steepest_per_step,
    "steepest_per_lr": steepest_per_lr,
}
"""pytorch-lr-finder's and Lightning's rules, for comparison (``bench/suggest.py``); like
:data:`RULES`, :func:`consensus` takes them by name."""

DEFAULT_RULE = "longest_run"
"""The rule :func:`consensus` applies to each seed unless told otherwise (chosen by
``bench/suggest.py``; see ``docs/benchmark_suggest.md``)."""


def suggest_all(
    lrs: FloatArrayLike,
    losses: FloatArrayLike,
    *,
    skip_start: int | None = None,
    skip_end: int | None = None,
) -> dict[str, Suggestion]:
    """Apply every rule in :data:`RULES` to one curve, with their default options.

    ``skip_start`` and ``skip_end``, when given, override every rule's own defaults.
    """
    skips = {
        name: value
        for name, value in (("skip_start", skip_start), ("skip_end", skip_end))
        if value is not None
    }
    return {name: rule(lrs, losses, **skips) for name, rule in RULES.items()}


def consensus(
    lrs: FloatArrayLike,
    per_seed_losses: Sequence[FloatArrayLike],
    rule: str | Callable[..., Suggestion] = DEFAULT_RULE,
    **options: Any,
) -> Consensus:
    """Apply ``rule`` to each seed's curve and take the median answer in log10 space.

    Args:
        lrs: Learning rates of the sweep, shared by the seeds.
        per_seed_losses: One smoothed loss curve per seed. Curves may be shorter than ``lrs``
            (a sweep stopped at its own divergence); curve ``k`` is paired with
            ``lrs[:len(per_seed_losses[k])]``.
        rule: A name in :data:`RULES` or :data:`PEER_RULES`, or a rule function.
        options: Passed to the rule for every seed, e.g. ``skip_start``.

    Returns:
        The consensus suggestion, every seed's own suggestion, and their spread in decades.
        When fewer than half of the seeds answer, the consensus has no ``lr`` and its reason
        lists why each failing seed gave none.

    Raises:
        ValueError: No curves, a curve longer than ``lrs``, an unknown rule, or invalid
            ``lrs``.
    """
    rule_fn = _resolve_rule(rule)
    lr_array = _as_lrs(lrs)
    if len(per_seed_losses) == 0:
        raise ValueError("per_seed_losses is empty: give at least one seed's curve")
    for seed, losses in enumerate(per_seed_losses):
        if len(losses) > len(lr_array):
            raise ValueError(
                f"seed {seed} has {len(losses)} losses but there are only {len(lr_array)} lrs"
            )

    per_seed = [rule_fn(lr_array[: len(losses)], losses, **options) for losses in per_seed_losses]
    answers = [s.lr for s in per_seed if s.lr is not None]
    if 2 * len(answers) < len(per_seed):
        reason = _no_consensus_reason(per_seed)
        return Consensus(
            suggestion=Suggestion(rule="consensus", lr=None, index=None, reason=reason),
            per_seed=per_seed,
            spread_decades=None,
            agreement="n/a",
        )

    median_lr = _median_in_log_space(answers)
    index = int(np.argmin(np.abs(np.log10(lr_array) - math.log10(median_lr))))
    spread = math.log10(max(answers) / min(answers)) if len(answers) > 1 else None
    return Consensus(
        suggestion=Suggestion(rule="consensus", lr=median_lr, index=index),
        per_seed=per_seed,
        spread_decades=spread,
        agreement=_agreement(spread),
    )


def _apply_rule(
    rule: str,
    lrs: FloatArrayLike,
    losses: FloatArrayLike,
    skip_start: int | None,
    skip_end: int | None,
    pick: Callable[[_Curve], int],
    lr_factor: float = 1.0,
) -> Suggestion:
    try:
        curve = _prepare(lrs, losses, skip_start, skip_end)
        i = pick(curve)
    except _NoSuggestion as no_suggestion:
        return Suggestion(rule=rule, lr=None, index=None, reason=no_suggestion.reason)
    return Suggestion(rule=rule, lr=float(curve.lrs[i]) * lr_factor, index=curve.offset + int(i))


def _prepare(
    lrs: FloatArrayLike,
    losses: FloatArrayLike,
    skip_start: int | None,
    skip_end: int | None,
) -> _Curve:
    lr_array = _as_lrs(lrs)
    loss_array = _as_1d(losses, "losses")
    if len(loss_array) != len(lr_array):
        raise ValueError(f"got {len(lr_array)} lrs but {len(loss_array)} losses")
    for name, skip in (("skip_start", skip_start), ("skip_end", skip_end)):
        if skip is not None and skip < 0:
            raise ValueError(f"{name} must be >= 0, got {skip}")

    n_finite = _finite_prefix_length(loss_array)
    default_start, default_end = default_skips(n_finite)
    start = default_start if skip_start is None else skip_start
    stop = n_finite - (default_end if skip_end is None else skip_end)
    if stop - start < MIN_POINTS:
        raise _NoSuggestion(_too_short_reason(loss_array, n_finite, start, n_finite - stop))

    curve = _Curve(lrs=lr_array[start:stop], losses=loss_array[start:stop], offset=start)
    if _is_flat(curve.losses):
        raise _NoSuggestion(_CURVE_IS_FLAT)
    if np.all(np.diff(curve.losses) >= 0):
        raise _NoSuggestion(_LOSS_NEVER_DECREASES)
    return curve


def _as_1d(values: FloatArrayLike, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _as_lrs(lrs: FloatArrayLike) -> FloatArray:
    array = _as_1d(lrs, "lrs")
    bad = np.flatnonzero(~(np.isfinite(array) & (array > 0)))
    if bad.size:
        raise ValueError(f"lrs must be positive and finite, but lrs[{bad[0]}] = {array[bad[0]]}")
    not_increasing = np.flatnonzero(np.diff(array) <= 0)
    if not_increasing.size:
        i = int(not_increasing[0])
        raise ValueError(
            f"lrs must be strictly increasing, but lrs[{i}] = {array[i]} "
            f"and lrs[{i + 1}] = {array[i + 1]}"
        )
    return array


def _finite_prefix_length(losses: FloatArray) -> int:
    non_finite = np.flatnonzero(~np.isfinite(losses))
    return int(non_finite[0]) if non_finite.size else len(losses)


def _too_short_reason(losses: FloatArray, n_finite: int, skip_start: int, skip_end: int) -> str:
    if n_finite == 0 and len(losses) > 0:
        return f"no finite loss: the curve is {losses[0]} from its first point"
    reason = f"curve too short: {n_finite} finite points"
    if n_finite < len(losses):
        reason += f" (loss is {losses[n_finite]} at index {n_finite})"
    if skip_start or skip_end:
        kept = max(0, n_finite - skip_start - skip_end)
        reason += (
            f", {kept} left after skipping {skip_start} at the start and {skip_end} at the end"
        )
    return reason + f", need at least {MIN_POINTS}"


def _is_flat(losses: FloatArray) -> bool:
    return bool(np.ptp(losses) <= FLAT_TOLERANCE * np.max(np.abs(losses)))


def _steepest_index(curve: _Curve) -> int:
    slopes = np.gradient(curve.losses, np.log10(curve.lrs))[1:-1]
    i = int(np.argmin(slopes))
    if slopes[i] >= 0:
        raise _NoSuggestion(_LOSS_NEVER_DECREASES)
    return i + 1


def _fastai_valley_index(curve: _Curve) -> int:
    start, end = _fastai_longest_valley(curve.losses)
    sections = (end - start) / 3
    return max(0, start + int(sections) + int(sections / 2))


def _fastai_longest_valley(losses: FloatArray) -> tuple[int, int]:
    """fastai's ``(max_start, max_end)``: ``max_end`` is the last point of the earliest-ending
    longest strictly decreasing subsequence, ``max_start`` is ``max_end`` minus its length."""
    lengths = np.ones(len(losses), dtype=np.int64)
    for i in range(1, len(losses)):
        # fastai's inner loop: lds[i] = max(lds[j] + 1) over j < i with losses[j] > losses[i].
        longer = lengths[:i][losses[:i] > losses[i]]
        if longer.size:
            lengths[i] = longer.max() + 1
    # fastai moves max_end only on a strictly longer subsequence, so the earliest end wins.
    max_end = int(np.argmax(lengths))
    return max_end - int(lengths[max_end]), max_end


def _longest_run_index(curve: _Curve) -> int:
    start, end = _longest_decreasing_run(curve.losses)
    span = end - start
    return start + span // 3 + span // 6


def _longest_decreasing_run(losses: FloatArray) -> tuple[int, int]:
    """First and last point of the earliest longest run of strictly decreasing losses."""
    falling = np.concatenate(([0], (np.diff(losses) < 0).astype(np.int8), [0]))
    edges = np.diff(falling)
    # A run of falling steps s..e-1 joins the points s..e.
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    longest = int(np.argmax(ends - starts))
    return int(starts[longest]), int(ends[longest])


def _steepest_per_step_index(curve: _Curve) -> int:
    return int(np.argmin(np.gradient(curve.losses)))


def _steepest_per_lr_index(curve: _Curve) -> int:
    return int(np.argmin(np.gradient(curve.losses, curve.lrs)))


def _minimum_index(curve: _Curve) -> int:
    return int(np.argmin(curve.losses))


def _slide_index(curve: _Curve, lr_diff: int, threshold: float) -> int:
    n = len(curve.losses)
    log_lrs = np.log10(curve.lrs)
    mean_log_step = (log_lrs[-1] - log_lrs[0]) / (n - 1)
    gradient = np.gradient(curve.losses, log_lrs) * mean_log_step
    gap = min(lr_diff, (n - 1) // 2)
    # differs[l] compares the window's left end l with its right end l + gap.
    differs = np.abs(gradient[gap:] - gradient[:-gap]) > threshold
    agreeing = np.flatnonzero(~differs)
    if agreeing.size == 0:
        return 0
    # The slide from the right stops at the rightmost agreeing window; the answer is the window
    # before it, or the first window if the slide stopped at once.
    return min(int(agreeing[-1]) + 1, n - 1 - gap)


def _resolve_rule(rule: str | Callable[..., Suggestion]) -> Callable[..., Suggestion]:
    if callable(rule):
        return rule
    known = {**RULES, **PEER_RULES}
    if rule not in known:
        raise ValueError(f"unknown rule {rule!r}; choose one of {sorted(known)}")
    return known[rule]


def _median_in_log_space(lrs: Sequence[float]) -> float:
    # The geometric mean of the two middle values is the median of their log10; taking it
    # without a log round trip lets seeds that agree return their LR exactly.
    ordered = sorted(lrs)
    middle = len(ordered) // 2
    if len(ordered) % 2 == 1:
        return ordered[middle]
    low, high = ordered[middle - 1], ordered[middle]
    return low if low == high else math.sqrt(low * high)


def _agreement(spread_decades: float | None) -> str:
    if spread_decades is None:
        return "n/a"
    if spread_decades <= _HIGH_AGREEMENT_DECADES:
        return "high"
    if spread_decades <= _MEDIUM_AGREEMENT_DECADES:
        return "medium"
    return "low"


def _no_consensus_reason(per_seed: Sequence[Suggestion]) -> str:
    failures = "; ".join(
        f"seed {seed}: {s.reason}" for seed, s in enumerate(per_seed) if s.lr is None
    )
    answered = sum(s.lr is not None for s in per_seed)
    return (
        f"only {answered} of {len(per_seed)} seeds gave a suggestion, "
        f"need at least half ({failures})"
    )
