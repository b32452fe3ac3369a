"""Snapshot and exact restore of what a range test disturbs, and seeding that stays inside it.

A snapshot covers the model's parameters, their ``.grad`` (``None`` included), every buffer
(non-persistent ones too), modules' extra state (``get_extra_state``), train/eval modes, and
the Python, NumPy, torch CPU and CUDA random generators. :func:`seed_torch` and
:func:`reinitialize` seed only generators that the snapshot restores: unlike
``torch.manual_seed`` they never queue a seed for CUDA's lazy initialisation, which would reach
the caller's CUDA generators long after the test ended.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 1)
    >>> weight = model.weight.detach().clone()
    >>> with preserved(model):
    ...     model(torch.ones(2, 3)).sum().backward()
    ...     torch.optim.SGD(model.parameters(), lr=1.0).step()
    >>> torch.equal(model.weight, weight), model.weight.grad
    (True, None)
"""

from __future__ import annotations

import contextlib
import copy
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn


def seed_torch(seed: int) -> None:
    """Seed torch's CPU generator and, where CUDA is already initialised, every CUDA one."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def reinitialize(model: nn.Module, seed: int) -> None:
    """Fresh weights from ``seed`` for every submodule that defines ``reset_parameters``.

    The torch generators it draws from are put back afterwards.
    """
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda_devices):
        seed_torch(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()


@dataclass
class RngState:
    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None  # None: CUDA was not initialised at the snapshot

    @classmethod
    def capture(cls) -> RngState:
        """The state of every generator; CUDA's only where CUDA is initialised (reading it
        would initialise CUDA, creating a context a CPU-only run must not have)."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        """Put every generator back.

        CUDA initialised inside the block (not by :func:`find_lr`, which initialises it before
        its snapshot when it runs there) gets the state initialisation gave it: each generator
        at its seed (the caller's ``torch.manual_seed``, or torch's default), offset 0.
        """
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        elif torch.cuda.is_initialized():
            for generator in torch.cuda.default_generators:
                generator.manual_seed(generator.initial_seed())


@dataclass
class _SavedGrad:
    tensor: torch.Tensor  # the caller's own .grad object, so references to it stay valid
    values: torch.Tensor


@dataclass
class ModelState:
    parameters: dict[str, torch.Tensor]
    grads: dict[str, _SavedGrad | None]
    buffers: dict[str, torch.Tensor]
    extra_states: dict[str, Any]
    training: dict[str, bool]
    device: torch.device

    @classmethod
    def capture(cls, model: nn.Module) -> ModelState:
        named_parameters = dict(model.named_parameters())
        grads = {
            name: None if p.grad is None else _SavedGrad(p.grad, p.grad.detach().clone())
            for name, p in named_parameters.items()
        }
        extra_states = {
            name: copy.deepcopy(module.get_extra_state())
            for name, module in model.named_modules()
            if _has_extra_state(module)
        }
        first = next(iter(named_parameters.values()), None)
        return cls(
            parameters={k: p.detach().clone() for k, p in named_parameters.items()},
            grads=grads,
            buffers={k: b.detach().clone() for k, b in model.named_buffers()},
            extra_states=extra_states,
            training={name: m.training for name, m in model.named_modules()},
            device=first.device if first is not None else torch.device("cpu"),
        )

    def restore(self, model: nn.Module) -> None:
        model.to(self.device)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(self.parameters[name])
                saved = self.grads[name]
                if saved is not None:
                    saved.tensor.data = saved.values  # moving the model may have moved it
                param.grad = None if saved is None else saved.tensor
            for name, buffer in model.named_buffers():
                buffer.copy_(self.buffers[name])
        modules = dict(model.named_modules())
        for name, state in self.extra_states.items():
            modules[name].set_extra_state(state)
        for name, module in modules.items():
            module.training = self.training[name]


def _has_extra_state(module: nn.Module) -> bool:
    """The test ``nn.Module.state_dict`` applies: the class overrides ``get_extra_state``."""
    return type(module).get_extra_state is not nn.Module.get_extra_state


@contextlib.contextmanager
def preserved(model: nn.Module, device: torch.device | None = None) -> Iterator[ModelState]:
    """Run a block that trains ``model``; afterwards, even on error, put everything back.

    Copying into the existing tensors (rather than ``load_state_dict`` replacing them) keeps
    every outside reference valid: the caller's optimizer still points at the same parameters.
    A CUDA ``device`` (where the block will run) is initialised before the snapshot, so that the
    CUDA generators come back in the state initialisation gives them.
    """
    if device is not None and device.type == "cuda":
        torch.cuda.init()
    rng = RngState.capture()
    state = ModelState.capture(model)
    try:
        yield state
    finally:
        state.restore(model)
        rng.restore()
