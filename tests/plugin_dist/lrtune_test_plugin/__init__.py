"""A test plugin for lrtune, declared in ``lrtune_test_plugin-0.1.dist-info/entry_points.txt``.

It adds a model and a dataset the way an operator's package would; its entry points also
include one that does not resolve and one that tries to take the built-in name ``mlp``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from sklearn.datasets import make_blobs
from torch import nn
from torch.utils.data import TensorDataset

from lrtune.datasets import DatasetBundle, FactoryParams, parse_params


class ModelParams(FactoryParams):
    width: int = Field(16, ge=1, le=256)


class DatasetParams(FactoryParams):
    n_samples: int = Field(300, ge=20, le=10_000)
    seed: int = Field(0, ge=0)


def make_model(input_shape: tuple[int, ...], output_dim: int, **params: Any) -> nn.Module:
    parsed = parse_params(ModelParams, params, "model 'plugin_mlp'")
    n_features = int(torch.Size(input_shape).numel())
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(n_features, parsed.width),
        nn.ReLU(),
        nn.Linear(parsed.width, output_dim),
    )


def make_dataset(**params: Any) -> DatasetBundle:
    parsed = parse_params(DatasetParams, params, "dataset 'plugin_blobs'")
    features, labels = make_blobs(
        n_samples=parsed.n_samples, centers=3, n_features=2, random_state=parsed.seed
    )
    n_train = parsed.n_samples * 3 // 4
    x = torch.as_tensor(features, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    return DatasetBundle(
        name="plugin_blobs",
        task="classification",
        train=TensorDataset(x[:n_train], y[:n_train]),
        val=TensorDataset(x[n_train:], y[n_train:]),
        input_shape=(2,),
        output_dim=3,
    )


class PluginTask:
    """A task an installed package declares in the ``lrtune.tasks`` entry-point group."""

    name, metric, direction = "plugin_task", "val_loss", "minimize"

    def build_model(self, seed: int, device: torch.device) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Linear(2, 3).to(device)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.1)

    def train_batches(self, seed: int, epoch: int) -> list[Any]:
        bundle = make_dataset()
        return [bundle.train.tensors]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        x, y = make_dataset().val.tensors
        return {"val_loss": float(nn.functional.cross_entropy(model(x), y))}


plugin_task = PluginTask()
