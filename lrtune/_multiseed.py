"""K range-test sweeps of one small model as a single vectorized sweep.

The K copies' weights and buffers are stacked (``torch.func.stack_module_state``); one
``vmap(grad_and_value(...))`` call computes every copy's loss and gradients on its own batch,
so BatchNorm keeps per-copy running statistics and dropout draws per-copy masks
(``randomness="different"``). One optimizer of the caller's class then steps the stacked
tensors: for elementwise optimizers (SGD, Adam, ...) that is exactly K independent optimizers.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from lrtune._state import reinitialize
from lrtune.batches import endless, move_to, stack_batches
from lrtune.optimizers import clone_optimizer

# Optimizers whose update of a tensor is elementwise, hence identical on a stacked tensor
# (ASGD's step-size and averaging factors are scalars of the step count). Not Adafactor: it
# factors a tensor's second moment over its last two dimensions, which stacking changes.
ELEMENTWISE_OPTIMIZERS = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
    torch.optim.ASGD,
    torch.optim.Rprop,
)


class VectorizeUnsupported(Exception):
    """This model, optimizer or data cannot run as one vectorized sweep."""


class _LossModule(nn.Module):
    """Wraps the model so that ``functional_call`` can swap its tensors around any loss code."""

    def __init__(self, model: nn.Module, compute_loss: Callable[[nn.Module, Any], Tensor]):
        super().__init__()
        self.model = model
        self.compute_loss = compute_loss

    def forward(self, batch: Any) -> Tensor:
        return self.compute_loss(self.model, batch)


class VmapEngine:
    """A :class:`lrtune.finder.SweepEngine` over K stacked copies of one model.

    ``train_step`` raises :class:`VectorizeUnsupported` at the first step whose batches cannot
    be stacked.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_per_copy: Sequence[Iterable[Any]],
        compute_loss: Callable[[nn.Module, Any], Tensor],
        lr_ratios: Sequence[float],
        device: torch.device,
        accumulation_steps: int,
        seeds: Sequence[int],
        reinit: bool,
    ) -> None:
        if not isinstance(optimizer, ELEMENTWISE_OPTIMIZERS):
            raise VectorizeUnsupported(
                f"{type(optimizer).__name__} is not an elementwise optimizer"
            )
        self.copies = len(data_per_copy)
        self.device = device
        self.accumulation_steps = accumulation_steps
        self.lr_ratios = list(lr_ratios)
        self.streams = [endless(d) for d in data_per_copy]
        replicas = [copy.deepcopy(model) for _ in range(self.copies)]
        if reinit:
            for replica, seed in zip(replicas, seeds, strict=True):
                reinitialize(replica, seed)
        try:
            params, buffers = stack_module_state(replicas)
        except RuntimeError as exc:
            # Each deepcopy of a torch.fx GraphModule (fx.symbolic_trace, onnx2torch) has a
            # class of its own, which stack_module_state refuses.
            raise VectorizeUnsupported(f"the model's copies cannot be stacked: {exc}") from exc
        self.params = {f"model.{k}": v for k, v in params.items()}
        self.buffers = {f"model.{k}": v for k, v in buffers.items()}
        self.loss_module = _LossModule(copy.deepcopy(model), compute_loss)
        names = {id(p): f"model.{n}" for n, p in model.named_parameters()}
        # Frozen parameters get no gradient, as in a plain loop, so no optimizer moves them.
        self.trainable = [f"model.{n}" for n, p in model.named_parameters() if p.requires_grad]
        self.optimizer = clone_optimizer(
            optimizer, {pid: self.params[name] for pid, name in names.items()}
        )
        self._grad_and_loss = vmap(
            grad_and_value(self._loss), in_dims=(0, 0, 0), randomness="different"
        )
        self._eval_loss = vmap(self._loss, in_dims=(0, 0, None), randomness="different")

    def _loss(self, params: dict[str, Tensor], buffers: dict[str, Tensor], batch: Any) -> Tensor:
        return functional_call(self.loss_module, (params, buffers), (batch,))

    def _next_stacked_batch(self) -> Any:
        """The copies' next batches as one, or VectorizeUnsupported where they cannot stack."""
        batches = [next(s) for s in self.streams]
        try:
            stacked = stack_batches(batches)
        except (TypeError, ValueError) as exc:
            raise VectorizeUnsupported(str(exc)) from exc
        return move_to(stacked, self.device)

    def check(self) -> None:
        """Compute one step's gradients on copies of the buffers, or raise VectorizeUnsupported.

        The batches it reads are put back in front of their streams, so the sweep sees them.
        """
        first = [next(s) for s in self.streams]
        self.streams = [itertools.chain([b], s) for b, s in zip(first, self.streams, strict=True)]
        buffers = {k: v.clone() for k, v in self.buffers.items()}
        try:
            batch = move_to(stack_batches(first), self.device)
            self._grad_and_loss(self.params, buffers, batch)
        except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
            raise VectorizeUnsupported(f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc

    def train_step(self, lr: float) -> np.ndarray:
        for group, ratio in zip(self.optimizer.param_groups, self.lr_ratios, strict=True):
            group["lr"] = lr * ratio
        grads: dict[str, Tensor] = {}
        total = torch.zeros(self.copies, device=self.device)
        for _ in range(self.accumulation_steps):
            step_grads, loss = self._grad_and_loss(
                self.params, self.buffers, self._next_stacked_batch()
            )
            for name, g in step_grads.items():
                grads[name] = grads[name] + g if name in grads else g
            total += loss.detach().float()
        for name in self.trainable:
            self.params[name].grad = grads[name] / self.accumulation_steps
        self.optimizer.step()
        return total.cpu().numpy() / self.accumulation_steps

    @torch.no_grad()
    def val_loss(self, batches: Sequence[Any]) -> np.ndarray:
        self.loss_module.eval()
        try:
            losses = [self._eval_loss(self.params, self.buffers, b).float() for b in batches]
        finally:
            self.loss_module.train()
        return torch.stack(losses).mean(dim=0).cpu().numpy()
