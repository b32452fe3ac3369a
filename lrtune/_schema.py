"""The one schema system: pydantic bases and field types shared by every result model.

Results (range tests, training runs, recommendations) are pydantic models, so the CLI's
``--json``, what a worker stores and what the HTTP API serves are one definition with one JSON
schema. Two conventions hold for all of them:

- Non-finite floats (a diverged loss, an unbounded band) are ``null`` in JSON and ``nan`` in
  Python; :data:`JsonFloat` does the mapping both ways, so ``model_dump(mode="json")`` is strict
  JSON (``json.dumps(..., allow_nan=False)`` accepts it).
- Per-step LR rows repeat for whole epochs, so :data:`LRSteps` stores them run-length encoded
  (``[[row, count], ...]``) in JSON and expanded in Python.

Example:
    >>> class Curve(ResultModel):
    ...     losses: list[JsonFloat]
    ...     lr_steps: LRSteps = []
    >>> curve = Curve(losses=[1.0, float("inf")], lr_steps=[[0.1], [0.1], [0.05]])
    >>> curve.model_dump(mode="json")
    {'losses': [1.0, None], 'lr_steps': [[[0.1], 2], [[0.05], 1]]}
    >>> Curve.model_validate(curve.model_dump(mode="json")).lr_steps
    [[0.1], [0.1], [0.05]]
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)


class ResultModel(BaseModel):
    """Base of every result model: unknown keys are refused, so a typo is an error.

    Computed fields (``@computed_field``) are written to JSON for readers and recomputed, not
    read, when the JSON is validated back.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_computed_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.model_computed_fields:
            return {k: v for k, v in data.items() if k not in cls.model_computed_fields}
        return data


def _none_to_nan(value: Any) -> Any:
    return math.nan if value is None else value


def _nan_to_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


JsonFloat = Annotated[
    float,
    BeforeValidator(_none_to_nan),
    PlainSerializer(_nan_to_none, return_type=float | None, when_used="json"),
]
"""A float that may be NaN/inf in Python and is ``null`` in JSON."""


def run_length_encode(rows: list[list[float]]) -> list[list[Any]]:
    """``[[row, count], ...]`` for consecutive equal rows.

    Example:
        >>> run_length_encode([[1.0], [1.0], [0.5]])
        [[[1.0], 2], [[0.5], 1]]
    """
    encoded: list[list[Any]] = []
    for row in rows:
        if encoded and encoded[-1][0] == list(row):
            encoded[-1][1] += 1
        else:
            encoded.append([list(row), 1])
    return encoded


def run_length_decode(encoded: list[list[Any]]) -> list[list[float]]:
    """Inverse of :func:`run_length_encode`."""
    return [[float(x) for x in row] for row, count in encoded for _ in range(int(count))]


def _decode_if_encoded(value: Any) -> Any:
    """Accept both the expanded rows (Python) and the run-length encoding (JSON)."""
    is_encoded = (
        isinstance(value, list)
        and value
        and all(isinstance(item, (list, tuple)) and len(item) == 2 for item in value)
        and all(isinstance(item[0], (list, tuple)) for item in value)
    )
    return run_length_decode(value) if is_encoded else value


_RUN_LENGTH_SCHEMA = {
    "type": "array",
    "description": "run-length encoded rows: [[row, count], ...], row = one LR per param group",
    "items": {
        "type": "array",
        "prefixItems": [{"type": "array", "items": {"type": "number"}}, {"type": "integer"}],
        "minItems": 2,
        "maxItems": 2,
    },
}

LRSteps = Annotated[
    list[list[float]],
    BeforeValidator(_decode_if_encoded),
    PlainSerializer(run_length_encode, return_type=list[list[Any]], when_used="json"),
    WithJsonSchema(_RUN_LENGTH_SCHEMA),
]
"""The LR of every param group at every step: expanded in Python, run-length encoded in JSON."""
