"""lrtune: learning-rate range finder and LR-schedule tuning for PyTorch.

The public API:

- :func:`find_lr` runs the LR range test and returns an :class:`LRFinderResult`;
- :mod:`lrtune.schedules` holds one spec per ``torch.optim.lr_scheduler`` family;
- :class:`JobSpec` defines a job; :func:`tune` searches schedules for it and returns a
  :class:`Recommendation`;
- :class:`Task` (with :class:`TaskBase`) is your own training code as one object: ``find_lr``
  and ``tune`` take one as they take a model or a spec;
- :mod:`lrtune.exceptions` holds the errors lrtune raises on purpose.

``import lrtune`` is cheap: each name is imported on first use, so a process that only
validates job specs (the HTTP API) never imports torch, Optuna or scikit-learn.

Example:
    >>> import lrtune
    >>> spec = lrtune.JobSpec.model_validate({"model": {"name": "mlp"}, "dataset": {"name": "x"}})
    >>> spec.search.n_trials
    30
    >>> sorted(lrtune.schedules.FAMILIES)[:3]
    ['constant', 'cosine', 'cosine_warm_restarts']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lrtune import exceptions, schedules
    from lrtune.finder import lr_sequence
    from lrtune.notebook import find_lr, tune
    from lrtune.recommendation import Recommendation
    from lrtune.result import LRFinderResult, SeedCurve
    from lrtune.search import prepare_study, run_worker
    from lrtune.spec import JobSpec
    from lrtune.suggestions import Consensus, Suggestion
    from lrtune.task import Task, TaskBase

__version__ = "0.1.0"

# Public name -> the module that defines it (a submodule when the name is the module itself).
_LAZY: dict[str, str] = {
    "Consensus": "lrtune.suggestions",
    "JobSpec": "lrtune.spec",
    "LRFinderResult": "lrtune.result",
    "Recommendation": "lrtune.recommendation",
    "SeedCurve": "lrtune.result",
    "Suggestion": "lrtune.suggestions",
    "exceptions": "lrtune.exceptions",
    "Task": "lrtune.task",
    "TaskBase": "lrtune.task",
    "find_lr": "lrtune.notebook",
    "lr_sequence": "lrtune.finder",
    "prepare_study": "lrtune.search",
    "schedules": "lrtune.schedules",
    "tune": "lrtune.notebook",
    "run_worker": "lrtune.search",
}

__all__ = [
    "Consensus",
    "JobSpec",
    "LRFinderResult",
    "Recommendation",
    "SeedCurve",
    "Suggestion",
    "Task",
    "TaskBase",
    "exceptions",
    "find_lr",
    "lr_sequence",
    "prepare_study",
    "run_worker",
    "schedules",
    "tune",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'lrtune' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name == f"lrtune.{name}" else getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
