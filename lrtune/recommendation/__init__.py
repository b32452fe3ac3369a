"""The answer to a job: the schedule to train with, why, and how sure lrtune is of it.

A search picks its best trials on one seed (the *search seed*), and on a small validation set the
top trials are often separated by less than seed noise. So the best ``search.finalists``
distinct schedules, and the baselines (``search.baselines``: a constant LR at the range test's
suggestion, the optimizer's default LR, and the learning-rate-free Prodigy and schedule-free at
their defaults, :mod:`lrtune.lr_free`), are retrained on ``search.confirm_seeds`` fresh seeds
(other initial weights and data order, the same seeds for every candidate), scored by their
**mean over the confirmation seeds only**: the search seed chose the finalists, so counting it
again would bring the winner's curse back. Its value is shown beside the others, marked.

The recommendation is picked among finalists *and* baselines (:func:`pick_recommended`): a
baseline that wins is the answer, since a constant LR or an optimizer that needs no LR is a
legitimate one. The candidate with the best mean leads; every candidate inside its seed noise
(by the rule below) is a contender too, and of the contenders the simplest is recommended
(:func:`simplicity`: a constant LR, then one-parameter decays, then the rest), so an extra
schedule parameter has to earn its place by more than the seed noise. A candidate that another
one beats (by the rule below) is never recommended. While the leader and another contender are
inside each other's noise, adaptive confirmation retrains the contenders on one more seed at a
time, up to ``search.max_confirm_seeds`` (:attr:`Recommendation.undecided`).

Two candidates are compared by :func:`paired_comparison` over the seeds both ran: the per-seed
improvement ``d_i`` (positive when the first is better), its mean ``m`` and standard error
``se = stdev(d) / sqrt(n)``. The rule, stated once:

- ``n >= 2`` and ``|m| <= se``, or ``|m|`` is negligible (at most :data:`NEGLIGIBLE_SHARE` of
  the spread between the best and the worst candidate's mean: a difference nobody would act on,
  such as two validation losses of 1e-6 and 0): the difference is **inside the seed noise**;
- ``n >= 2`` and ``|m| > se``: the recommendation **beats** the baseline (``m > 0``) or **does
  not beat** it (``m < 0``);
- ``n < 2``: the seed noise is **unmeasured**; the sign of the one difference is reported as such;
- every ``d_i`` is zero: the two **tie**.

A run that diverged scores as a loss on its seed and is left out of ``m`` and ``se``; a candidate
with a diverged run ranks last. With ``confirm_seeds: 0`` the search seed alone decides (the
best value there, the simpler of equals), and the recommendation says it is unconfirmed.

Every LR here (``base_lr``, ``suggested_lr``, ``bounds``) is the LR of a parameter whose
multiplier is 1; a param group trains at that LR times its ``lr_mult``.

Example:
    >>> from lrtune.spec import JobSpec
    >>> from lrtune.tuner import tune
    >>> spec = JobSpec.model_validate({
    ...     "model": {"name": "logreg"}, "dataset": {"name": "wine"},
    ...     "range_test": {"seeds": 2, "num_iter": 40},
    ...     "search": {"n_trials": 2, "epochs": 2, "families": ["cosine"], "confirm_seeds": 2}})
    >>> rec = tune(spec, progress=False)
    >>> rec.confirmed, len(rec.best.seed_values), [b.name for b in rec.baselines]
    (True, 2, ['constant at suggestion', 'sgd default lr', 'prodigy', 'schedule-free sgd'])
    >>> all(p.verdict != "does not beat" for p in rec.paired_comparisons)
    True
    >>> "optimizer = " in rec.to_code()
    True
    >>> paired_comparison("constant", {1: 0.9, 2: 0.8}, {1: 0.7, 2: 0.75}, "maximize").verdict
    'beats'
"""

from lrtune.recommendation._candidates import (
    ComparisonRow,
    PairedComparison,
    Role,
    SeedValue,
    TrainedSchedule,
    TrialSummary,
    Verdict,
)
from lrtune.recommendation._pick import (
    NEGLIGIBLE_SHARE,
    ONE_PARAMETER_DECAYS,
    SAME_WITHIN_NOISE,
    comparable,
    compare,
    contenders,
    negligible_difference,
    paired_comparison,
    pick_recommended,
    simplicity,
)
from lrtune.recommendation._recommendation import Recommendation

__all__ = [
    "NEGLIGIBLE_SHARE",
    "ONE_PARAMETER_DECAYS",
    "SAME_WITHIN_NOISE",
    "ComparisonRow",
    "PairedComparison",
    "Recommendation",
    "Role",
    "SeedValue",
    "TrainedSchedule",
    "TrialSummary",
    "Verdict",
    "comparable",
    "compare",
    "contenders",
    "negligible_difference",
    "paired_comparison",
    "pick_recommended",
    "simplicity",
]
