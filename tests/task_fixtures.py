"""Tasks the tests load as a user's operator would (``lrtune worker --task task_fixtures:Blobs``):
one that trains, and ones that break the contract in each way a unit must report."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from lrtune.task import TaskBase

SEARCH = {
    "n_trials": 3,
    "epochs": 2,
    "families": ["constant", "cosine"],
    "confirm_seeds": 1,
    "max_confirm_seeds": 0,
    "baselines": ["optimizer_default"],
}
"""A small search the tests of tasks, workers and agents share: 3 trials, one finalist seed."""
RANGE_TEST = {"seeds": 2, "num_iter": 30}

_g = torch.Generator().manual_seed(0)
X = torch.randn(192, 4, generator=_g)
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()


class Blobs(TaskBase):
    """Two blobs, a linear classifier, accuracy maximized: a task of about 20 lines."""

    metric, direction = "accuracy", "maximize"

    def __init__(self, hidden: int = 0) -> None:
        self.hidden = hidden
        self.params = {"hidden": hidden} if hidden else {}

    def build_model(self, seed: int, device: torch.device) -> nn.Module:
        torch.manual_seed(seed)
        if not self.hidden:
            return nn.Linear(4, 2).to(device)
        return nn.Sequential(nn.Linear(4, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 2))

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def train_batches(self, seed: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(160, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        return [(X[i], Y[i]) for i in order.split(32)]

    def val_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(X[160:], Y[160:])]


class Raises(Blobs):
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        raise ValueError("the validation set is not mounted")


class NoMetric(Blobs):
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"loss": 0.5}


class NanMetric(Blobs):
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, Any]:
        return {"val_loss": 0.5, "accuracy": math.nan}


def broken_factory() -> Blobs:
    raise RuntimeError("no GPU quota")


blobs = Blobs()


class Slow(Blobs):
    """Blobs at 0.1 s a batch (5 batches an epoch): slow enough to be killed mid-unit."""

    def train_batches(self, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in super().train_batches(seed, epoch):
            time.sleep(0.1)
            yield batch


def trained_units(store: Any, job_id: str) -> int:
    """The job's units that were trained (a run stored on the trial): the range test aside,
    what its workers or agents ran; a confirmation unit the service resolved without training
    (a finalist that is a baseline, or none) is not one."""
    import optuna

    from lrtune._optuna import ATTR_RUN
    from lrtune.optuna_storage import open_storage
    from lrtune.search.queues import CONFIRM_SUFFIX

    storage = open_storage(store.url)
    name = store.get(job_id).study_name
    return sum(
        ATTR_RUN in trial.user_attrs
        for study_name in (name, name + CONFIRM_SUFFIX)
        for trial in optuna.load_study(study_name=study_name, storage=storage).get_trials()
    )
