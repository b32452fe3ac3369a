"""The one schema system: pydantic bases and field types shared by every result model.

Results (range tests, training runs, recommendations) are pydantic models, so the CLI's
``--json``, what a worker stores and what the HTTP API serves are one definition with one JSON
schema. These conventions hold for all of them:

- Non-finite floats (a diverged loss, an unbounded band) are ``null`` in JSON and ``nan`` in
  Python; :data:`JsonFloat` does the mapping both ways, so ``model_dump(mode="json")`` is strict
  JSON (``json.dumps(..., allow_nan=False)`` accepts it).
- Per-step LR rows repeat for whole epochs, so :data:`LRSteps` stores them run-length encoded
  (``[[row, count], ...]``) in JSON and expanded in Python.
- Free-form JSON (a model's or dataset's params: :data:`JsonObject`) and names
  (:data:`JsonText`) are checked where they come in, so that whatever is stored can be served
  again: every string is Unicode text (no lone surrogate, which UTF-8 cannot encode), numbers
  are finite (JSON has no inf or NaN) and nesting stops at :data:`MAX_JSON_DEPTH`.

Example:
    >>> class Curve(ResultModel):
    ...     losses: list[JsonFloat]
    ...     lr_steps: LRSteps = []
    >>> curve = Curve(losses=[1.0, float("inf")], lr_steps=[[0.1], [0.1], [0.05]])
    >>> curve.model_dump(mode="json")
    {'losses': [1.0, None], 'lr_steps': [[[0.1], 2], [[0.05], 1]]}
    >>> Curve.model_validate(curve.model_dump(mode="json")).lr_steps
    [[0.1], [0.1], [0.05]]

    Free-form JSON is refused where it comes in if it could not be served back:

    >>> class Layer(ResultModel):
    ...     params: JsonObject
    >>> Layer(params={"hidden": [64, 32]}).params
    {'hidden': [64, 32]}
    >>> try:
    ...     Layer(params={"hidden": [64, float("nan")]})
    ... except ValueError as exc:
    ...     print(exc.errors()[0]["msg"])
    at hidden.1: nan is not a finite number (JSON has no inf or NaN): send valid JSON (whole \
characters, finite numbers, at most 32 levels deep)
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError


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


MAX_JSON_DEPTH = 32
"""How many objects and arrays deep free-form JSON may nest (a ``sequential`` model's layers
need about a dozen); the JSON serializer gives up near 255, so deeper could not be served."""

JsonPath = tuple[str | int, ...]


def json_problem(value: Any, depth: int = 1) -> tuple[JsonPath, str] | None:
    """The first thing in JSON ``value`` that could not be served back as JSON, and its path.

    ``depth`` is how deep ``value`` already is (1: it is the top-level object).

    Example:
        >>> json_problem({"layers": [1, 2.5, "relu"]}) is None
        True
        >>> bad = {"act": ["relu", "gelu\\ud800"]}
        >>> json_problem(bad)[0]
        ('act', 1)
        >>> print(json_problem(bad)[1])
        the string 'gelu\\ud800' holds a lone surrogate (\\ud800), which is not Unicode text
        >>> json_problem({"lr": [1.0, float("inf")]})
        (('lr', 1), 'inf is not a finite number (JSON has no inf or NaN)')
    """
    if isinstance(value, str):
        return None if _is_text(value) else ((), _surrogate_problem(value, "the string"))
    if isinstance(value, float):
        return None if math.isfinite(value) else ((), f"{value} {_NOT_FINITE}")
    if isinstance(value, dict):
        bad_key = next((k for k in value if isinstance(k, str) and not _is_text(k)), None)
        if bad_key is not None:
            return (), _surrogate_problem(bad_key, "the key")
        items: list[tuple[str | int, Any]] = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    else:
        return None
    if depth > MAX_JSON_DEPTH:
        return (), f"it nests deeper than {MAX_JSON_DEPTH} objects and arrays"
    for key, item in items:
        found = json_problem(item, depth + 1)
        if found is not None:
            return (key, *found[0]), found[1]
    return None


_NOT_FINITE = "is not a finite number (JSON has no inf or NaN)"


def _is_text(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: no lone surrogate (what ``"\\ud800"`` in JSON gives)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surrogate_problem(text: str, what: str) -> str:
    surrogate = next(c for c in text if 0xD800 <= ord(c) <= 0xDFFF)
    shown = text if len(text) <= 40 else text[:37] + "..."
    code = f"\\u{ord(surrogate):04x}"
    return f"{what} {shown!r} holds a lone surrogate ({code}), which is not Unicode text"


def _check_json(value: Any) -> Any:
    found = json_problem(value)
    if found is None:
        return value
    path, problem = found
    where = ".".join(map(str, path))
    raise PydanticCustomError(
        "json_unservable",
        "{where}{problem}: send valid JSON (whole characters, finite numbers, at most "
        "{max_depth} levels deep)",
        {
            "where": f"at {where}: " if where else "",
            "problem": problem,
            "max_depth": MAX_JSON_DEPTH,
        },
    )


JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json)]
"""A free-form JSON object (a model's or dataset's params) that can always be served back."""

JsonText = Annotated[str, AfterValidator(_check_json)]
"""A string that is Unicode text (no lone surrogate), so that it can be served back as JSON."""
