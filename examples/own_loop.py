"""Tune the LR schedule of a training script that owns its loop.

A small CNN on scikit-learn's 8x8 digits, trained the way one writes it by hand: random shifts
and noise as augmentation (seeded by seed and epoch, so a rerun or a resumed run sees the same
batches), label smoothing, gradient clipping, AMP on CUDA (plain fp32 on the CPU), and AdamW
with two param groups in the old Caffe convention: biases and norms at twice the LR and no
weight decay. The loop is the task's own ``train_epoch``: it calls ``on_step(loss)`` after each
optimizer step, where lrtune sets the next step's LR (keeping the groups' 2:1 ratio), records
it, and may stop the run. lrtune then runs the range test, the schedule search, confirmation
on fresh seeds against the baselines, and prints what it recommends with a snippet to paste.

Run it (about 1-2 minutes on 2 CPU cores; ``--quick``: under 30 s)::

    python examples/own_loop.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import math
import sys

import optuna
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional

import lrtune
from lrtune.task import TaskBase


class DigitsOwnLoop(TaskBase):
    """The user's training code: model, optimizer, data and the epoch loop."""

    metric, direction = "accuracy", "maximize"
    batch_size, max_grad_norm = 64, 1.0

    def __init__(self) -> None:
        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N, 1, 8, 8
        y = torch.tensor(digits.target)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        train, val = order[:1437], order[1437:]
        self.x_train, self.y_train, self.x_val, self.y_val = x[train], y[train], x[val], y[val]
        self.steps_per_epoch = math.ceil(len(train) / self.batch_size)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def build_model(self, seed: int, device: torch.device) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 4 * 4, 10),
        ).to(device)  # fmt: skip

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        weights = [p for p in model.parameters() if p.dim() > 1]
        biases_and_norms = [p for p in model.parameters() if p.dim() <= 1]
        return torch.optim.AdamW(
            [
                {"params": weights, "lr": 1e-3, "weight_decay": 0.05},
                {"params": biases_and_norms, "lr": 2e-3, "weight_decay": 0.0},
            ]
        )

    def train_batches(self, seed: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch's shuffled, augmented batches: the same for the same seed and epoch."""
        g = torch.Generator().manual_seed(seed * 10_000 + epoch)
        n = len(self.y_train)
        padded = functional.pad(self.x_train[:, 0], (1, 1, 1, 1))  # N, 10, 10
        dy, dx = torch.randint(0, 3, (2, n), generator=g)  # shift each image by -1, 0 or +1
        rows = (dy[:, None] + torch.arange(8))[:, :, None]
        cols = (dx[:, None] + torch.arange(8))[:, None, :]
        shifted = padded[torch.arange(n)[:, None, None], rows, cols].unsqueeze(1)
        noisy = shifted + 0.05 * torch.randn(shifted.shape, generator=g)
        order = torch.randperm(n, generator=g)
        return [(noisy[i], self.y_train[i]) for i in order.split(self.batch_size)]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The training loss of a batch (the range test sweeps the LR on it)."""
        device = next(model.parameters()).device
        inputs, targets = (t.to(device) for t in batch)
        return self.criterion(model(inputs), targets)

    def train_epoch(self, model, optimizer, on_step, *, seed, epoch, device) -> None:
        """The user's own loop; ``on_step(loss)`` after each ``optimizer.step()``."""
        amp = device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=amp)  # a no-op on the CPU
        for inputs, targets in self.train_batches(seed, epoch):
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = self.criterion(model(inputs), targets)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), self.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            on_step(loss.detach())  # lrtune: next step's LR, records it, may stop the run
        # None: lrtune averages the losses on_step was given

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            logits = model(self.x_val.to(device)).float()
        model.train()
        targets = self.y_val.to(device)
        return {
            "val_loss": functional.cross_entropy(logits, targets).item(),
            "accuracy": (logits.argmax(1) == targets).float().mean().item(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (under 30 s)")
    parser.add_argument("--json", action="store_true", help="print the Recommendation as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per trial
    if args.quick:
        range_test = {"seeds": 1, "num_iter": 30}
        search = {"n_trials": 3, "epochs": 2, "families": ["constant", "cosine"]}
        search |= {"finalists": 1, "confirm_seeds": 1, "max_confirm_seeds": 1}
        search["baselines"] = ["constant_at_suggestion"]
    else:
        range_test = {"seeds": 2, "num_iter": 60}
        search = {"n_trials": 8, "epochs": 4, "families": ["constant", "cosine", "onecycle"]}
        search |= {"finalists": 2, "confirm_seeds": 2, "max_confirm_seeds": 3}
        # Prodigy refuses param groups at different LRs (ours are 2:1): the other baselines.
        search["baselines"] = ["constant_at_suggestion", "optimizer_default", "schedule_free"]
    rec = lrtune.tune(DigitsOwnLoop(), search=search, range_test=range_test, progress=False)
    if args.json:
        print(rec.model_dump_json())
        return 0
    if rec.best is None:
        print(f"no trial finished: {rec.verdict}")
        return 1
    print(f"range test suggests lr {rec.suggested_lr:.3g} (for group 0; group 1 keeps 2x)")
    print(f"recommended: {rec.best.describe}, {rec.metric} {rec.value:.4f}\n")
    print(rec.table())  # every schedule tried, the baselines, and the verdict
    print("\n# paste into your training script:")
    print(rec.to_code())
    return 0


if __name__ == "__main__":
    sys.exit(main())
