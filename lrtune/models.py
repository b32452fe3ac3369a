"""Built-in model factories: logistic regression, an MLP, and a small CNN for 8x8 images.

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

from torch import nn

from lrtune.exceptions import InvalidInputError
from lrtune.params import CNNParams, LogRegParams, MLPParams, parse_params

_IMAGE_SIDE = 8
_IMAGE_SHAPE = (1, _IMAGE_SIDE, _IMAGE_SIDE)

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


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
    if input_shape not in ((_IMAGE_SIDE * _IMAGE_SIDE,), _IMAGE_SHAPE):
        raise InvalidInputError(
            f"model 'cnn' needs 8x8 single-channel images: input_shape (64,) or (1, 8, 8), "
            f"got {input_shape}"
        )
    parsed = parse_params(CNNParams, params, "model 'cnn'")
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
