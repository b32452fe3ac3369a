"""lrtune: learning-rate range finder and LR-schedule tuning for PyTorch.

Example:
    >>> import lrtune
    >>> sorted(lrtune.schedules.FAMILIES)[:3]
    ['constant', 'cosine', 'cosine_warm_restarts']
"""

from lrtune import schedules
from lrtune.finder import find_lr, lr_sequence
from lrtune.result import LRFinderResult, SeedCurve
from lrtune.suggestions import Consensus, Suggestion

__version__ = "0.1.0"

__all__ = [
    "Consensus",
    "LRFinderResult",
    "SeedCurve",
    "Suggestion",
    "find_lr",
    "lr_sequence",
    "schedules",
]
