"""lrtune's Lightning integration (:mod:`lrtune.integrations.lightning`), on a tiny module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

import lrtune
from lrtune.integrations.lightning import (
    LightningTask,
    LRTuneFinder,
    LRTuneSchedule,
    quiet_lightning,
)
from lrtune.schedules import preview
from lrtune.training import StopRequested, StopTraining

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


class Blobs(pl.LightningModule):
    """Two-class logistic regression on 4 features, logging val_loss and val_acc."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Linear(4, 2)
        self.epochs_seen: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.epochs_seen.add(self.current_epoch)
        loss = functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return {
            "optimizer": optimizer,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1),
        }


class BlobData(pl.LightningDataModule):
    def __init__(self, n: int = 128, batch_size: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 4, generator=g)
        self.data = TensorDataset(x, (x[:, 0] > 0).long())
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=64)


def make_task(**kwargs) -> LightningTask:
    return LightningTask(lambda seed: Blobs(), lambda seed: BlobData(), **kwargs)


def test_an_epoch_trains_through_lightning_stepping_lrtunes_lr_once_per_optimizer_step():
    task = make_task(metric="val_acc", direction="maximize")
    model = task.build_model(0, CPU)
    optimizer = task.build_optimizer(model)
    seen = []

    def on_step(loss=None):
        seen.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.param_groups[0]["lr"] = 0.01 * (len(seen) + 1)  # what a schedule does

    before = model.net.weight.detach().clone()
    loss = task.train_epoch(model, optimizer, on_step, seed=0, epoch=0, device=CPU)
    assert task.steps_per_epoch == 8 and len(seen) == 8
    assert seen == pytest.approx([0.05] + [0.01 * (k + 1) for k in range(1, 8)])
    assert loss is not None and loss > 0
    assert not torch.equal(before, model.net.weight)
    scores = task.evaluate(model, CPU)
    assert {"val_loss", "val_acc", "train_loss"} <= scores.keys()


def test_accumulation_steps_once_per_accumulated_batches():
    task = make_task(trainer_kwargs={"accumulate_grad_batches": 3})
    model = task.build_model(0, CPU)
    optimizer = task.build_optimizer(model)
    steps = []
    task.train_epoch(
        model, optimizer, lambda loss=None: steps.append(1), seed=0, epoch=0, device=CPU
    )
    assert task.steps_per_epoch == 3 == len(steps)


@pytest.mark.parametrize("stop", [StopTraining("pruned"), StopRequested("sigterm")])
def test_what_on_step_raises_ends_the_epoch_and_comes_out_as_itself(stop):
    task = make_task()
    model = task.build_model(0, CPU)
    optimizer = task.build_optimizer(model)
    calls = []

    def on_step(loss=None):
        calls.append(1)
        if len(calls) == 2:
            raise stop

    with pytest.raises(type(stop)) as raised:
        task.train_epoch(model, optimizer, on_step, seed=0, epoch=0, device=CPU)
    assert raised.value is stop and len(calls) == 2
    assert "configure_optimizers" not in model.__dict__  # the module's own method again
    task.train_epoch(model, optimizer, lambda loss=None: None, seed=0, epoch=1, device=CPU)
    assert model.epochs_seen == {0, 1}  # the module's current_epoch is lrtune's epoch


def test_the_data_order_is_the_same_for_the_same_seed_and_epoch():
    task = make_task()
    first = [x for x, _ in task.train_batches(3, 1)]
    again = [x for x, _ in task.train_batches(3, 1)]
    other = [x for x, _ in task.train_batches(3, 2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_the_finder_callback_sets_the_modules_lr_to_the_suggestion():
    finder = LRTuneFinder(seeds=2, num_iter=30)
    module = Blobs(lr=123.0)
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[finder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with quiet_lightning():
        trainer.fit(module, datamodule=BlobData())
    assert finder.result is not None and len(finder.result.seeds) == 2
    assert module.lr == pytest.approx(finder.result.suggestion)
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(module.lr)


@pytest.fixture(scope="module")
def recommendation():
    """A tiny tune of the Lightning task: 2 trials of 2 epochs, confirmed on 2 seeds."""
    task = make_task(metric="val_acc", direction="maximize")
    return lrtune.tune(
        task,
        search={
            "n_trials": 2,
            "epochs": 2,
            "families": ["cosine"],
            "finalists": 1,
            "confirm_seeds": 2,
            "max_confirm_seeds": 2,
            "baselines": [],
        },
        range_test={"seeds": 2, "num_iter": 20},
        device="cpu",
        progress=False,
    )


def test_tune_gives_a_recommendation_on_the_tasks_metric(recommendation):
    rec = recommendation
    assert rec.metric == "val_acc" and rec.direction == "maximize"
    assert rec.best is not None and rec.base_lr > 0 and rec.steps_per_epoch == 8
    assert rec.confirmed and "optimizer" in rec.to_code()


class RecordLRs(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_the_schedule_callback_trains_under_the_recommended_lrs(recommendation, tmp_path):
    rec = recommendation
    path = tmp_path / "rec.json"
    path.write_text(rec.model_dump_json())
    record = RecordLRs()
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[LRTuneSchedule(path), record],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with pytest.warns(UserWarning, match="replaces the scheduler"), quiet_lightning():
        trainer.fit(Blobs(lr=123.0), datamodule=BlobData())
    expected = preview(rec.schedule, [rec.base_lr], rec.steps_per_epoch, 2)[:, 0]
    assert record.lrs == pytest.approx(expected.tolist())


def test_import_lrtune_loads_no_lightning():
    code = "import sys, lrtune, lrtune.integrations; assert 'lightning' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_the_example_tunes_the_digits_module_end_to_end():
    done = subprocess.run(
        [sys.executable, "examples/lightning_task.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(recommended)" in done.stdout and "optimizer = " in done.stdout
