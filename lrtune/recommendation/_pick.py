"""The pick rule (stated in :mod:`lrtune.recommendation`'s doc): paired comparisons over the
seeds two candidates share, the contenders inside the leader's seed noise, and the simplest of
them that nothing beats."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from lrtune.recommendation._candidates import PairedComparison, TrainedSchedule, Verdict

SAME_WITHIN_NOISE: tuple[Verdict, ...] = ("inside the seed noise", "ties")
NEGLIGIBLE_SHARE = 1e-3
"""A mean paired difference at most this share of the spread between the best and the worst
candidate's mean is negligible: inside the seed noise, however small the noise measured."""

ONE_PARAMETER_DECAYS = ("exponential", "time_decay", "cosine")


def paired_comparison(
    baseline: str,
    ours: Mapping[int, float],
    theirs: Mapping[int, float],
    direction: str,
    negligible: float = 0.0,
) -> PairedComparison:
    """Compare two candidates seed by seed over the seeds both ran (the rule in the module doc).

    ``ours`` and ``theirs`` map seed to the metric (NaN for a diverged run); ``direction`` says
    whether larger is better; a mean difference of at most ``negligible`` is inside the noise.
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
        return _paired(baseline, len(shared), wins, None, None, verdict)
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        verdict = "beats" if mean > 0 else ("ties" if mean == 0 else "does not beat")
        return _paired(baseline, len(shared), wins, mean, None, verdict)
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    if all(d == 0 for d in diffs):
        verdict = "ties"
    elif abs(mean) <= max(se, negligible):
        verdict = "inside the seed noise"
    else:
        verdict = "beats" if mean > 0 else "does not beat"
    return _paired(baseline, len(shared), wins, mean, se, verdict)


def _paired(
    baseline: str,
    seeds: int,
    wins: int,
    mean: float | None,
    se: float | None,
    verdict: Verdict,
) -> PairedComparison:
    return PairedComparison(
        baseline=baseline,
        seeds=seeds,
        wins=wins,
        mean_improvement=mean,
        standard_error=se,
        verdict=verdict,
    )


def simplicity(candidate: TrainedSchedule) -> int:
    """How much a candidate asks of the user's run, lower is simpler.

    0: a constant LR; 1: a one-parameter decay (``exponential``, ``time_decay``, ``cosine``),
    or a constant LR behind a warm-up; 2: every other family, a decay behind a warm-up, and a
    learning-rate-free optimizer (it replaces the user's optimizer, the largest change).

    >>> from lrtune.recommendation import SeedValue, TrainedSchedule
    >>> from lrtune.schedules import parse_schedule
    >>> from lrtune.result import TrainingRun
    >>> def of(schedule):
    ...     return TrainedSchedule(name="x", role="finalist", schedule=parse_schedule(schedule),
    ...                            base_lr=0.1, run=TrainingRun())
    >>> [simplicity(of(s)) for s in ({"family": "constant"}, {"family": "cosine", "T_max": 5},
    ...                               {"family": "onecycle", "max_lr": 0.1})]
    [0, 1, 2]
    """
    if candidate.lr_free is not None:
        return 2
    family = candidate.schedule.family
    level = 0 if family == "constant" else 1 if family in ONE_PARAMETER_DECAYS else 2
    return min(2, level + (candidate.schedule.warmup is not None))


def _badness(candidate: TrainedSchedule, direction: str, metric: str | None) -> float:
    """Lower is better: the confirmed mean, or (``metric`` given) the search-seed value; a
    diverged or missing value is ``inf``."""
    value = candidate.value(metric) if metric is not None else candidate.mean
    if value is None or not math.isfinite(value):
        return math.inf
    return -value if direction == "maximize" else value


def negligible_difference(candidates: Sequence[TrainedSchedule]) -> float:
    """:data:`NEGLIGIBLE_SHARE` of the spread of the candidates' finite confirmed means."""
    means = [c.mean for c in candidates if c.mean is not None and math.isfinite(c.mean)]
    return NEGLIGIBLE_SHARE * (max(means) - min(means)) if means else 0.0


def compare(
    a: TrainedSchedule, b: TrainedSchedule, direction: str, negligible: float = 0.0
) -> PairedComparison:
    """``a`` against ``b`` over their confirmation seeds (:func:`paired_comparison`)."""
    return paired_comparison(
        b.name, a.confirmed_values(), b.confirmed_values(), direction, negligible
    )


def contenders(candidates: Sequence[TrainedSchedule], direction: str) -> list[int]:
    """Indices of the leader (the best confirmed mean) and of every finite candidate inside its
    seed noise, leader first, then by mean. Empty without candidates."""
    ranked = sorted(
        range(len(candidates)), key=lambda i: (_badness(candidates[i], direction, None), i)
    )
    if not ranked:
        return []
    leader = candidates[ranked[0]]
    negligible = negligible_difference(candidates)
    return ranked[:1] + [
        i
        for i in ranked[1:]
        if math.isfinite(_badness(candidates[i], direction, None))
        and compare(candidates[i], leader, direction, negligible).verdict in SAME_WITHIN_NOISE
    ]


def pick_recommended(
    candidates: Sequence[TrainedSchedule], direction: str, metric: str | None = None
) -> int | None:
    """Index of the candidate to recommend (the rule in the module doc); None without any.

    With confirmation values: the simplest of the :func:`contenders` (of equals, the better
    mean) that no finite candidate beats; the leader if every contender is beaten. Without
    (``metric`` given: the search seed alone decides): the best value on the search seed, the
    simpler of equals.

    >>> from lrtune.recommendation import SeedValue, TrainedSchedule
    >>> from lrtune.schedules import parse_schedule
    >>> from lrtune.result import TrainingRun
    >>> def of(name, family, values, **extra):
    ...     seeds = [SeedValue(seed=s, value=v, status="completed", epochs=5)
    ...              for s, v in enumerate(values)]
    ...     return TrainedSchedule(name=name, role="finalist", base_lr=0.1, run=TrainingRun(),
    ...                            schedule=parse_schedule({"family": family, **extra}),
    ...                            seed_values=seeds)
    >>> onecycle = of("trial 3", "onecycle", [0.91, 0.95, 0.90], max_lr=0.3)
    >>> constant = of("constant", "constant", [0.92, 0.93, 0.91])
    >>> pick_recommended([onecycle, constant], "maximize")  # inside the noise: the simpler
    1
    >>> far_better = of("trial 4", "onecycle", [0.97, 0.98, 0.96], max_lr=0.3)
    >>> pick_recommended([constant, far_better], "maximize")
    1
    """
    if not candidates:
        return None
    if metric is not None:
        return min(
            range(len(candidates)),
            key=lambda i: (
                _badness(candidates[i], direction, metric),
                simplicity(candidates[i]),
                i,
            ),
        )
    group = contenders(candidates, direction)
    finite = [c for c in candidates if math.isfinite(_badness(c, direction, None))]
    negligible = negligible_difference(candidates)
    for i in sorted(
        group,
        key=lambda i: (simplicity(candidates[i]), _badness(candidates[i], direction, None), i),
    ):
        if not any(
            compare(candidates[i], other, direction, negligible).verdict == "does not beat"
            for other in finite
            if other is not candidates[i]
        ):
            return i
    return group[0]


def comparable(
    finalists: Sequence[TrainedSchedule], baselines: Sequence[TrainedSchedule], confirmed: bool
) -> list[int]:
    """Indices in ``finalists + baselines`` of the candidates a recommendation is chosen among.

    A finalist that trains what a baseline trains is that baseline (its runs stand in), so it
    is counted once, as the baseline; when the recommendation is confirmed, a candidate without
    confirmation values (not run yet) cannot be compared and is left out.
    """
    return [
        k
        for k, c in enumerate([*finalists, *baselines])
        if not (c.role == "finalist" and any(c.same_run(b) for b in baselines))
        and (c.seed_values or not confirmed)
    ]
