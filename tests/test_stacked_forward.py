"""stacked_forward: K members' outputs from one fused pass equal each member's own forward, for
every path a Linear layer's activation takes (shared input, feature-major chains, residuals
mixing layouts, modules that read the batch-major view, inputs with a time axis) and dropout
draws the mask a run of one model alone draws."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lrtune.models import _Residual
from lrtune.stacked_forward import stacked_forward

MEMBERS = 3


def linear_block(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.Tanh())


MODELS = {
    "linear chain": lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)),
    "residual of linears": lambda: nn.Sequential(
        nn.Linear(6, 8), _Residual(linear_block(8)), nn.Linear(8, 4)
    ),
    "residual on the shared input": lambda: nn.Sequential(
        _Residual(linear_block(6)), nn.Linear(6, 4)
    ),
    "layer norm between linears": lambda: nn.Sequential(
        nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 4)
    ),
    "batch norm between linears": lambda: nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 4)
    ),
    "linear without bias": lambda: nn.Sequential(nn.Linear(6, 8, bias=False), nn.Linear(8, 4)),
}


def members_of(model: nn.Module) -> tuple[list[dict[str, torch.Tensor]], dict, dict]:
    """MEMBERS different weight sets for ``model``, and them stacked (params, buffers)."""
    weights = []
    for member in range(MEMBERS):
        torch.manual_seed(member)
        weights.append({n: torch.randn_like(p) * 0.5 for n, p in model.named_parameters()})
    params = {n: torch.stack([w[n] for w in weights]) for n in weights[0]}
    buffers = {n: torch.stack([b] * MEMBERS) for n, b in model.named_buffers()}
    return weights, params, buffers


@pytest.mark.parametrize("name", MODELS)
def test_each_members_output_is_its_own_forward(name: str) -> None:
    model = MODELS[name]().eval()
    weights, params, buffers = members_of(model)
    inputs = torch.randn(5, 6)
    stacked = stacked_forward(model, params, buffers, inputs)
    assert stacked.shape == (MEMBERS, 5, 4)
    for member, own in enumerate(weights):
        alone = functional_call(model, (own, dict(model.named_buffers())), (inputs,))
        torch.testing.assert_close(stacked[member], alone, rtol=1e-5, atol=1e-6)


def test_a_linear_over_a_time_axis_keeps_its_rows() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    weights, params, buffers = members_of(model)
    inputs = torch.randn(5, 7, 6)  # (B, T, features)
    stacked = stacked_forward(model, params, buffers, inputs)
    assert stacked.shape == (MEMBERS, 5, 7, 4)
    for member, own in enumerate(weights):
        torch.testing.assert_close(stacked[member], functional_call(model, own, (inputs,)))


def test_dropout_after_a_linear_draws_the_mask_of_a_run_alone() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 4)).train()
    same = {n: torch.stack([p.detach()] * MEMBERS) for n, p in model.named_parameters()}
    inputs = torch.randn(5, 6)
    torch.manual_seed(7)
    alone = model(inputs)
    torch.manual_seed(7)
    stacked = stacked_forward(model, same, {}, inputs)
    for member in range(MEMBERS):
        torch.testing.assert_close(stacked[member], alone, rtol=1e-5, atol=1e-6)
