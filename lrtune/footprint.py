"""What a job will cost before it runs: its peak memory and its compute, worked out without torch.

:func:`estimate` reads a built-in model's params (``logreg``, ``mlp``, ``cnn``, ``sequential``
with every size inferred by :func:`lrtune.sequential.plan_layers`) against one sample's shape,
and counts, per copy of the model, the parameters, their gradients, the optimizer's state
(:func:`optimizer_states`: two values per parameter for Adam, one for SGD with momentum), two
working copies a step allocates (:data:`WORKING_COPIES`) and the activations a training step
keeps for its backward pass (``batch_size`` samples, float32).
The range test trains its ``range_test.seeds`` copies at once (vectorized), so the model's
memory counts that many times; the dataset is held once. Compute is the FLOPs of one training
step (3x the forward pass) times the steps: the range test's ``num_iter`` x ``seeds`` (x its
accumulation steps), the search's ``n_trials`` x ``epochs`` x steps per epoch, and the
confirmation's finalists and baselines x ``max(confirm_seeds, max_confirm_seeds)`` seeds x
``epochs`` x steps per epoch.

The estimate is an upper bound of the order of magnitude, not a promise: it ignores the
framework's own overhead (a few hundred MB) and the allocator's slack. A plugin's model (whose
shapes only its factory knows) or params that do not validate have no estimate (``None``):
admission refuses the params for what they are, elsewhere.

:func:`check_admission` compares the estimate with the caps (``LRTUNE_MAX_JOB_GB``,
``LRTUNE_MAX_JOB_TFLOPS``) and raises :class:`JobTooLargeError`, whose ``loc`` is the field to
change, with the estimate, the cap and what to change in the message; the job store applies it
to every submit (HTTP and ``lrtune submit --database``). A worker checks the estimate again
against its device's free memory (:func:`free_memory_bytes`, :func:`check_fits`) before it
starts a job's unit.

Example:
    >>> from lrtune.spec import JobSpec
    >>> spec = JobSpec.model_validate({"model": {"name": "mlp", "params": {"hidden": [64]}},
    ...                                "dataset": {"name": "digits"}})
    >>> cost = estimate(spec, ((64,), 10), n_samples=1797)
    >>> cost.parameters, round(cost.memory_gb, 4), round(cost.tflops, 3)
    (4810, 0.0011, 0.046)
    >>> big = JobSpec.model_validate({"model": {"name": "mlp", "params": {"hidden": [4096] * 8}},
    ...                               "dataset": {"name": "digits"}, "optimizer": {"name": "adam"},
    ...                               "range_test": {"seeds": 16}})
    >>> check_admission(big, ((64,), 10), 1797, max_gb=8, max_tflops=1000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lrtune.footprint.JobTooLargeError: the job needs about 45.5 GB of memory, more than the cap \
of 8 GB (LRTUNE_MAX_JOB_GB): use fewer range_test.seeds (each of the 16 holds a copy of the \
model), a smaller model or a smaller batch_size (117,776,394 parameters; ...)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lrtune.exceptions import InvalidInputError

Shape = tuple[int, ...]

BYTES_PER_VALUE = 4
"""float32: parameters, gradients, optimizer state, activations and data."""
GB = 10**9
WORKING_COPIES = 2
"""Values per parameter that a step allocates besides the parameter, its gradient and the
optimizer's state: the range test's replicas before they are stacked, the gradient as computed
before it is stored, the optimizer's foreach temporaries. Measured on a 8.5M-parameter MLP's
4-seed range test (tests/test_footprint.py): without them the estimate was half the peak."""

_BUILTIN_SAMPLES = {"digits": 1797, "breast_cancer": 569, "wine": 178, "diabetes": 442}
_OPTIMIZER_STATES = {
    "adam": 2,
    "adamw": 2,
    "nadam": 2,
    "radam": 2,
    "adamax": 2,
    "adagrad": 1,
    "adadelta": 2,
    "rmsprop": 2,
    "asgd": 2,
    "rprop": 2,
    "lbfgs": 2,
}


class JobTooLargeError(InvalidInputError):
    """A job's estimated memory or compute exceeds a cap or the device's free memory.

    ``loc`` is the spec field to change (``("range_test", "seeds")``, ``("model", "params")``,
    ...), for an API that reports field paths; ``estimate`` is the :class:`Footprint`.
    """

    def __init__(self, loc: tuple[str | int, ...], message: str, estimate: Footprint) -> None:
        self.loc = loc
        self.estimate = estimate
        super().__init__(message)

    def __reduce__(self) -> Any:
        return type(self), (self.loc, str(self), self.estimate)  # picklable, out of a worker


@dataclass(frozen=True)
class Footprint:
    """A job's estimated cost; see the module for what each part counts."""

    parameters: int
    """Parameters of one copy of the model."""
    copies: int
    """Copies of the model trained at once (the range test's seeds)."""
    model_bytes: int
    """One copy's parameters, gradients, working copies and optimizer state."""
    activation_bytes: int
    """One copy's activations for one batch."""
    data_bytes: int
    """The dataset, held once."""
    flops: float | None
    """The job's training FLOPs; ``None`` when the dataset's size is not known."""

    @property
    def memory_bytes(self) -> int:
        """Peak memory: the data plus every copy's model state and activations."""
        return self.data_bytes + self.copies * (self.model_bytes + self.activation_bytes)

    @property
    def memory_gb(self) -> float:
        return self.memory_bytes / GB

    @property
    def tflops(self) -> float:
        return (self.flops or 0.0) / 1e12

    def describe(self) -> str:
        """One line: the memory's parts and the compute."""
        compute = "unknown" if self.flops is None else f"{self.tflops:.3g} TFLOPs"
        return (
            f"{self.parameters:,} parameters; per copy {self.model_bytes / GB:.3g} GB of "
            "parameters, gradients, working copies and optimizer state and "
            f"{self.activation_bytes / GB:.3g} GB of activations, x {self.copies} range-test "
            "seeds at once, plus "
            f"{self.data_bytes / GB:.3g} GB of data; compute {compute}"
        )


@dataclass(frozen=True)
class _Cost:
    """Per sample and one copy: parameters, activation values kept, forward FLOPs."""

    parameters: int = 0
    activations: int = 0
    flops: int = 0

    def __add__(self, other: _Cost) -> _Cost:
        return _Cost(
            self.parameters + other.parameters,
            self.activations + other.activations,
            self.flops + other.flops,
        )


def optimizer_states(name: str, momentum: float = 0.0) -> int:
    """Values an optimizer keeps per parameter (2 for one it does not know: Adam's).

    >>> optimizer_states("AdamW"), optimizer_states("sgd", 0.9), optimizer_states("sgd", 0)
    (2, 1, 0)
    """
    key = name.lower()
    if key == "sgd":
        return 1 if momentum > 0 else 0
    return _OPTIMIZER_STATES.get(key, 2)


def dataset_samples(name: str, params: dict[str, Any]) -> int | None:
    """Samples of a built-in dataset (``synthetic``'s from its params); ``None`` if unknown."""
    if name == "synthetic":
        return int(params.get("n_samples", 2000))
    return _BUILTIN_SAMPLES.get(name)


def estimate(
    spec: Any, shapes: tuple[Sequence[int], int], n_samples: int | None
) -> Footprint | None:
    """The job's :class:`Footprint` for one sample's ``(input_shape, output_dim)``.

    Args:
        spec: a :class:`lrtune.spec.JobSpec`.
        shapes: one sample's input shape and the output dimension (the dataset's).
        n_samples: the dataset's samples (for the data's memory and the steps per epoch);
            ``None``: unknown, so the data counts nothing and the compute is ``None``.

    Returns:
        ``None`` for a model that is not built in, or params that do not validate.
    """
    input_shape, output_dim = tuple(shapes[0]), shapes[1]
    try:
        cost = _model_cost(spec.model.name, spec.model.params, input_shape, output_dim)
    except (InvalidInputError, ValueError):
        return None
    if cost is None:
        return None
    copies = max(spec.range_test.seeds, 1)
    states = optimizer_states(str(spec.optimizer.name), spec.optimizer.momentum)
    model_bytes = cost.parameters * (2 + WORKING_COPIES + states) * BYTES_PER_VALUE
    activation_bytes = cost.activations * spec.batch_size * BYTES_PER_VALUE
    data_bytes = (n_samples or 0) * math.prod(input_shape) * BYTES_PER_VALUE
    flops = None
    if n_samples is not None:
        step = 3 * cost.flops * spec.batch_size  # forward, and backward at twice its cost
        search = spec.search
        per_epoch = math.ceil(n_samples / spec.batch_size)
        range_steps = spec.range_test.num_iter * copies * spec.range_test.accumulation_steps
        confirm = 0
        if search.confirm_seeds > 0:
            seeds = max(search.confirm_seeds, search.max_confirm_seeds)
            confirm = (search.finalists + len(search.baselines)) * seeds
        runs = search.n_trials + confirm
        flops = float(step * (range_steps + runs * search.epochs * per_epoch))
    return Footprint(cost.parameters, copies, model_bytes, activation_bytes, data_bytes, flops)


def check_admission(
    spec: Any,
    shapes: tuple[Sequence[int], int],
    n_samples: int | None,
    *,
    max_gb: float,
    max_tflops: float,
) -> Footprint | None:
    """Raise :class:`JobTooLargeError` if the job's estimate exceeds either cap; else return it.

    The error's ``loc`` is the field most worth changing: the range test's seeds when they
    multiply a model that fits alone, else the model's params (or the batch size, when the
    activations are most of it); for compute, the search's trials.
    """
    cost = estimate(spec, shapes, n_samples)
    if cost is None:
        return None
    if cost.memory_gb > max_gb:
        loc, advice = _memory_advice(cost, max_gb * GB)
        raise JobTooLargeError(
            loc,
            f"the job needs about {cost.memory_gb:.3g} GB of memory, more than the cap of "
            f"{max_gb:g} GB (LRTUNE_MAX_JOB_GB): {advice} ({cost.describe()})",
            cost,
        )
    if cost.tflops > max_tflops:
        raise JobTooLargeError(
            ("search", "n_trials"),
            f"the job needs about {cost.tflops:.3g} TFLOPs of training, more than the cap of "
            f"{max_tflops:g} TFLOPs (LRTUNE_MAX_JOB_TFLOPS): use fewer search.n_trials or "
            f"search.epochs, a smaller model or fewer samples ({cost.describe()})",
            cost,
        )
    return cost


def check_fits(cost: Footprint | None, free_bytes: int | None, device: str) -> None:
    """Raise :class:`JobTooLargeError` if ``cost``'s memory exceeds ``free_bytes`` on ``device``.

    >>> check_fits(None, 10, "cpu"), check_fits(Footprint(1, 1, 4, 0, 0, 1.0), None, "cpu")
    (None, None)
    >>> check_fits(Footprint(1, 2, GB, GB, 0, None), GB, "cpu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lrtune.footprint.JobTooLargeError: the job needs about 4 GB of memory, but cpu has 1 GB free...
    """
    if cost is None or free_bytes is None or cost.memory_bytes <= free_bytes:
        return
    loc, advice = _memory_advice(cost, free_bytes)
    raise JobTooLargeError(
        loc,
        f"the job needs about {cost.memory_gb:.3g} GB of memory, but {device} has "
        f"{free_bytes / GB:.3g} GB free: {advice}, or run it on a worker with more memory "
        f"({cost.describe()})",
        cost,
    )


def check_device(cost: Footprint | None, device: str, free_gb: float | None = None) -> None:
    """:func:`check_fits` against ``device``'s free memory (:func:`free_memory_bytes`), or
    against ``free_gb`` when given (a worker's ``LRTUNE_WORKER_FREE_MEMORY_GB``)."""
    free = int(free_gb * GB) if free_gb is not None else free_memory_bytes(device)
    check_fits(cost, free, device)


def free_memory_bytes(device: Any) -> int | None:
    """Free memory on ``device`` (a ``torch.device`` or its name): CUDA's
    ``torch.cuda.mem_get_info``, else the host's available RAM; ``None`` if unknown."""
    kind = getattr(device, "type", str(device).split(":")[0])
    if kind == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:  # Linux: what can be allocated without swapping, page cache included
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _memory_advice(cost: Footprint, limit: float) -> tuple[tuple[str | int, ...], str]:
    one_copy = cost.data_bytes + cost.model_bytes + cost.activation_bytes
    if cost.copies > 1 and one_copy <= limit:
        return ("range_test", "seeds"), (
            f"use fewer range_test.seeds (each of the {cost.copies} holds a copy of the model), "
            "a smaller model or a smaller batch_size"
        )
    if cost.activation_bytes > cost.model_bytes:
        return ("batch_size",), "use a smaller batch_size or narrower layers"
    return ("model", "params"), "use a smaller model (fewer or narrower layers)"


def _model_cost(name: str, params: Any, input_shape: Shape, output_dim: int) -> _Cost | None:
    from lrtune.params import MODEL_PARAMS, parse_params

    schema = MODEL_PARAMS.get(name)
    if schema is None:
        return None
    parsed: Any = parse_params(schema, dict(params), f"model {name!r}")
    features = math.prod(input_shape)
    if name == "logreg":
        return _Cost(activations=features) + _linear(features, output_dim)
    if name == "mlp":
        total, width = _Cost(activations=features), features
        for hidden in parsed.hidden:
            total += _linear(width, hidden, bias=not parsed.batchnorm)
            kept = 1 + 2 * parsed.batchnorm + (parsed.dropout > 0)  # + the activation
            total += _Cost(parameters=2 * hidden * parsed.batchnorm, activations=kept * hidden)
            width = hidden
        return total + _linear(width, output_dim)
    if name == "cnn":
        total, channels, side = _Cost(activations=features), 1, 8
        for out in parsed.channels:
            values = out * side * side
            total += _Cost(
                parameters=channels * out * 9 + out,
                activations=(2 + 2 * parsed.batchnorm) * values + values // 4,
                flops=2 * channels * 9 * values,
            )
            channels, side = out, side // 2
        return total + _linear(channels * side * side, output_dim)
    if name == "sequential":
        from lrtune.sequential import plan_layers

        plan = plan_layers(parsed, input_shape, output_dim)
        return _Cost(activations=features) + _steps_cost(plan.steps)
    return None


def _linear(width: int, out: int, bias: bool = True, positions: int = 1) -> _Cost:
    return _Cost(width * out + out * bias, out * positions, 2 * width * out * positions)


def _steps_cost(steps: Sequence[Any]) -> _Cost:
    total = _Cost()
    for step in steps:
        total += _step_cost(step)
    return total


def _step_cost(step: Any) -> _Cost:
    from lrtune import sequential as seq

    layer, shape, out = step.layer, step.input_shape, step.output_shape
    values = math.prod(out)
    if isinstance(layer, seq.Residual):
        return _steps_cost(step.inner) + _Cost(activations=values, flops=values)
    if isinstance(layer, seq.Linear):
        return _linear(shape[-1], layer.out_features, layer.bias, math.prod(shape[:-1]))
    if isinstance(layer, seq.Conv1d | seq.Conv2d):
        per_output = step.n_params // layer.out_channels  # weights per output value (+ bias)
        return _Cost(step.n_params, values, 2 * per_output * values)
    if isinstance(layer, seq.Recurrent):
        steps, gates = shape[0], (4 if layer.type == "lstm" else 3)
        kept = layer.num_layers * layer.directions * steps * layer.hidden_size * (gates + 2)
        return _Cost(step.n_params, kept + values, 2 * step.n_params * steps)
    if isinstance(layer, seq.TransformerEncoderLayer):
        steps, width = shape
        hidden = layer.feedforward(width)
        attention = 3 * layer.nhead * steps * steps  # scores, softmax, dropout
        kept = steps * (10 * width + 3 * hidden) + attention
        return _Cost(step.n_params, kept, 2 * step.n_params * steps + 4 * steps * steps * width)
    return _Cost(step.n_params, values, values)
