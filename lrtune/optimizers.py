"""What lrtune reads from a caller's optimizer: its param groups' LR ratios, and a fresh clone.

The range test sweeps one LR; every param group follows it at its own ratio to group 0, and the
schedules scale their LR values to the groups the same way. :func:`group_lr_ratios` is that one
rule for the whole library. :func:`clone_optimizer` builds the optimizer a sweep steps, so the
caller's optimizer (its state, an attached scheduler) is never touched.

Example:
    >>> import torch
    >>> body, head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    >>> optimizer = torch.optim.SGD(
    ...     [{"params": body.parameters()}, {"params": head.parameters(), "lr": 0.1}], lr=0.01
    ... )
    >>> [round(r, 12) for r in group_lr_ratios(optimizer)]
    [1.0, 10.0]
    >>> clone = clone_optimizer(optimizer)
    >>> [g["lr"] for g in clone.param_groups], clone.state_dict()["state"]
    ([0.01, 0.1], {})
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor


def group_lr_ratios(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each param group's configured LR divided by group 0's.

    A group's configured LR is its ``initial_lr`` when a scheduler is attached (schedulers
    overwrite ``lr`` as they step), else its ``lr``. The contract:

    - one group: ``[1.0]``, whatever its LR (0 included), since there is nothing to scale;
    - every group at LR 0: all ratios 1, the groups are alike (``onecycle`` and ``cyclic`` set
      their own LRs, so an optimizer built at LR 0 is valid for them);
    - several groups: ``[1.0, lr_1 / lr_0, ...]``; a later group at LR 0 gets ratio 0 (a frozen
      group stays frozen);
    - several groups with group 0 at LR 0 (or not finite): :class:`ValueError`, because no
      ratio to group 0 exists; put a group with a positive LR first.

    >>> layer = torch.nn.Linear(2, 2)
    >>> group_lr_ratios(torch.optim.SGD(layer.parameters(), lr=0.0))
    [1.0]
    >>> group_lr_ratios(torch.optim.SGD(
    ...     [{"params": [layer.weight], "lr": 0.0}, {"params": [layer.bias], "lr": 0.1}], lr=0.1
    ... ))
    Traceback (most recent call last):
    ...
    ValueError: param group 0 has lr 0.0: LRs of the other groups are ratios to group 0's, ...
    """
    configured = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
    if len(configured) == 1 or not any(configured):
        return [1.0] * len(configured)
    base = configured[0]
    if not (base > 0 and math.isfinite(base)):
        raise ValueError(
            f"param group 0 has lr {base}: LRs of the other groups are ratios to group 0's, "
            "so it needs a positive finite lr; put a group with a positive lr first "
            "(a frozen group can come later at lr 0)"
        )
    return [lr / base for lr in configured]


def clone_optimizer(
    optimizer: torch.optim.Optimizer, params_by_id: dict[int, Tensor] | None = None
) -> torch.optim.Optimizer:
    """A fresh optimizer of the same class, groups and hyperparameters, with empty state.

    ``params_by_id`` maps each original parameter (by ``id``) to the tensor that the clone
    should train instead; without it the clone trains the same parameters.
    """
    groups = []
    for group in optimizer.param_groups:
        params = [params_by_id[id(p)] if params_by_id else p for p in group["params"]]
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
    # Groups carry every hyperparameter; defaults go only where the constructor takes them
    # (AdamW's defaults hold `decoupled_weight_decay`, which its __init__ does not accept).
    accepted = inspect.signature(type(optimizer).__init__).parameters
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return type(optimizer)(groups, **defaults)
