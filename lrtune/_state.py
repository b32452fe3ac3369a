"""Snapshot and exact restore of what a range test disturbs: weights, buffers, modes, RNGs."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


@dataclass
class RngState:
    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor]

    @classmethod
    def capture(cls) -> RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda:
            torch.cuda.set_rng_state_all(self.torch_cuda)


@dataclass
class ModelState:
    tensors: dict[str, torch.Tensor]
    training: dict[str, bool]
    device: torch.device

    @classmethod
    def capture(cls, model: nn.Module) -> ModelState:
        tensors = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
        training = {name: m.training for name, m in model.named_modules()}
        first = next(model.parameters(), None)
        return cls(tensors, training, first.device if first is not None else torch.device("cpu"))

    def restore(self, model: nn.Module) -> None:
        model.to(self.device)
        with torch.no_grad():
            for name, value in model.state_dict(keep_vars=True).items():
                value.copy_(self.tensors[name])
        for name, module in model.named_modules():
            module.training = self.training[name]


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[ModelState]:
    """Run a block that trains ``model``; afterwards, even on error, put everything back.

    Copying into the existing tensors (rather than ``load_state_dict`` replacing them) keeps
    every outside reference valid: the caller's optimizer still points at the same parameters.
    """
    rng = RngState.capture()
    state = ModelState.capture(model)
    try:
        yield state
    finally:
        state.restore(model)
        rng.restore()
