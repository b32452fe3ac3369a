"""Small jobs for the tests: logistic regression on wine, a short range test, a unique name."""

from __future__ import annotations

import uuid
from typing import Any

from lrtune.spec import JobSpec

SMALL_JOB_BASELINES = ["constant_at_suggestion", "optimizer_default"]


def small_job(extra: dict[str, Any] | None = None, **search: Any) -> JobSpec:
    """A job with ``search`` options; ``extra`` overrides the model, dataset, batch size or adds
    top-level fields. Its name is unique, so its study never collides with another test's.

    Unless ``search`` says otherwise, it confirms only the two constant-LR baselines (not the
    learning-rate-free ones) and adds no adaptive confirmation seeds: fewer runs per test, and
    a fixed count of them; the tests of those features ask for them."""
    extra = dict(extra or {})
    search.setdefault("baselines", SMALL_JOB_BASELINES)
    search.setdefault("max_confirm_seeds", 0)
    return JobSpec.model_validate(
        {
            "name": f"t-{uuid.uuid4().hex[:12]}",
            "model": extra.pop("model", {"name": "logreg"}),
            "dataset": extra.pop("dataset", {"name": "wine"}),
            "batch_size": extra.pop("batch_size", 32),
            "range_test": {"seeds": 2, "num_iter": 40},
            "search": search,
            **extra,
        }
    )
