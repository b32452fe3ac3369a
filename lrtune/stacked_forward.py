"""One forward pass for K copies of a model whose weights are stacked: fused per operator.

A population (:mod:`lrtune.population`) holds its members' weights as ``(K, *shape)`` tensors.
:func:`stacked_forward` runs a model's ``nn.Sequential`` tree on them the way HFTA fuses
models: K Linear layers as one batched matmul (the batch all members share broadcast to
them, not copied), K convolutions as one grouped convolution, K BatchNorms as one over
K times the channels (each member's running statistics updated in place in its row); modules
without weights run once on the K batches merged, elementwise ones on the stack as it is. A
module it does not know runs under ``torch.func.vmap`` on its own. Dropout draws one mask of
one member's batch shape and applies it to every member: the mask, and the RNG draws, of a run
of one model alone.

Activations are ``(K, B, ...)`` once they differ between members, ``(B, ...)`` (shared) before.
A Linear layer's output is kept feature-major, ``(K, F, B)`` in memory (``W @ X^T`` per member):
its weight's gradient then comes out contiguous, in the layout the population's flat stack
holds, and the next Linear reads it without a transpose; any other module reads it through a
``(K, B, F)`` view.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> params = {n: torch.stack([p.detach()] * 5) for n, p in model.named_parameters()}
    >>> x = torch.randn(8, 3)
    >>> out = stacked_forward(model, params, {}, x)
    >>> out.shape, torch.allclose(out[2], model(x), atol=1e-6)
    (torch.Size([5, 8, 2]), True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.nn import functional
from torch.nn.modules.dropout import _DropoutNd

from lrtune.models import _Residual

ELEMENTWISE = (
    nn.ReLU,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.SiLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Identity,
)
"""Modules without weights that act on each value alone: they run on the stack as it is."""

_CONV = {nn.Conv1d: functional.conv1d, nn.Conv2d: functional.conv2d}


@dataclass(frozen=True)
class _Activation:
    """What flows between modules: ``(K, B, ...)`` or, while shared, ``(B, ...)``; with
    ``feature_major``, ``value`` is ``(K, F, B)``: the ``(K, B, F)`` activation transposed."""

    value: Tensor
    shared: bool
    feature_major: bool = False

    def batch_major(self) -> _Activation:
        """This activation as ``(K, B, ...)`` (or shared ``(B, ...)``): a view, no copy."""
        if not self.feature_major:
            return self
        return _Activation(self.value.transpose(1, 2), shared=False)


def stacked_forward(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    inputs: Tensor,
    members: int | None = None,
) -> Tensor:
    """``model``'s output for every member, ``(K, B, ...)``, from the batch ``inputs`` they
    share; ``params`` and ``buffers`` by ``model``'s names, stacked along dim 0 (``K`` rows).

    The modules' ``training`` flags apply (dropout, BatchNorm's batch statistics).
    """
    count = members if members is not None else len(next(iter(params.values())))
    out = _run(model, "", params, buffers, _Activation(inputs, shared=True), count).batch_major()
    return out.value if not out.shared else out.value.expand(count, *out.value.shape)


def _run(
    module: nn.Module,
    prefix: str,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: _Activation,
    count: int,
) -> _Activation:
    kind = type(module)
    if kind is nn.Sequential:
        for name, child in module.named_children():
            x = _run(child, f"{prefix}{name}.", params, buffers, x, count)
        return x
    if kind is _Residual:
        body = _run(module.body, f"{prefix}body.", params, buffers, x, count)
        if x.feature_major != body.feature_major:
            x, body = x.batch_major(), body.batch_major()
        return _Activation(x.value + body.value, x.shared and body.shared, x.feature_major)
    if kind is nn.Linear:
        return _linear(params[f"{prefix}weight"], params.get(f"{prefix}bias"), x)
    if kind is nn.Dropout:
        return _dropout(module, x)
    if isinstance(module, ELEMENTWISE):
        return _Activation(module(x.value), x.shared, x.feature_major)
    x = x.batch_major()
    if kind in _CONV and module.padding_mode == "zeros":  # type: ignore[attr-defined]
        return _conv(module, prefix, params, x)
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d) and _stackable_norm(module):
        return _batch_norm(module, prefix, params, buffers, x, count)
    if _has_tensors(module):
        return _vmapped(module, prefix, params, buffers, x)
    if x.shared:
        return _Activation(module(x.value), x.shared)
    merged = x.value.reshape(-1, *x.value.shape[2:])
    out = module(merged)
    return _Activation(out.reshape(count, -1, *out.shape[1:]), shared=False)


def _linear(weight: Tensor, bias: Tensor | None, x: _Activation) -> _Activation:
    """K Linear layers as one batched matmul; the output feature-major where the input is one
    row of features a sample (``(B, in)`` shared or ``(K, B, in)``), else ``(K, B, ..., out)``."""
    members, _, in_features = weight.shape
    if x.feature_major:
        columns = x.value
    elif x.shared and x.value.dim() == 2:  # every member reads the same samples: a broadcast
        columns = x.value.t().expand(members, in_features, x.value.shape[0])
    elif not x.shared and x.value.dim() == 3:
        columns = x.value.transpose(1, 2)
    else:
        return _linear_rows(weight, bias, x)
    if bias is None:
        return _Activation(torch.bmm(weight, columns), shared=False, feature_major=True)
    out = torch.baddbmm(bias.unsqueeze(2), weight, columns)
    return _Activation(out, shared=False, feature_major=True)


def _linear_rows(weight: Tensor, bias: Tensor | None, x: _Activation) -> _Activation:
    """K Linear layers on inputs with more than one row a sample (``(K, B, T, in)``...)."""
    members, out_features, in_features = weight.shape
    value = x.value if not x.shared else x.value.expand(members, *x.value.shape)
    rows = value.reshape(members, -1, in_features)
    if bias is None:
        out = torch.bmm(rows, weight.transpose(1, 2))
    else:
        out = torch.baddbmm(bias.unsqueeze(1), rows, weight.transpose(1, 2))
    return _Activation(out.view(*value.shape[:-1], out_features), shared=False)


def _conv(
    module: nn.Module, prefix: str, params: Mapping[str, Tensor], x: _Activation
) -> _Activation:
    """K convolutions as one: shared input against K * out channels, else grouped by member."""
    weight, bias = params[f"{prefix}weight"], params.get(f"{prefix}bias")
    members = weight.shape[0]
    conv = _CONV[type(module)]
    flat_bias = None if bias is None else bias.reshape(-1)
    options = {
        "stride": module.stride,
        "padding": module.padding,
        "dilation": module.dilation,
    }
    if x.shared:
        out = conv(
            x.value,
            weight.reshape(-1, *weight.shape[2:]),
            flat_bias,
            groups=module.groups,
            **options,
        )
    else:
        batch = x.value.shape[1]
        merged = x.value.transpose(0, 1).reshape(batch, -1, *x.value.shape[3:])
        out = conv(
            merged,
            weight.reshape(-1, *weight.shape[2:]),
            flat_bias,
            groups=module.groups * members,
            **options,
        )
    out = out.view(out.shape[0], members, -1, *out.shape[2:]).transpose(0, 1)
    return _Activation(out, shared=False)


def _stackable_norm(module: nn.Module) -> bool:
    """A BatchNorm whose update needs no step count (``momentum`` set) and keeps statistics."""
    return module.momentum is not None and module.track_running_stats  # type: ignore[attr-defined]


def _batch_norm(
    module: nn.Module,
    prefix: str,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: _Activation,
    count: int,
) -> _Activation:
    """K BatchNorms as one over K * C channels; each member's running statistics (its row of
    the stacked buffers, viewed flat) are updated in place, as one BatchNorm updates its own."""
    value = x.value if not x.shared else x.value.expand(count, *x.value.shape)
    batch = value.shape[1]
    merged = value.transpose(0, 1).reshape(batch, -1, *value.shape[3:])
    weight, bias = params.get(f"{prefix}weight"), params.get(f"{prefix}bias")
    running_mean = buffers[f"{prefix}running_mean"]
    running_var = buffers[f"{prefix}running_var"]
    if module.training:
        buffers[f"{prefix}num_batches_tracked"].add_(1)
    out = functional.batch_norm(
        merged,
        running_mean.view(-1),
        running_var.view(-1),
        None if weight is None else weight.reshape(-1),
        None if bias is None else bias.reshape(-1),
        training=module.training,
        momentum=module.momentum,  # type: ignore[arg-type]
        eps=module.eps,  # type: ignore[arg-type]
    )
    out = out.view(batch, count, -1, *out.shape[2:]).transpose(0, 1)
    return _Activation(out, shared=False)


def _dropout(module: nn.Module, x: _Activation) -> _Activation:
    """One mask of one member's shape, for all: what a run of one model draws."""
    if x.shared or not module.training:
        return _Activation(module(x.value), x.shared, x.feature_major)
    rows = x.batch_major().value[0]  # one member's (B, ...): the mask's shape and draw order
    scaled_mask = module(torch.ones(rows.shape, dtype=rows.dtype, device=rows.device))
    if x.feature_major:
        return _Activation(x.value * scaled_mask.t(), shared=False, feature_major=True)
    return _Activation(x.value * scaled_mask, shared=False)


def _has_tensors(module: nn.Module) -> bool:
    """Whether the module or one inside it holds a parameter or a buffer (asked every batch:
    a leaf module answers from its own dicts)."""
    if not module._modules:
        return bool(module._parameters) or bool(module._buffers)
    return next(module.parameters(), None) is not None or next(module.buffers(), None) is not None


def _draws_random_numbers(module: nn.Module) -> bool:
    """Whether the module, training, draws dropout masks (an ``nn.Dropout`` inside it, or a
    ``dropout`` option of attention or a recurrent layer)."""
    if not module.training:
        return False
    for inner in module.modules():
        rate = getattr(inner, "p", None) if isinstance(inner, _DropoutNd) else None
        rate = rate if rate is not None else getattr(inner, "dropout", 0.0)
        if isinstance(rate, float) and rate > 0:
            return True
    return False


def _vmapped(
    module: nn.Module,
    prefix: str,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: _Activation,
) -> _Activation:
    """A module this file does not fuse, run per member under vmap.

    Raises:
        NotImplementedError: the module draws random numbers (dropout inside it): under vmap
            its masks and RNG draws would not be those of a run of one model alone.
    """
    if _draws_random_numbers(module):
        raise NotImplementedError(
            f"{type(module).__name__} has dropout inside: it cannot run stacked with the masks "
            "of a run alone"
        )
    own_params = {n: params[f"{prefix}{n}"] for n, _ in module.named_parameters()}
    own_buffers = {n: buffers[f"{prefix}{n}"] for n, _ in module.named_buffers()}

    def member(p: dict[str, Tensor], b: dict[str, Tensor], value: Tensor) -> Tensor:
        return functional_call(module, (p, b), (value,))

    in_dims = (0, 0, None if x.shared else 0)
    out = vmap(member, in_dims=in_dims, randomness="same")(own_params, own_buffers, x.value)
    return _Activation(out, shared=False)
