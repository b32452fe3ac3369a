"""Built-in model factories: logistic regression, an MLP, a small CNN for 8x8 images, and
``sequential``, a model described layer by layer in JSON (:mod:`lrtune.sequential`).

Every factory has the signature ``factory(input_shape, output_dim, **params) -> nn.Module``.
Params are plain JSON values checked by one pydantic model per factory (in :mod:`lrtune.params`,
readable without torch): an unknown param, a wrong type or an out-of-range value raises
:class:`~lrtune.exceptions.InvalidInputError` (a ``ValueError``) naming the param and the allowed
ones. Weights come from torch's global RNG, so construction is deterministic after
``torch.manual_seed`` (:func:`lrtune.registry.build_model` takes a ``seed`` for that).

Example:
    >>> import torch
    >>> from lrtune.models import cnn, mlp
    >>> model = mlp((64,), 10, hidden=[32, 32], activation="gelu", dropout=0.1)
    >>> model(torch.zeros(5, 64)).shape
    torch.Size([5, 10])
    >>> cnn((64,), 10, channels=[8])(torch.zeros(5, 64)).shape
    torch.Size([5, 10])
    >>> layers = [{"type": "linear", "out_features": 32}, {"type": "gelu"},
    ...           {"type": "linear", "out_features": 10}]
    >>> sequential((64,), 10, layers=layers)(torch.zeros(5, 64)).shape
    torch.Size([5, 10])
    >>> mlp((64,), 10, depth=3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lrtune.exceptions.InvalidInputError: invalid params for model 'mlp': depth: unknown field ...

Users build models by name through :func:`lrtune.registry.build_model`, which also finds models
added by plugins.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

import lrtune.sequential as seq
from lrtune.exceptions import InvalidInputError
from lrtune.params import CNNParams, LogRegParams, MLPParams, SequentialParams, parse_params

_IMAGE_SIDE = 8
_IMAGE_SHAPE = (1, _IMAGE_SIDE, _IMAGE_SIDE)

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}


def check_shapes(input_shape: tuple[int, ...], output_dim: int) -> None:
    """Raise :class:`~lrtune.exceptions.InvalidInputError` unless ``input_shape`` is a tuple of
    positive ints and ``output_dim`` a positive int."""
    if (
        not isinstance(input_shape, tuple)
        or not input_shape
        or not all(_is_positive_int(size) for size in input_shape)
    ):
        raise InvalidInputError(
            f"input_shape must be a tuple of positive ints, got {input_shape!r}"
        )
    if not _is_positive_int(output_dim):
        raise InvalidInputError(f"output_dim must be a positive int, got {output_dim!r}")


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def logreg(input_shape: tuple[int, ...], output_dim: int, **params: Any) -> nn.Module:
    """A single linear layer over the flattened input (multinomial logistic regression)."""
    check_shapes(input_shape, output_dim)
    parse_params(LogRegParams, params, "model 'logreg'")
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), output_dim))


def mlp(input_shape: tuple[int, ...], output_dim: int, **params: Any) -> nn.Module:
    """A multilayer perceptron over the flattened input.

    Params: ``hidden`` (``[128]``, the widths of the hidden layers), ``batchnorm`` (False),
    ``dropout`` (0.0, in [0, 1)), ``activation`` (``"relu"``, ``"gelu"`` or ``"tanh"``).
    Each hidden layer is Linear, then BatchNorm1d if asked, the activation, then Dropout if > 0.
    """
    check_shapes(input_shape, output_dim)
    parsed = parse_params(MLPParams, params, "model 'mlp'")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for hidden_width in parsed.hidden:
        # A bias right before batch norm would be cancelled by its mean subtraction.
        layers.append(nn.Linear(width, hidden_width, bias=not parsed.batchnorm))
        if parsed.batchnorm:
            layers.append(nn.BatchNorm1d(hidden_width))
        layers.append(_ACTIVATIONS[parsed.activation]())
        if parsed.dropout > 0:
            layers.append(nn.Dropout(parsed.dropout))
        width = hidden_width
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


def cnn(input_shape: tuple[int, ...], output_dim: int, **params: Any) -> nn.Module:
    """A small CNN for 8x8 single-channel images, such as the ``digits`` dataset.

    Accepts flat input of 64 features (unflattened by the first layer) or ``(1, 8, 8)``.
    Params: ``channels`` (``[16, 32]``, one to three conv blocks), ``batchnorm`` (False),
    ``dropout`` (0.0, in [0, 1), applied before the output layer). Each block is a 3x3
    convolution, BatchNorm2d if asked, ReLU and a 2x2 max-pool.
    """
    check_shapes(input_shape, output_dim)
    parsed = parse_params(CNNParams, params, "model 'cnn'")
    parsed.check_shapes(input_shape)
    layers: list[nn.Module] = []
    if len(input_shape) == 1:
        layers.append(nn.Unflatten(1, _IMAGE_SHAPE))
    in_channels = 1
    for out_channels in parsed.channels:
        layers.append(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not parsed.batchnorm))
        if parsed.batchnorm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        in_channels = out_channels
    side = _IMAGE_SIDE >> len(parsed.channels)
    layers.append(nn.Flatten())
    if parsed.dropout > 0:
        layers.append(nn.Dropout(parsed.dropout))
    layers.append(nn.Linear(in_channels * side * side, output_dim))
    return nn.Sequential(*layers)


def sequential(input_shape: tuple[int, ...], output_dim: int, **params: Any) -> nn.Module:
    """A model described as ``layers``: a list of JSON layers (see :mod:`lrtune.sequential`).

    Input sizes are inferred from ``input_shape``; the last layer must output ``output_dim``
    values. The result is an :class:`torch.nn.Sequential` with one module per layer, so param
    group prefixes read ``"0."``, ``"1."``, ... in the order the layers are listed.

    Raises:
        InvalidInputError: a layer is malformed, does not fit the shape flowing into it, or the
            model breaks a cap (:class:`~lrtune.sequential.LayerShapeError`, naming the layer).
    """
    check_shapes(input_shape, output_dim)
    parsed = parse_params(SequentialParams, params, "model 'sequential'")
    return _build_steps(seq.plan_layers(parsed, input_shape, output_dim).steps)


def _build_steps(steps: tuple[seq.Step, ...]) -> nn.Sequential:
    return nn.Sequential(*(_build_step(step) for step in steps))


def _build_step(step: seq.Step) -> nn.Module:
    layer, shape = step.layer, step.input_shape
    match layer:
        case seq.Residual():
            return _Residual(_build_steps(step.inner))
        case seq.Linear():
            return nn.Linear(shape[-1], layer.out_features, bias=layer.bias)
        case seq.Conv1d():
            return nn.Conv1d(
                shape[0],
                layer.out_channels,
                layer.kernel_size,
                layer.stride,
                layer.padding,
                bias=layer.bias,
            )
        case seq.Conv2d():
            return nn.Conv2d(
                shape[0],
                layer.out_channels,
                tuple(layer.kernel_size),
                tuple(layer.stride),
                tuple(layer.padding),
                bias=layer.bias,
            )
        case seq.BatchNorm():
            # (C,) and (C, L): BatchNorm1d normalizes each channel; (C, H, W): BatchNorm2d.
            return nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])
        case seq.LayerNorm():
            return nn.LayerNorm(shape[-1])
        case seq.Activation():
            return _ACTIVATIONS[layer.type]()
        case seq.Dropout():
            return nn.Dropout(layer.p)
        case seq.Pool():
            return _build_pool(layer, shape)
        case seq.GlobalPool():
            return _Pool(layer.mode, over="space")
        case seq.Flatten():
            return nn.Flatten()
        case seq.Reshape():
            return _Reshape(tuple(layer.shape))
        case seq.Embedding():
            return _TokenEmbedding(layer.num_embeddings, layer.embedding_dim)
        case seq.PositionalEmbedding():
            return _PositionalEmbedding(shape)
        case seq.Recurrent():
            return _build_recurrent(layer, shape)
        case seq.TransformerEncoderLayer():
            return _build_transformer(layer, shape)
        case seq.SequencePool():
            return _Pool(layer.mode, over="time")
    raise AssertionError(f"no torch module for layer type {type(layer).__name__}")


def _build_pool(layer: seq.Pool, shape: tuple[int, ...]) -> nn.Module:
    rank = len(shape) - 1
    kernel, padding = layer.kernel_size[:rank], layer.padding[:rank]
    stride = kernel if layer.stride is None else layer.stride[:rank]
    kinds = {
        ("maxpool", 1): nn.MaxPool1d,
        ("maxpool", 2): nn.MaxPool2d,
        ("avgpool", 1): nn.AvgPool1d,
        ("avgpool", 2): nn.AvgPool2d,
    }
    return kinds[layer.type, rank](tuple(kernel), tuple(stride), tuple(padding))


def _build_recurrent(layer: seq.Recurrent, shape: tuple[int, ...]) -> nn.Module:
    kind = nn.LSTM if layer.type == "lstm" else nn.GRU
    rnn = kind(
        shape[1],
        layer.hidden_size,
        num_layers=layer.num_layers,
        bidirectional=layer.bidirectional,
        dropout=layer.dropout,
        batch_first=True,
    )
    return _Recurrent(rnn, layer.pool)


def _build_transformer(layer: seq.TransformerEncoderLayer, shape: tuple[int, ...]) -> nn.Module:
    d_model = shape[1]
    return nn.TransformerEncoderLayer(
        d_model,
        layer.nhead,
        dim_feedforward=layer.feedforward(d_model),
        dropout=layer.dropout,
        activation=layer.activation,
        batch_first=True,
        norm_first=layer.norm_first,
    )


class _Reshape(nn.Module):
    """``(N, ...) -> (N, *shape)``."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class _Residual(nn.Module):
    """``x + body(x)``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Pool(nn.Module):
    """The mean or max (or the first or last step) over time, ``(N, T, D) -> (N, D)``, or over
    the spatial axes, ``(N, C, ...) -> (N, C)``."""

    def __init__(self, mode: str, over: str) -> None:
        super().__init__()
        self.mode = mode
        self.over = over

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, over={self.over!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.over == "space":
            x = x.flatten(2).transpose(1, 2)  # (N, C, ...) -> (N, positions, C)
        if self.mode == "mean":
            return x.mean(1)
        if self.mode == "max":
            return x.amax(1)
        return x[:, 0] if self.mode == "first" else x[:, -1]


class _Recurrent(nn.Module):
    """An LSTM or GRU over ``(N, T, F)``: the final hidden state of the last layer (both
    directions), the mean of the outputs over time, or the outputs themselves."""

    def __init__(self, rnn: nn.LSTM | nn.GRU, pool: str) -> None:
        super().__init__()
        self.rnn = rnn
        self.pool = pool

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, state = self.rnn(x)
        if self.pool == "none":
            return outputs
        if self.pool == "mean":
            return outputs.mean(1)
        hidden = state[0] if isinstance(state, tuple) else state  # LSTM: (h_n, c_n)
        directions = 2 if self.rnn.bidirectional else 1
        return torch.cat(list(hidden[-directions:]), dim=-1)


class _TokenEmbedding(nn.Embedding):
    """An embedding of integer token ids; ids stored as floats (datasets are float32) must be
    whole numbers in ``[0, num_embeddings)``, else :class:`InvalidInputError`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()
        if x.is_floating_point() and not torch.equal(ids.to(x.dtype), x):
            raise InvalidInputError(
                "embedding expects integer token ids, got fractional values: use a dataset of "
                "token ids, or a linear layer for real-valued features"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise InvalidInputError(
                f"embedding got token ids outside [0, {self.num_embeddings}) "
                f"(min {int(ids.min())}, max {int(ids.max())}): raise num_embeddings"
            )
        return super().forward(ids)


class _PositionalEmbedding(nn.Module):
    """A learned embedding of each position, added to a ``(N, T, D)`` input."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(shape) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight
