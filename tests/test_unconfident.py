"""A range test that cannot be trusted: a GRU whose loss sits on a plateau before it learns.

The task: classify a sequence of 24 steps of Gaussian noise by the sign of its very first value.
The GRU must carry that value across every step; with Adam its loss stays at ln 2 for epochs
at small LRs, and a 100-step range test never sees it fall. The seeds' suggestions then land
anywhere on the flat curve (here four decades apart), well below the LRs that learn, and the
old bounds ``[s/10, min(10 s, d/2)]`` exclude every one of them. ``search_bounds`` widens the
range instead; the search must then find an LR within a decade of the grid's best constant LR.
The measurements behind it are in ``docs/unconfident_range_test.md``.
"""

from __future__ import annotations

import math
import statistics
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import TensorDataset

from lrtune import registry
from lrtune.datasets import DatasetBundle, FactoryParams, parse_params
from lrtune.registry import register_dataset, register_model
from lrtune.schedules import parse_schedule
from lrtune.spec import JobSpec
from lrtune.training import TrainingSetup, train
from lrtune.tuner import range_test, tune

optuna.logging.set_verbosity(optuna.logging.WARNING)

GRID = np.geomspace(1e-4, 1.0, 13)  # three points a decade
EPOCHS = 8


class FirstTokenParams(FactoryParams):
    n_samples: int = Field(768, ge=64, le=10_000)
    length: int = Field(24, ge=2, le=200)
    seed: int = Field(0, ge=0)


class GRUParams(FactoryParams):
    hidden: int = Field(16, ge=1, le=256)


def first_token(**params: Any) -> DatasetBundle:
    """Sequences of 2-d Gaussian noise, labelled by the sign of the first step's first value."""
    parsed = parse_params(FirstTokenParams, params, "dataset 'first_token'")
    generator = torch.Generator().manual_seed(parsed.seed)
    x = torch.randn(parsed.n_samples, parsed.length, 2, generator=generator)
    y = (x[:, 0, 0] > 0).long()
    n_train = parsed.n_samples * 3 // 4
    return DatasetBundle(
        name="first_token",
        task="classification",
        train=TensorDataset(x[:n_train], y[:n_train]),
        val=TensorDataset(x[n_train:], y[n_train:]),
        input_shape=(parsed.length, 2),
        output_dim=2,
    )


class LastStepGRU(nn.Module):
    """A GRU read out at its last step."""

    def __init__(self, n_inputs: int, hidden: int, n_outputs: int) -> None:
        super().__init__()
        self.gru = nn.GRU(n_inputs, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(x)
        return self.head(states[:, -1])


def last_step_gru(input_shape: tuple[int, ...], output_dim: int, **params: Any) -> nn.Module:
    parsed = parse_params(GRUParams, params, "model 'last_step_gru'")
    return LastStepGRU(input_shape[-1], parsed.hidden, output_dim)


@pytest.fixture
def plateau_task(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Register the task for this test only."""
    monkeypatch.setattr(registry._models, "_registered", dict(registry._models._registered))
    monkeypatch.setattr(registry._datasets, "_registered", dict(registry._datasets._registered))
    register_model("last_step_gru")(last_step_gru)
    register_dataset("first_token")(first_token)
    yield


def plateau_job(**search: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": f"plateau-{uuid.uuid4().hex[:12]}",
            "model": {"name": "last_step_gru"},
            "dataset": {"name": "first_token"},
            "optimizer": {"name": "adam"},
            "batch_size": 32,
            "range_test": {"seeds": 4},
            "search": {"epochs": EPOCHS, "metric": "accuracy", **search},
            "seed": 0,
        }
    )


def grid_best_constant_lr(setup: TrainingSetup) -> tuple[float, float]:
    """The constant LR of GRID with the best final accuracy (ties: lower val loss), and it."""
    constant = parse_schedule({"family": "constant"})
    scores = []
    for lr in GRID:
        run = train(setup, constant, float(lr), EPOCHS)
        last = run.epochs[-1] if run.status == "completed" else {"accuracy": 0, "val_loss": 1e9}
        scores.append((last["accuracy"], -last["val_loss"], float(lr)))
    accuracy, _, lr = max(scores)
    return lr, accuracy


@pytest.mark.slow
@pytest.mark.usefixtures("plateau_task")
def test_search_on_a_plateau_lands_within_a_decade_of_the_grids_best_constant_lr() -> None:
    # No pruner: on a plateau every LR looks alike for the first epochs, so pruning after one
    # would stop trials at random before they leave it.
    spec = plateau_job(families=["constant", "cosine", "onecycle"], n_trials=15, pruner="none")
    setup = TrainingSetup.from_spec(spec)
    best_lr, best_accuracy = grid_best_constant_lr(setup)
    assert best_accuracy > 0.9  # the task is learnable: the plateau ends at a good LR

    # The case is what it claims: the range test cannot be trusted, and the bounds around its
    # suggestion stay more than a decade below every LR that learns.
    result = range_test(setup, progress=False)
    assert result.consensus.spread_decades > 1.3
    old_high = 10 * result.suggestion  # no divergence: min(10 s, d / 2) is 10 s
    assert result.divergence_lr is None and old_high < best_lr / 10

    rec = tune(spec, progress=False)

    assert rec.bounds.widened
    assert "seeds disagree" in rec.bounds.reason and "never falls clearly" in rec.bounds.reason
    assert abs(math.log10(rec.base_lr / best_lr)) <= 1.0, (rec.base_lr, best_lr)
    # It learns on most confirmation seeds: a seed that stays on the plateau at a good LR
    # happens (here 0.52 on one of four, on some CPUs), so the mean is not the claim
    seed_values = [s.value for s in rec.best.seed_values]
    assert statistics.median(seed_values) > 0.9, seed_values
