"""The ``sequential`` model's layers as JSON, and their shapes worked out without torch.

A user describes a model as a list of tagged layers; lrtune infers every input size
(``in_features``, ``in_channels``, ``input_size``, ``d_model``) from the shape flowing in, so a
layer names only what it changes. Shapes are per sample (no batch dimension): a flat feature
vector is ``(F,)``, a sequence ``(T, F)`` (time first), an image ``(C, H, W)`` (channels first).

:func:`plan_layers` walks the layers from the dataset's input shape in pure Python: each layer's
output shape, the parameter count, and a :class:`LayerShapeError` naming the layer's path and
the fix when a layer does not fit. The HTTP API runs it when a job is submitted; the worker runs
it again before :func:`lrtune.models.sequential` builds the torch modules. Nothing a user sends
is executed: each layer is one of the fixed types below, with bounded fields.

The layers (``type``: the fields, with their defaults):

- ``linear``: ``out_features``, ``bias=true``; acts on the last axis.
- ``conv1d``, ``conv2d``: ``out_channels``, ``kernel_size``, ``stride=1``, ``padding=0``,
  ``bias=true``; input ``(C, L)`` or ``(C, H, W)``; conv2d's sizes are an int or ``[h, w]``.
- ``batchnorm``: over the channels of ``(C,)``, ``(C, L)`` (1d) or ``(C, H, W)`` (2d).
- ``layernorm``: over the last axis.
- ``relu``, ``gelu``, ``tanh``, ``silu``; ``dropout``: ``p=0.1``.
- ``maxpool``, ``avgpool``: ``kernel_size``, ``stride`` (the kernel size), ``padding=0``; 1d or
  2d from the input.
- ``global_pool``: ``mode="mean"`` or ``"max"`` over the spatial axes, ``(C, ...) -> (C,)``.
- ``flatten`` to ``(F,)``; ``reshape``: ``shape``, e.g. ``[1, 8, 8]`` (the value count must
  match).
- ``embedding``: ``num_embeddings``, ``embedding_dim``; integer token ids, ``(T,) -> (T, D)``.
- ``positional_embedding``: a learned ``(T, D)`` added to the input.
- ``lstm``, ``gru``: ``hidden_size``, ``num_layers=1``, ``bidirectional=false``, ``dropout=0``
  (between stacked layers), ``pool="last"`` (the final hidden state, both directions), ``"mean"``
  (over time) or ``"none"`` (keep the ``(T, H)`` outputs); input ``(T, F)``.
- ``transformer_encoder_layer``: ``nhead``, ``dim_feedforward`` (4 d_model), ``dropout=0.1``,
  ``activation="relu"``, ``norm_first=false``; input ``(T, d_model)``.
- ``sequence_pool``: ``mode="mean"``, ``"max"``, ``"first"`` or ``"last"`` over time,
  ``(T, D) -> (D,)``.
- ``residual``: ``layers``, computing ``x + layers(x)``; they must keep the input's shape.

The last layer must output the dataset's ``output_dim`` values, ``(output_dim,)``: lrtune adds
no head of its own, so the model is exactly the one described (end with a ``linear`` layer).
Caps: :data:`MAX_LAYERS` layers in all (those inside residual blocks count),
:data:`MAX_NESTING` residual blocks deep, :data:`MAX_PARAMETERS` parameters, and
:data:`MAX_ACTIVATION` values per sample out of any layer.

Example:
    >>> from lrtune.params import SequentialParams
    >>> params = SequentialParams.model_validate({"layers": [
    ...     {"type": "reshape", "shape": [1, 8, 8]},
    ...     {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
    ...     {"type": "relu"},
    ...     {"type": "maxpool", "kernel_size": 2},
    ...     {"type": "flatten"},
    ...     {"type": "linear", "out_features": 10},
    ... ]})
    >>> plan = plan_layers(params, (64,), 10)
    >>> [step.output_shape for step in plan.steps]
    [(1, 8, 8), (8, 8, 8), (8, 8, 8), (8, 4, 4), (128,), (10,)]
    >>> plan.n_params
    1370
    >>> plan_layers(params, (13,), 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lrtune.sequential.LayerShapeError: invalid params for model 'sequential': \
layers.0.reshape.shape=[1, 8, 8]: reshape to (1, 8, 8) needs 64 values, the input (13,) has 13...
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from lrtune.exceptions import InvalidInputError

Shape = tuple[int, ...]

MAX_LAYERS = 64
"""Layers in one model, counting those inside residual blocks (a block counts too)."""
MAX_NESTING = 4
"""How deep residual blocks may nest."""
MAX_PARAMETERS = 50_000_000
"""Parameters in one model: a request to the service cannot ask for more."""
MAX_ACTIVATION = 2**24
"""Values per sample out of any one layer (about 16.8 million): bounds training memory."""

_MAX_SIZE = 65_536  # features, channels, hidden sizes, vocabulary entries
_MAX_KERNEL = 64
_MAX_HEADS = 64
_MAX_RNN_LAYERS = 8
_MAX_RESHAPE_RANK = 4

_Size = Annotated[int, Field(ge=1, le=_MAX_SIZE)]
_Kernel = Annotated[int, Field(ge=1, le=_MAX_KERNEL)]
_Padding = Annotated[int, Field(ge=0, le=_MAX_KERNEL)]


def _int_to_pair(value: Any) -> Any:
    return [value, value] if isinstance(value, int) else value


def _pair_of(low: int) -> Any:
    """An ``[h, w]`` pair of ints in ``[low, 64]``, or one int for both (read as the pair)."""
    bounds = {"minimum": low, "maximum": _MAX_KERNEL}
    pair = {"type": "array", "items": {"type": "integer", **bounds}, "minItems": 2, "maxItems": 2}
    return Annotated[
        list[Annotated[int, Field(ge=low, le=_MAX_KERNEL)]],
        Field(min_length=2, max_length=2),
        BeforeValidator(_int_to_pair),
        WithJsonSchema({"anyOf": [{"type": "integer", **bounds}, pair]}),
    ]


_KernelPair = _pair_of(1)
_PaddingPair = _pair_of(0)
_Probability = Annotated[float, Field(ge=0.0, lt=1.0)]


class LayerShapeError(InvalidInputError):
    """A layer does not fit the shape flowing into it, or the model breaks a cap.

    ``loc`` is the path of the bad field inside the model's params, as pydantic writes it
    (``("layers", 3, "conv2d", "kernel_size")``), for an API that reports field paths; the
    message starts with the same path, dotted.
    """

    def __init__(self, loc: tuple[str | int, ...], problem: str) -> None:
        self.loc = loc
        self.problem = problem
        super().__init__(f"invalid params for model 'sequential': {problem}")

    def __reduce__(self) -> tuple[type[LayerShapeError], tuple[tuple[str | int, ...], str]]:
        return type(self), (self.loc, self.problem)  # picklable, e.g. out of a worker process


class _Problem(Exception):
    """Raised by a layer's shape rule; the walk adds the layer's path. ``field`` is the param
    to blame, ``None`` for the layer as a whole."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class _Layer(BaseModel):
    """One layer: its JSON fields, its output shape and its parameter count for an input."""

    # Strict and closed like every params model: "3" is not 3, and a misspelt field is an error.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    def output_shape(self, shape: Shape) -> Shape:
        """The shape out of this layer for an input of ``shape``; raises :class:`_Problem`."""
        return shape

    def count_params(self, shape: Shape) -> int:
        """Trainable parameters for an input of ``shape`` (one that :meth:`output_shape`
        accepted)."""
        return 0


class Linear(_Layer):
    """A fully connected layer on the last axis: ``(..., F) -> (..., out_features)``."""

    type: Literal["linear"]
    out_features: _Size
    bias: bool = True

    def output_shape(self, shape: Shape) -> Shape:
        return (*shape[:-1], self.out_features)

    def count_params(self, shape: Shape) -> int:
        return shape[-1] * self.out_features + self.out_features * self.bias


class Conv1d(_Layer):
    """A 1-d convolution over a ``(C, L)`` input."""

    type: Literal["conv1d"]
    out_channels: _Size
    kernel_size: _Kernel
    stride: _Kernel = 1
    padding: _Padding = 0
    bias: bool = True

    def output_shape(self, shape: Shape) -> Shape:
        _expect_rank(shape, 2, "conv1d", "(C, L)")
        (length,) = _windowed(shape[1:], [self.kernel_size], [self.stride], [self.padding])
        return (self.out_channels, length)

    def count_params(self, shape: Shape) -> int:
        return shape[0] * self.out_channels * self.kernel_size + self.out_channels * self.bias


class Conv2d(_Layer):
    """A 2-d convolution over a ``(C, H, W)`` input; sizes are an int or ``[h, w]``."""

    type: Literal["conv2d"]
    out_channels: _Size
    kernel_size: _KernelPair
    stride: _KernelPair = [1, 1]
    padding: _PaddingPair = [0, 0]
    bias: bool = True

    def output_shape(self, shape: Shape) -> Shape:
        _expect_rank(shape, 3, "conv2d", "(C, H, W)")
        sides = _windowed(shape[1:], self.kernel_size, self.stride, self.padding)
        return (self.out_channels, *sides)

    def count_params(self, shape: Shape) -> int:
        return shape[0] * self.out_channels * math.prod(self.kernel_size) + (
            self.out_channels * self.bias
        )


class BatchNorm(_Layer):
    """Batch norm over the channels: 1d for ``(C,)`` and ``(C, L)``, 2d for ``(C, H, W)``."""

    type: Literal["batchnorm"]

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) > 3:
            raise _Problem(
                f"batchnorm takes a (C,), (C, L) or (C, H, W) input, got {shape}: "
                "flatten or reshape it first"
            )
        return shape

    def count_params(self, shape: Shape) -> int:
        return 2 * shape[0]


class LayerNorm(_Layer):
    """Layer norm over the last axis."""

    type: Literal["layernorm"]

    def count_params(self, shape: Shape) -> int:
        return 2 * shape[-1]


class Activation(_Layer):
    """An activation: ``relu``, ``gelu``, ``tanh`` or ``silu``."""

    type: Literal["relu", "gelu", "tanh", "silu"]


class Dropout(_Layer):
    """Dropout with probability ``p``."""

    type: Literal["dropout"]
    p: _Probability = 0.1


class Pool(_Layer):
    """Max or average pooling over ``(C, L)`` (1d) or ``(C, H, W)`` (2d)."""

    type: Literal["maxpool", "avgpool"]
    kernel_size: _KernelPair
    stride: _KernelPair | None = Field(None, description="the kernel size when left out")
    padding: _PaddingPair = [0, 0]

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) not in (2, 3):
            raise _Problem(
                f"{self.type} takes a (C, L) or (C, H, W) input, got {shape}: "
                + _reshape_hint(shape, 2)
            )
        rank = len(shape) - 1
        sizes = {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}
        for field, value in sizes.items():
            if rank == 1 and value is not None and value[0] != value[1]:
                raise _Problem(f"{self.type} over a (C, L) input takes one int, not a pair", field)
        kernel, padding = self.kernel_size[:rank], self.padding[:rank]
        if any(2 * p > k for p, k in zip(padding, kernel, strict=True)):
            raise _Problem(
                f"padding {_side(padding)} is more than half of kernel_size {_side(kernel)}: "
                "use padding <= kernel_size // 2",
                "padding",
            )
        stride = kernel if self.stride is None else self.stride[:rank]
        return (shape[0], *_windowed(shape[1:], kernel, stride, padding))


class GlobalPool(_Layer):
    """The mean or max over the spatial axes: ``(C, ...) -> (C,)``."""

    type: Literal["global_pool"]
    mode: Literal["mean", "max"] = "mean"

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) < 2:
            raise _Problem(
                f"global_pool takes a (C, L) or (C, H, W) input and keeps C, got {shape}, "
                "which has no spatial axes to pool"
            )
        return (shape[0],)


class Flatten(_Layer):
    """Flattens the sample to ``(F,)``."""

    type: Literal["flatten"]

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)


class Reshape(_Layer):
    """Reshapes the sample to ``shape``, e.g. ``[1, 8, 8]``; the value count must match."""

    type: Literal["reshape"]
    shape: list[_Size] = Field(min_length=1, max_length=_MAX_RESHAPE_RANK)

    def output_shape(self, shape: Shape) -> Shape:
        target = tuple(self.shape)
        if math.prod(target) != math.prod(shape):
            raise _Problem(
                f"reshape to {target} needs {math.prod(target)} values, the input {shape} has "
                f"{math.prod(shape)}: give a shape whose sizes multiply to {math.prod(shape)}",
                "shape",
            )
        return target


class Embedding(_Layer):
    """An embedding of integer token ids: ``(T,) -> (T, embedding_dim)``."""

    type: Literal["embedding"]
    num_embeddings: Annotated[int, Field(ge=1, le=1_000_000)]
    embedding_dim: _Size

    def output_shape(self, shape: Shape) -> Shape:
        return (*shape, self.embedding_dim)

    def count_params(self, shape: Shape) -> int:
        return self.num_embeddings * self.embedding_dim


class PositionalEmbedding(_Layer):
    """A learned embedding of each position, added to a ``(T, D)`` input."""

    type: Literal["positional_embedding"]

    def output_shape(self, shape: Shape) -> Shape:
        _expect_rank(shape, 2, "positional_embedding", "(T, D)")
        return shape

    def count_params(self, shape: Shape) -> int:
        return math.prod(shape)


class Recurrent(_Layer):
    """An LSTM or GRU over a ``(T, F)`` input, pooled to ``(H,)`` unless ``pool`` is ``none``."""

    type: Literal["lstm", "gru"]
    hidden_size: _Size
    num_layers: Annotated[int, Field(ge=1, le=_MAX_RNN_LAYERS)] = 1
    bidirectional: bool = False
    dropout: _Probability = 0.0
    pool: Literal["last", "mean", "none"] = "last"

    @model_validator(mode="after")
    def _dropout_needs_layers(self) -> Recurrent:
        if self.dropout > 0 and self.num_layers == 1:
            raise ValueError("dropout acts between stacked layers: set num_layers >= 2 or drop it")
        return self

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def output_shape(self, shape: Shape) -> Shape:
        _expect_rank(shape, 2, self.type, "(T, F) (time steps, features)")
        width = self.hidden_size * self.directions
        return (shape[0], width) if self.pool == "none" else (width,)

    def count_params(self, shape: Shape) -> int:
        gates = 4 if self.type == "lstm" else 3
        hidden = self.hidden_size
        total = 0
        for index in range(self.num_layers):
            width = shape[-1] if index == 0 else hidden * self.directions
            total += self.directions * gates * (hidden * width + hidden * hidden + 2 * hidden)
        return total


class TransformerEncoderLayer(_Layer):
    """A transformer encoder layer over ``(T, d_model)``; ``d_model`` is the input's."""

    type: Literal["transformer_encoder_layer"]
    nhead: Annotated[int, Field(ge=1, le=_MAX_HEADS)]
    dim_feedforward: _Size | None = Field(None, description="4 d_model when left out")
    dropout: _Probability = 0.1
    activation: Literal["relu", "gelu"] = "relu"
    norm_first: bool = False

    def output_shape(self, shape: Shape) -> Shape:
        _expect_rank(shape, 2, "transformer_encoder_layer", "(T, d_model)")
        d_model = shape[1]
        if d_model % self.nhead:
            raise _Problem(
                f"d_model {d_model} (the input's last size) is not divisible by nhead "
                f"{self.nhead}: pick an nhead that divides {d_model}, or project with a linear "
                "layer first",
                "nhead",
            )
        return shape

    def feedforward(self, d_model: int) -> int:
        return self.dim_feedforward or 4 * d_model

    def count_params(self, shape: Shape) -> int:
        d_model, hidden = shape[1], self.feedforward(shape[1])
        attention = 4 * d_model * d_model + 4 * d_model  # q, k, v and output projections
        feedforward = 2 * d_model * hidden + hidden + d_model
        return attention + feedforward + 4 * d_model  # two layer norms


class SequencePool(_Layer):
    """The mean, max, first or last step over time: ``(T, D) -> (D,)``."""

    type: Literal["sequence_pool"]
    mode: Literal["mean", "max", "first", "last"] = "mean"

    def output_shape(self, shape: Shape) -> Shape:
        _expect_rank(shape, 2, "sequence_pool", "(T, D)")
        return (shape[1],)


class Residual(_Layer):
    """``x + layers(x)``: the layers must keep the input's shape."""

    type: Literal["residual"]
    layers: list[Layer] = Field(min_length=1, max_length=MAX_LAYERS)


Layer = Annotated[
    Linear
    | Conv1d
    | Conv2d
    | BatchNorm
    | LayerNorm
    | Activation
    | Dropout
    | Pool
    | GlobalPool
    | Flatten
    | Reshape
    | Embedding
    | PositionalEmbedding
    | Recurrent
    | TransformerEncoderLayer
    | SequencePool
    | Residual,
    Field(discriminator="type"),
]
"""One layer of a ``sequential`` model, told apart by its ``type``."""

Residual.model_rebuild()


def check_structure(layers: Sequence[_Layer]) -> None:
    """Raise ``ValueError`` if ``layers`` hold more than :data:`MAX_LAYERS` layers in all, or
    nest residual blocks deeper than :data:`MAX_NESTING` (a pydantic validator's contract)."""
    count, depth = _count_layers(layers)
    if count > MAX_LAYERS:
        raise ValueError(
            f"{count} layers in all (residual blocks' included), the cap is {MAX_LAYERS}"
        )
    if depth > MAX_NESTING:
        raise ValueError(f"residual blocks nest {depth} deep, the cap is {MAX_NESTING}")


def _count_layers(layers: Sequence[_Layer]) -> tuple[int, int]:
    count, depth = 0, 0
    for layer in layers:
        count += 1
        if isinstance(layer, Residual):
            inner_count, inner_depth = _count_layers(layer.layers)
            count += inner_count
            depth = max(depth, inner_depth + 1)
    return count, depth


@dataclass(frozen=True)
class Step:
    """One layer with the shapes in and out of it; a residual block's steps are in ``inner``."""

    layer: _Layer
    loc: tuple[str | int, ...]
    input_shape: Shape
    output_shape: Shape
    n_params: int
    inner: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Plan:
    """The layers of a model, walked from an input shape: what :func:`plan_layers` returns."""

    input_shape: Shape
    steps: tuple[Step, ...]

    @property
    def output_shape(self) -> Shape:
        return self.steps[-1].output_shape if self.steps else self.input_shape

    @property
    def n_params(self) -> int:
        return sum(step.n_params for step in self.steps)


def plan_layers(params: Any, input_shape: Sequence[int], output_dim: int) -> Plan:
    """Walk ``params.layers`` from ``input_shape``; check the output is ``(output_dim,)``.

    Args:
        params: validated :class:`lrtune.params.SequentialParams` (anything with ``layers``).
        input_shape: one sample's shape, e.g. ``(64,)``; ``output_dim``: the dataset's.

    Raises:
        LayerShapeError: a layer does not fit its input (the message names the layer's path and
            what to change), the last layer does not output ``(output_dim,)``, or the model
            has more than :data:`MAX_PARAMETERS` parameters.
    """
    plan = Plan(tuple(input_shape), _walk(params.layers, tuple(input_shape), ("layers",)))
    if plan.n_params > MAX_PARAMETERS:
        raise LayerShapeError(
            ("layers",),
            f"layers: the model has {plan.n_params:,} parameters, more than the cap of "
            f"{MAX_PARAMETERS:,}: use fewer or narrower layers",
        )
    if plan.output_shape != (output_dim,):
        raise LayerShapeError(("layers",), _head_problem(plan.output_shape, output_dim))
    return plan


def _walk(layers: Sequence[_Layer], shape: Shape, loc: tuple[str | int, ...]) -> tuple[Step, ...]:
    steps = []
    for index, layer in enumerate(layers):
        where = (*loc, index, layer.type)  # type: ignore[attr-defined]
        steps.append(_step(layer, shape, where))
        shape = steps[-1].output_shape
    return tuple(steps)


def _step(layer: _Layer, shape: Shape, where: tuple[str | int, ...]) -> Step:
    if isinstance(layer, Residual):
        inner = _walk(layer.layers, shape, (*where, "layers"))
        out = inner[-1].output_shape
        if out != shape:
            raise LayerShapeError(
                (*where, "layers"),
                f"{_dotted(where)}.layers: a residual block must keep its input's shape, but "
                f"its layers turn {shape} into {out}: end the block with a layer back to {shape}",
            )
        return Step(layer, where, shape, out, sum(s.n_params for s in inner), inner)
    try:
        out = layer.output_shape(shape)
    except _Problem as problem:
        loc = where if problem.field is None else (*where, problem.field)
        value = "" if problem.field is None else f"={_json(getattr(layer, problem.field))}"
        raise LayerShapeError(loc, f"{_dotted(loc)}{value}: {problem}") from None
    if math.prod(out) > MAX_ACTIVATION:
        raise LayerShapeError(
            where,
            f"{_dotted(where)}: outputs {out}, {math.prod(out):,} values per sample, more than "
            f"the cap of {MAX_ACTIVATION:,}: downsample or narrow the layers before it",
        )
    return Step(layer, where, shape, out, layer.count_params(shape))


def check_token_ids(
    layers: Sequence[_Layer],
    max_value: float,
    min_value: float | None = None,
    integral: bool | None = None,
) -> None:
    """Check the data's values against each ``embedding`` layer that is fed them as token ids.

    Those are the embeddings the input reaches unchanged: through ``reshape`` and ``flatten``
    only, or as the first layers of a ``residual`` block there. An embedding deeper in the model
    sees computed values, which no upload can tell. ``max_value`` (``min_value``) is the
    data's largest (smallest) value and ``integral`` whether every value is a whole number;
    ``None`` is not checked.

    Raises:
        LayerShapeError: an id would be ``num_embeddings`` or more, negative, or fractional;
            ``loc`` is the embedding's path (``("layers", 0, "embedding", "num_embeddings")``
            for too small a vocabulary) and the message says the value and what to change.
    """
    for where, embedding in _input_embeddings(layers, ("layers",)):
        if integral is False:
            raise LayerShapeError(
                where,
                f"{_dotted(where)}: the data holds fractional values, and an embedding takes "
                "whole-number token ids: upload token ids, or start with a linear layer for "
                "real-valued features",
            )
        if min_value is not None and min_value < 0:
            raise LayerShapeError(
                where,
                f"{_dotted(where)}: the data's smallest value is {_number(min_value)}, and "
                "token ids start at 0: shift the data's ids to start at 0, or start with a "
                "linear layer for real-valued features",
            )
        vocabulary = embedding.num_embeddings
        if max_value >= vocabulary:
            loc = (*where, "num_embeddings")
            raise LayerShapeError(
                loc,
                f"{_dotted(loc)}={vocabulary}: the data's largest token id is "
                f"{_number(max_value)}, outside the vocabulary's ids 0..{vocabulary - 1}: set "
                f"num_embeddings to at least {math.floor(max_value) + 1}, or map the data's "
                f"ids below {vocabulary}",
            )


def _input_embeddings(
    layers: Sequence[_Layer], loc: tuple[str | int, ...]
) -> list[tuple[tuple[str | int, ...], Embedding]]:
    """The embeddings among ``layers`` that the input reaches with its values unchanged."""
    found: list[tuple[tuple[str | int, ...], Embedding]] = []
    for index, layer in enumerate(layers):
        where = (*loc, index, layer.type)  # type: ignore[attr-defined]
        if isinstance(layer, Embedding):
            found.append((where, layer))
        elif isinstance(layer, Residual):
            found += _input_embeddings(layer.layers, (*where, "layers"))
        if not isinstance(layer, Reshape | Flatten):
            break
    return found


def _head_problem(shape: Shape, output_dim: int) -> str:
    head = f'{{"type": "linear", "out_features": {output_dim}}}'
    if len(shape) == 1:
        return (
            f"layers: the last layer outputs {shape}, but the dataset needs ({output_dim},) "
            f"(its output_dim): end with {head}"
        )
    reduce = "flatten or sequence_pool" if len(shape) == 2 else "flatten or global_pool"
    return (
        f"layers: the last layer outputs {shape}, but the dataset needs ({output_dim},) "
        f"(its output_dim): reduce it with {reduce}, then end with {head}"
    )


def _expect_rank(shape: Shape, rank: int, name: str, layout: str) -> None:
    if len(shape) != rank:
        hint = _reshape_hint(shape, rank, time_first=layout.startswith("(T"))
        raise _Problem(f"{name} expects a {layout} input, got {shape}: {hint}")


def _reshape_hint(shape: Shape, rank: int, time_first: bool = False) -> str:
    if len(shape) == 1 and rank == 2:
        example = f"[{shape[0]}, 1]" if time_first else f"[1, {shape[0]}]"
        return f'add {{"type": "reshape", "shape": {example}}} before it'
    if len(shape) == 1 and rank == 3:
        side = math.isqrt(shape[0])
        example = f"[1, {side}, {side}]" if side * side == shape[0] else "[C, H, W]"
        return f'add {{"type": "reshape", "shape": {example}}} before it, or use conv1d/linear'
    if len(shape) > rank:
        return "flatten, pool or reshape it first"
    return "add a reshape layer before it"


def _windowed(
    sides: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]
) -> Shape:
    """Output sides of a convolution or pooling window sliding over ``sides``."""
    if any(k > side + 2 * p for side, k, p in zip(sides, kernel, padding, strict=True)):
        raise _Problem(
            f"kernel_size {_side(kernel)} is larger than the input's {_side(sides)} "
            f"(padding {_side(padding)}): use a smaller kernel_size or more padding",
            "kernel_size",
        )
    return tuple(
        (side + 2 * p - k) // s + 1
        for side, k, s, p in zip(sides, kernel, stride, padding, strict=True)
    )


def _side(sizes: Sequence[int]) -> str:
    return "x".join(map(str, sizes))


def _number(value: float) -> str:
    """A data value as a user wrote it: ``1500``, not ``1500.0`` or ``1.5e+03``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _dotted(loc: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _json(value: Any) -> str:
    return repr(value) if not isinstance(value, bool) else str(value).lower()
