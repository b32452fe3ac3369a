"""Build the torch optimizer a job spec describes (kept out of :mod:`lrtune.spec`, which must
not import torch: the HTTP API validates specs without it).

Example:
    >>> import torch
    >>> from lrtune.spec import OptimizerSpec
    >>> layer = torch.nn.Linear(3, 1)
    >>> groups = [{"params": layer.parameters(), "lr": 0.01}]
    >>> optimizer = build_optimizer(OptimizerSpec(name="adamw"), groups)
    >>> type(optimizer).__name__, optimizer.param_groups[0]["lr"]
    ('AdamW', 0.01)
"""

from __future__ import annotations

from typing import Any

import torch

from lrtune.spec import OptimizerSpec


def build_optimizer(spec: OptimizerSpec, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The torch optimizer ``spec`` names over ``groups`` (each a dict with params and lr)."""
    if spec.name == "sgd":
        return torch.optim.SGD(
            groups,
            momentum=spec.momentum,
            nesterov=spec.nesterov,
            weight_decay=spec.weight_decay,
        )
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(groups, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)
