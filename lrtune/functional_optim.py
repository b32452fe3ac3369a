"""torch.optim's SGD, Adam and AdamW for K models stacked along each tensor's first dimension.

A population (:mod:`lrtune.population`) keeps K members' parameters as one tensor each, shape
``(K, *shape)``. :class:`StackedOptimizer` updates them in one go with per-member
hyperparameters (each member's LR, momentum, betas... as its own torch optimizer's param groups
hold them at that step: its schedule sets them there), and member ``k``'s result equals what
``torch.optim``'s single-tensor implementation gives that member alone, to float tolerance.
It keeps each member's state in torch.optim's per-parameter format (:meth:`member_state`,
:meth:`load_member_states`), so a member's checkpoint is an ordinary optimizer state dict.

Example:
    >>> import torch
    >>> stacked = torch.zeros(2, 3)  # two members' copies of one 3-value parameter
    >>> optimizer = StackedOptimizer(torch.optim.SGD, {"w": 0})
    >>> member_groups = [[{"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
    ...                    "nesterov": False}], [{"lr": 1.0, "momentum": 0.0, "dampening": 0.0,
    ...                    "weight_decay": 0.0, "nesterov": False}]]
    >>> optimizer.step({"w": stacked}, {"w": torch.ones(2, 3)}, member_groups)
    >>> stacked[:, 0].tolist()
    [-0.10000000149011612, -1.0]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

GroupOptions = Mapping[str, Any]
"""One param group of a member's torch optimizer (``optimizer.param_groups[g]``)."""

FUNCTIONAL_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
)


def functional_refusal(optimizer: torch.optim.Optimizer) -> str | None:
    """Why ``optimizer``'s updates cannot run stacked (None: they can)."""
    name = type(optimizer).__name__
    if type(optimizer) not in FUNCTIONAL_OPTIMIZERS:
        return f"optimizer {name} has no functional population form (SGD, Adam and AdamW have)"
    for option in ("maximize", "differentiable", "capturable", "fused"):
        if any(group.get(option) for group in optimizer.param_groups):
            return f"optimizer {name} with {option}=True has no functional population form"
    return None


class StackedOptimizer:
    """One optimizer class's update for K members stacked along dim 0 (see the module).

    Args:
        kind: ``torch.optim.SGD``, ``Adam`` or ``AdamW``.
        group_of: each trained parameter's name and its param group index.
    """

    def __init__(self, kind: type[torch.optim.Optimizer], group_of: Mapping[str, int]) -> None:
        if kind not in FUNCTIONAL_OPTIMIZERS:
            raise ValueError(f"{kind.__name__} has no functional population form")
        self.kind = kind
        self.group_of = dict(group_of)
        self.state: dict[str, dict[str, Tensor]] = {}
        self.buffered: dict[str, list[bool]] = {}
        """SGD: which members have a momentum buffer, per parameter (torch.optim keeps none
        for a member until it steps with momentum)."""

    @torch.no_grad()
    def step(
        self,
        params: Mapping[str, Tensor],
        grads: Mapping[str, Tensor | None],
        member_groups: Sequence[Sequence[GroupOptions]],
    ) -> None:
        """Update ``params`` in place from ``grads`` (a None gradient leaves its parameter and
        state alone, as torch.optim does); ``member_groups[k][g]`` is member k's group g."""
        columns: dict[int, _Columns] = {}
        for name, group in self.group_of.items():
            grad = grads.get(name)
            if grad is None:
                continue
            if group not in columns:
                options = [groups[group] for groups in member_groups]
                columns[group] = _Columns(options, grad)
            state = self.state.setdefault(name, {})
            if self.kind is torch.optim.SGD:
                buffered = self.buffered.setdefault(name, [False] * len(grad))
                _sgd(params[name], grad, state, buffered, columns[group])
            else:
                _adam(params[name], grad, state, columns[group], self.kind)

    def member_state(self, member: int, name: str) -> dict[str, Tensor]:
        """Member ``member``'s state of parameter ``name`` as torch.optim keeps it (empty
        before the first step, or for SGD without momentum)."""
        state = self.state.get(name, {})
        if self.kind is torch.optim.SGD:
            if "momentum_buffer" not in state or not self.buffered[name][member]:
                return {}
            return {"momentum_buffer": state["momentum_buffer"][member].clone()}
        if not state:
            return {}
        saved = {"step": state["step"][member].clone()}
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            if key in state:
                saved[key] = state[key][member].clone()
        return saved

    def load_member_states(self, states: Sequence[Mapping[str, Mapping[str, Tensor]]]) -> None:
        """Stack the members' torch.optim states (``states[k][name]``, as :meth:`member_state`
        gives them); a member with no state for a parameter must be alone in that."""
        self.state, self.buffered = {}, {}
        for name in self.group_of:
            per_member = [member.get(name, {}) for member in states]
            if not any(per_member):
                continue
            self.buffered[name] = [bool(state) for state in per_member]
            if not all(per_member) and self.kind is not torch.optim.SGD:
                raise ValueError(f"members disagree on whether {name!r} has optimizer state")
            self.state[name] = _stacked_state(per_member)

    def keep(self, rows: Tensor) -> None:
        """Keep only the members at ``rows`` (indices into dim 0), in that order."""
        for state in self.state.values():
            for key, value in state.items():
                state[key] = value.index_select(0, rows.to(value.device))
        kept = rows.tolist()
        for name, buffered in self.buffered.items():
            self.buffered[name] = [buffered[row] for row in kept]


class _Columns:
    """One param group's per-member hyperparameters for one step: each a ``(K,)`` tensor of
    the parameters' dtype and device (one host-to-device copy for all), and the Python floats
    torch.optim would compute with."""

    def __init__(self, options: list[GroupOptions], like: Tensor) -> None:
        self.options = options
        self.lr = [float(o["lr"]) for o in options]
        self.weight_decay = [float(o["weight_decay"]) for o in options]
        if "momentum" in options[0]:
            self.momentum = [float(o["momentum"]) for o in options]
            self.undamped = [1 - float(o["dampening"]) for o in options]
            self.nesterov = bool(options[0]["nesterov"])
            rows = [self.lr, self.weight_decay, self.momentum, self.undamped]
        else:
            self.beta1 = [float(o["betas"][0]) for o in options]
            self.beta2 = [float(o["betas"][1]) for o in options]
            self.amsgrad = bool(options[0]["amsgrad"])
            self.decoupled = bool(options[0].get("decoupled_weight_decay", False))
            rows = [
                self.lr,
                self.weight_decay,
                [1 - b for b in self.beta1],
                self.beta2,
                [1 - b for b in self.beta2],
                [float(o["eps"]) for o in options],
            ]
        self.table = torch.tensor(rows, dtype=like.dtype).to(like.device)

    def row(self, index: int, param: Tensor) -> Tensor:
        """Row ``index`` of the table, shaped to broadcast against ``param`` ``(K, ...)``."""
        return self.table[index].view((-1,) + (1,) * (param.dim() - 1))

    def of(self, values: Sequence[float], param: Tensor) -> Tensor:
        """Per-member ``values`` shaped to broadcast against ``param``."""
        shape = (len(values),) + (1,) * (param.dim() - 1)
        return torch.tensor(values, dtype=param.dtype).to(param.device).view(shape)


def _sgd(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    buffered: list[bool],
    column: _Columns,
) -> None:
    """torch.optim.SGD's ``_single_tensor_sgd``, member by member."""
    if any(d != 0 for d in column.weight_decay):
        grad = grad.add(param * column.row(1, param))
    if any(m != 0 for m in column.momentum):
        grad = _momentum_step(grad, state, buffered, column, param)
    param.addcmul_(grad, column.row(0, param), value=-1)


def _momentum_step(
    grad: Tensor, state: dict[str, Tensor], buffered: list[bool], column: _Columns, param: Tensor
) -> Tensor:
    """SGD's momentum buffer update (``buffered`` updated in place); the direction each member
    steps in.

    A member's buffer starts as its gradient at its first step with momentum (torch.optim's
    rule); a member at momentum 0 in this step keeps its buffer and steps along its gradient.
    """
    momentum, undamped = column.row(2, param), column.row(3, param)
    uses = [m != 0 for m in column.momentum]
    fresh = [u and not b for u, b in zip(uses, buffered, strict=True)]
    buffered[:] = [u or b for u, b in zip(uses, buffered, strict=True)]
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = grad.clone()
        if all(uses):
            return _nesterov(grad, state["momentum_buffer"], momentum, column.nesterov)
    buffer = state["momentum_buffer"]
    if all(uses) and not any(fresh):
        if all(u == 1 for u in column.undamped):
            buffer.mul_(momentum).add_(grad)
        else:
            buffer.mul_(momentum).add_(grad * undamped)
        return _nesterov(grad, buffer, momentum, column.nesterov)
    uses_mask = column.of([float(u) for u in uses], param).bool()
    fresh_mask = column.of([float(f) for f in fresh], param).bool()
    updated = torch.where(fresh_mask, grad, buffer * momentum + grad * undamped)
    buffer.copy_(torch.where(uses_mask, updated, buffer))
    return torch.where(uses_mask, _nesterov(grad, buffer, momentum, column.nesterov), grad)


def _nesterov(grad: Tensor, buffer: Tensor, momentum: Tensor, nesterov: bool) -> Tensor:
    return grad + buffer * momentum if nesterov else buffer


def _adam(
    param: Tensor,
    grad: Tensor,
    state: dict[str, Tensor],
    column: _Columns,
    kind: type[torch.optim.Optimizer],
) -> None:
    """torch.optim.Adam's and AdamW's ``_single_tensor_adam``, member by member."""
    if not state:
        state["step"] = torch.zeros(param.shape[0], dtype=torch.float32)
        state["exp_avg"] = torch.zeros_like(param)
        state["exp_avg_sq"] = torch.zeros_like(param)
        if column.amsgrad:
            state["max_exp_avg_sq"] = torch.zeros_like(param)
    state["step"] += 1
    steps = state["step"].tolist()
    if any(d != 0 for d in column.weight_decay):
        if column.decoupled or kind is torch.optim.AdamW:
            decay = [1 - lr * d for lr, d in zip(column.lr, column.weight_decay, strict=True)]
            param.mul_(column.of(decay, param))
        else:
            grad = grad.add(param * column.row(1, param))
    state["exp_avg"].lerp_(grad, column.row(2, param))
    exp_avg_sq = state["exp_avg_sq"]
    exp_avg_sq.mul_(column.row(3, param)).add_(grad * grad * column.row(4, param))
    if "max_exp_avg_sq" in state:
        torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        exp_avg_sq = state["max_exp_avg_sq"]
    step_sizes = [-lr / (1 - b**s) for lr, b, s in zip(column.lr, column.beta1, steps, strict=True)]
    bias_sqrt = [math.sqrt(1 - b**s) for b, s in zip(column.beta2, steps, strict=True)]
    denom = (exp_avg_sq.sqrt() / column.of(bias_sqrt, param)).add_(column.row(5, param))
    param.add_(torch.div(state["exp_avg"], denom).mul_(column.of(step_sizes, param)))


def _stacked_state(per_member: list[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """One parameter's state across members, stacked (SGD: absent buffers are zeros, masked)."""
    present = next(state for state in per_member if state)
    if "momentum_buffer" in present:
        zeros = torch.zeros_like(present["momentum_buffer"])
        buffers = [s.get("momentum_buffer", zeros) for s in per_member]
        return {"momentum_buffer": torch.stack(buffers)}
    stacked = {key: torch.stack([s[key] for s in per_member]) for key in present if key != "step"}
    stacked["step"] = torch.stack([s["step"].float().cpu() for s in per_member])
    return stacked
