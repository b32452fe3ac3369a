"""The ``torch.optim`` optimizers a job may name, with their keyword arguments, as data.

:mod:`lrtune.spec` validates an optimizer's JSON keyword arguments here, without importing
torch (the HTTP API checks specs without it); ``tests/test_optimizer_signatures.py`` pins
:data:`OPTIMIZERS` against the installed torch's signatures, so a torch upgrade that adds,
renames or re-defaults a keyword fails that test instead of a job.

Every optimizer that trains with a plain ``optimizer.step()`` is here, by its lower-case
class name. Left out (:data:`LEFT_OUT` says why): ``LBFGS`` (its ``step`` needs a closure that
re-evaluates the loss), ``SparseAdam`` (sparse gradients only; a dense layer's step fails) and
``Muon`` (2-D parameters only: a model's biases and norms would need a second optimizer).

A keyword's JSON value is one of :data:`KINDS`: a number (``int`` or ``float``, finite), a
boolean, or a pair of numbers (``betas``, ``etas``). Bounds are the ones torch's constructor
checks, so a spec that validates builds. ``lr`` is never a keyword here: it is what lrtune
tunes. Neither are the keywords of :data:`EXCLUDED_KEYWORDS`.

Example:
    >>> OPTIMIZERS["rmsprop"].torch_class, OPTIMIZERS["rmsprop"].torch_lr
    ('RMSprop', 0.01)
    >>> check_keywords("rmsprop", {"momentum": 1, "centered": True})
    {'momentum': 1.0, 'centered': True}
    >>> check_keywords("rmsprop", {"betas": [0.9, 0.99]})
    Traceback (most recent call last):
    ...
    ValueError: rmsprop takes no keyword 'betas'; rmsprop accepts alpha (a number >= 0), ...
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "EXCLUDED_KEYWORDS",
    "KINDS",
    "LEFT_OUT",
    "OPTIMIZERS",
    "Bounds",
    "Keyword",
    "OptimizerInfo",
    "accepted",
    "check_keywords",
]

Kind = Literal["number", "boolean", "pair", "pair_first_optional"]
KINDS: dict[Kind, str] = {
    "number": "a number",
    "boolean": "true or false",
    "pair": "a pair [number, number]",
    "pair_first_optional": "a pair [number or null, number]",
}
"""Each JSON kind of keyword value, as an error message names it."""

KeywordValue = float | bool | tuple[float | None, float]
"""A keyword's value as the torch constructor takes it (a pair is a tuple)."""


@dataclass(frozen=True)
class Bounds:
    """An interval of allowed numbers; each end closed unless marked open."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        if self.low == -math.inf:
            return f"< {self.high:g}" if self.high_open else f"<= {self.high:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


NON_NEGATIVE = Bounds(0.0)
BETA = Bounds(0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class Keyword:
    """One keyword argument: its JSON kind, torch's default, and the bounds torch checks.

    ``bounds`` holds for each number of a pair, or, given as two, for each in turn.
    """

    kind: Kind
    default: KeywordValue
    bounds: Bounds | tuple[Bounds, Bounds] | None = None

    def describe(self) -> str:
        """E.g. ``a number >= 0`` or ``a pair [number, number] each in [0, 1)``."""
        text = KINDS[self.kind]
        if isinstance(self.bounds, Bounds):
            text += f" each {self.bounds}" if self.kind.startswith("pair") else f" {self.bounds}"
        elif self.bounds is not None:
            text += f", the first {self.bounds[0]}, the second {self.bounds[1]}"
        return text


@dataclass(frozen=True)
class OptimizerInfo:
    """One ``torch.optim`` class: its name there, its default LR and its keywords."""

    torch_class: str
    torch_lr: float
    keywords: dict[str, Keyword]

    @property
    def has_betas(self) -> bool:
        """Adam-style: ``onecycle`` cycles beta1 (:func:`lrtune.schedules.cycles_momentum`)."""
        return "betas" in self.keywords

    @property
    def has_momentum(self) -> bool:
        """SGD-style: a ``momentum`` keyword that ``onecycle`` and ``cyclic`` may cycle."""
        return "momentum" in self.keywords


def _kw(kind: Kind, default: KeywordValue, bounds: Any = None) -> Keyword:
    return Keyword(kind, default, bounds)


_BETAS = _kw("pair", (0.9, 0.999), BETA)
_EPS = _kw("number", 1e-8, NON_NEGATIVE)
_DECAY = _kw("number", 0.0, NON_NEGATIVE)
_FLAG = _kw("boolean", False)

OPTIMIZERS: dict[str, OptimizerInfo] = {
    "sgd": OptimizerInfo(
        "SGD",
        1e-3,
        {
            "momentum": _kw("number", 0.0, NON_NEGATIVE),
            "dampening": _kw("number", 0.0),
            "weight_decay": _DECAY,
            "nesterov": _FLAG,
        },
    ),
    "adam": OptimizerInfo(
        "Adam",
        1e-3,
        {
            "betas": _BETAS,
            "eps": _EPS,
            "weight_decay": _DECAY,
            "amsgrad": _FLAG,
            "decoupled_weight_decay": _FLAG,
        },
    ),
    "adamw": OptimizerInfo(
        "AdamW",
        1e-3,
        {
            "betas": _BETAS,
            "eps": _EPS,
            "weight_decay": _kw("number", 0.01, NON_NEGATIVE),
            "amsgrad": _FLAG,
        },
    ),
    "rmsprop": OptimizerInfo(
        "RMSprop",
        1e-2,
        {
            "alpha": _kw("number", 0.99, NON_NEGATIVE),
            "eps": _EPS,
            "weight_decay": _DECAY,
            "momentum": _kw("number", 0.0, NON_NEGATIVE),
            "centered": _FLAG,
        },
    ),
    "nadam": OptimizerInfo(
        "NAdam",
        2e-3,
        {
            "betas": _BETAS,
            "eps": _EPS,
            "weight_decay": _DECAY,
            "momentum_decay": _kw("number", 0.004, NON_NEGATIVE),
            "decoupled_weight_decay": _FLAG,
        },
    ),
    "radam": OptimizerInfo(
        "RAdam",
        1e-3,
        {"betas": _BETAS, "eps": _EPS, "weight_decay": _DECAY, "decoupled_weight_decay": _FLAG},
    ),
    "adamax": OptimizerInfo("Adamax", 2e-3, {"betas": _BETAS, "eps": _EPS, "weight_decay": _DECAY}),
    "adagrad": OptimizerInfo(
        "Adagrad",
        1e-2,
        {
            "lr_decay": _DECAY,
            "weight_decay": _DECAY,
            "initial_accumulator_value": _DECAY,
            "eps": _kw("number", 1e-10, NON_NEGATIVE),
        },
    ),
    "adadelta": OptimizerInfo(
        "Adadelta",
        1.0,
        {
            "rho": _kw("number", 0.9, Bounds(0.0, 1.0)),
            "eps": _kw("number", 1e-6, NON_NEGATIVE),
            "weight_decay": _DECAY,
        },
    ),
    "asgd": OptimizerInfo(
        "ASGD",
        1e-2,
        {
            "lambd": _kw("number", 1e-4),
            "alpha": _kw("number", 0.75),
            "t0": _kw("number", 1e6),
            "weight_decay": _DECAY,
        },
    ),
    "rprop": OptimizerInfo(
        "Rprop",
        1e-2,
        {
            "etas": _kw(
                "pair",
                (0.5, 1.2),
                (Bounds(0.0, 1.0, low_open=True, high_open=True), Bounds(1.0, low_open=True)),
            ),
            "step_sizes": _kw("pair", (1e-6, 50.0)),
        },
    ),
    "adafactor": OptimizerInfo(
        "Adafactor",
        1e-2,
        {
            "beta2_decay": _kw("number", -0.8, Bounds(high=0.0)),
            "eps": _kw("pair_first_optional", (None, 1e-3), NON_NEGATIVE),
            "d": _kw("number", 1.0, Bounds(1.0)),
            "weight_decay": _DECAY,
        },
    ),
}
"""Each optimizer by its lower-case name: torch's class, default LR and keywords, in the
signature's order. ``adafactor`` needs torch >= 2.5 (building it on an older torch is an
error that says so)."""

LEFT_OUT: dict[str, str] = {
    "LBFGS": "its step() needs a closure that re-evaluates the loss",
    "SparseAdam": "it takes sparse gradients only (nn.Embedding(sparse=True)); dense layers fail",
    "Muon": "it takes 2-D parameters only; biases and norms would need a second optimizer",
}
"""``torch.optim`` classes a job cannot name, and why."""

EXCLUDED_KEYWORDS: dict[str, str] = {
    "params": "lrtune passes the model's param groups",
    "lr": "it is what lrtune tunes",
    "foreach": "an implementation choice (same numbers); torch picks it for the device",
    "fused": "an implementation choice (same numbers); torch picks it for the device",
    "capturable": "for CUDA graph capture, which lrtune does not do",
    "differentiable": "for differentiating through the step, which lrtune does not do",
    "maximize": "lrtune minimizes the job's loss",
}
"""Constructor keywords no spec may set, and why."""


def accepted(name: str, *, fields: tuple[str, ...] = ()) -> str:
    """The keywords ``name`` accepts in ``kwargs`` with their kinds, for an error message."""
    keywords = OPTIMIZERS[name].keywords
    listed = ", ".join(f"{k} ({kw.describe()})" for k, kw in keywords.items() if k not in fields)
    text = f"{name} accepts {listed or 'no keyword in kwargs'}"
    if fields:
        text += f"; {', '.join(fields)} are fields of the optimizer spec"
    return text


def check_keywords(
    name: str, kwargs: dict[str, Any], *, fields: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``kwargs`` checked against ``name``'s keywords, numbers as floats and pairs as lists.

    ``fields`` are keywords the optimizer spec sets with fields of its own (SGD's
    ``momentum``, ...): naming them here too would be a second place for one setting.

    Raises:
        ValueError: an unknown or excluded keyword, a value of the wrong kind, a number that is
            not finite or outside torch's bounds; the message names the accepted keywords.
    """
    keywords = OPTIMIZERS[name].keywords
    checked: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in fields:
            problem = f"set {key} with the optimizer's {key} field, not in kwargs"
        elif key in EXCLUDED_KEYWORDS:
            problem = f"{key} cannot be set: {EXCLUDED_KEYWORDS[key]}"
        elif key not in keywords:
            problem = f"{name} takes no keyword {key!r}"
        else:
            problem, checked[key] = _check_value(keywords[key], value)
            if not problem:
                continue
            problem = f"{name}'s {key} takes {problem}, got {_json(value)}"
        raise ValueError(f"{problem}; {accepted(name, fields=fields)}")
    return checked


def _check_value(keyword: Keyword, value: Any) -> tuple[str, Any]:
    """("", the value normalised) or (what it must be, None)."""
    if keyword.kind == "boolean":
        return ("", value) if isinstance(value, bool) else (keyword.describe(), None)
    if keyword.kind == "number":
        bounds = keyword.bounds if isinstance(keyword.bounds, Bounds) else None
        number = _finite(value, bounds)
        return ("", number) if number is not None else (keyword.describe(), None)
    if not isinstance(value, list | tuple) or len(value) != 2:
        return keyword.describe(), None
    each = keyword.bounds if isinstance(keyword.bounds, tuple) else (keyword.bounds,) * 2
    pair: list[float | None] = []
    for i, (x, bounds) in enumerate(zip(value, each, strict=True)):
        number = _finite(x, bounds)
        if number is None and not (x is None and i == 0 and keyword.kind == "pair_first_optional"):
            return keyword.describe(), None
        pair.append(number)
    return "", pair


def _finite(value: Any, bounds: Bounds | None) -> float | None:
    """``value`` as a float when it is a finite number within ``bounds``, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    if not math.isfinite(number) or (bounds is not None and number not in bounds):
        return None
    return number


def _json(value: Any) -> str:
    """``value`` as JSON writes it (``true``, ``[0.9, 0.99]``), cut short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
