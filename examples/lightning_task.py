"""Tune a Lightning MLP on scikit-learn's digits with lrtune, end to end, offline, on a CPU.

Run it with ``python examples/lightning_task.py`` (under a minute on two idle cores). The module
and datamodule are ordinary Lightning code; :class:`~lrtune.integrations.lightning.LightningTask`
lets lrtune run its range test, schedule search and confirmation through Lightning's Trainer,
and prints the recommendation and the code to train with it.
"""

from __future__ import annotations

import lightning.pytorch as pl
import optuna
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

import lrtune
from lrtune.integrations.lightning import LightningTask


class DigitsMLP(pl.LightningModule):
    """An MLP on 8x8 digit images; logs ``val_loss`` and ``val_acc``."""

    def __init__(self, lr: float = 0.01, hidden: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, targets = batch
        return functional.cross_entropy(self(inputs), targets)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        logits = self(inputs)
        self.log("val_loss", functional.cross_entropy(logits, targets))
        self.log("val_acc", (logits.argmax(1) == targets).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class DigitsData(pl.LightningDataModule):
    """scikit-learn's bundled digits (no download), split 80/20 by ``seed``."""

    def __init__(self, seed: int = 0, batch_size: int = 64) -> None:
        super().__init__()
        self.seed, self.batch_size = seed, batch_size

    def setup(self, stage: str) -> None:
        digits = load_digits()
        inputs = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        targets = torch.tensor(digits.target)
        order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(self.seed))
        cut = int(0.8 * len(order))
        self.train_set = TensorDataset(inputs[order[:cut]], targets[order[:cut]])
        self.val_set = TensorDataset(inputs[order[cut:]], targets[order[cut:]])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=512)


def main() -> None:
    torch.set_num_threads(2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line a trial otherwise
    task = LightningTask(
        lambda seed: DigitsMLP(),
        lambda seed: DigitsData(seed=0),  # one split; the seed varies weights and data order
        metric="val_acc",
        direction="maximize",
        name="digits-lightning-mlp",
        trainer_kwargs={"gradient_clip_val": 1.0},
    )
    rec = lrtune.tune(
        task,
        search={
            "n_trials": 4,
            "epochs": 3,
            "families": ["constant", "cosine", "onecycle"],
            "finalists": 2,
            "confirm_seeds": 2,
            "max_confirm_seeds": 2,
        },
        range_test={"seeds": 2, "num_iter": 50},
        device="cpu",
        progress=False,
    )
    print(rec.table())  # the candidates, their seeds, and the verdict
    print()
    print(rec.to_code())


if __name__ == "__main__":
    main()
