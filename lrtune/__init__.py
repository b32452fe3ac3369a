"""lrtune: learning-rate range finder and LR-schedule tuning for PyTorch.

The public API:

- :func:`find_lr` runs the LR range test and returns an :class:`LRFinderResult`;
- :mod:`lrtune.schedules` holds one spec per ``torch.optim.lr_scheduler`` family;
- :class:`JobSpec` defines a job; :func:`tune` searches schedules for it and returns a
  :class:`Recommendation`.

Example:
    >>> import lrtune
    >>> spec = lrtune.JobSpec.model_validate({"model": {"name": "mlp"}, "dataset": {"name": "x"}})
    >>> spec.search.n_trials
    30
    >>> sorted(lrtune.schedules.FAMILIES)[:3]
    ['constant', 'cosine', 'cosine_warm_restarts']
"""

from lrtune import schedules
from lrtune.finder import find_lr, lr_sequence
from lrtune.recommendation import Recommendation
from lrtune.result import LRFinderResult, SeedCurve
from lrtune.spec import JobSpec
from lrtune.suggestions import Consensus, Suggestion
from lrtune.tuner import prepare_study, tune, work

__version__ = "0.1.0"

__all__ = [
    "Consensus",
    "JobSpec",
    "LRFinderResult",
    "Recommendation",
    "SeedCurve",
    "Suggestion",
    "find_lr",
    "lr_sequence",
    "prepare_study",
    "schedules",
    "tune",
    "work",
]
