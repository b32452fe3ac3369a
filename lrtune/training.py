"""Train a registry model under one LR schedule: the loop behind trials, baselines and benchmarks.

Each epoch trains on the job's train split (the scheduler stepped per batch or per epoch as its
spec says, always after ``optimizer.step()``), evaluates on the validation split, reports to an
``on_epoch`` hook (the search prunes there), and writes a checkpoint of model, optimizer,
scheduler, RNG and data-order state, so that a run resumed from it ends exactly as an
uninterrupted one would.

A process that wants its runs to end cleanly (a worker told to stop by SIGTERM) calls
:func:`request_stop`: every run then raises :class:`StopRequested` at its next epoch boundary,
after the last finished epoch's checkpoint is on disk, so a later run resumes from there.

Example:
    >>> from lrtune.spec import JobSpec, OptimizerSpec
    >>> from lrtune.schedules import parse_schedule
    >>> spec = JobSpec.model_validate({"model": {"name": "logreg"}, "dataset": {"name": "wine"}})
    >>> setup = TrainingSetup.from_spec(spec, device="cpu")
    >>> run = train(setup, parse_schedule({"family": "cosine", "T_max": 3}), base_lr=0.1, epochs=3)
    >>> run.status, len(run.epochs)
    ('completed', 3)
"""

from __future__ import annotations

import functools
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lrtune.batches import batch_loss, move_to
from lrtune.datasets import DatasetBundle
from lrtune.device import resolve_device
from lrtune.exceptions import InvalidInputError
from lrtune.registry import build_model, load_dataset
from lrtune.result import TrainingRun
from lrtune.schedules import ScheduleSpec, drive
from lrtune.spec import JobSpec, OptimizerSpec

EpochHook = Callable[[int, dict[str, float]], None]


class StopTraining(Exception):
    """Raised by an ``on_epoch`` hook to end the run early (e.g. a pruned trial)."""


class StopRequested(KeyboardInterrupt):
    """The process was asked to stop (:func:`request_stop`): raised between epochs.

    A ``KeyboardInterrupt``, so that what runs the training treats it as an interruption (a
    search trial is recorded as interrupted and queued again), not as the run's failure.
    """


_stop = threading.Event()


def request_stop() -> None:
    """Ask every run of this process to stop at its next epoch boundary (from any thread)."""
    _stop.set()


def stop_requested() -> bool:
    """Whether :func:`request_stop` was called (and not cleared since)."""
    return _stop.is_set()


def wait_for_stop(timeout_s: float) -> bool:
    """Sleep up to ``timeout_s`` seconds, waking at once if a stop is requested; return it."""
    return _stop.wait(timeout_s)


def clear_stop_request() -> None:
    """Forget a requested stop (a process that goes on working, e.g. a test)."""
    _stop.clear()


def check_stop(where: str) -> None:
    """Raise :class:`StopRequested` if a stop was requested; ``where`` says at which point."""
    if _stop.is_set():
        raise StopRequested(f"stop requested: stopped {where}")


@dataclass
class TrainingSetup:
    """What every run of one job shares: data, model recipe, optimizer recipe, device."""

    spec: JobSpec
    bundle: DatasetBundle
    device: torch.device

    @classmethod
    def from_spec(cls, spec: JobSpec, device: str | torch.device | None = None) -> TrainingSetup:
        bundle = load_dataset(spec.dataset.name, spec.dataset.params)
        return cls(spec, bundle, resolve_device(device if device is not None else spec.device))

    @property
    def metric(self) -> str:
        """The name of the searched metric as it appears in epoch records."""
        return self.spec.search.metric

    def build_model(self, seed: int | None = None) -> nn.Module:
        """The job's model initialised from ``seed`` (default: the job's seed, so every run
        of the job starts from the same weights)."""
        seed = self.spec.seed if seed is None else seed
        model = build_model(self.spec.model.name, self.bundle, self.spec.model.params, seed=seed)
        return model.to(self.device)

    def param_groups(self, model: nn.Module) -> list[tuple[float, list[nn.Parameter]]]:
        """The optimizer's param groups as (LR multiplier, params), in the optimizer's order.

        Group 0 holds the parameters no prefix claims (multiplier 1) when there are any; then
        one group per prefix, in the order its first parameter appears in
        ``model.named_parameters()``. A parameter belongs to its longest matching prefix;
        empty groups are dropped, so group 0's multiplier is not 1 when every parameter
        matches a prefix.
        """
        prefixes = sorted(self.spec.param_groups, key=lambda g: len(g.prefix), reverse=True)
        groups: dict[str | None, list[nn.Parameter]] = {None: []}
        mults: dict[str | None, float] = {None: 1.0}
        for name, param in model.named_parameters():
            match = next((g for g in prefixes if name.startswith(g.prefix)), None)
            key = None if match is None else match.prefix
            groups.setdefault(key, []).append(param)
            mults[key] = 1.0 if match is None else match.lr_mult
        if len(groups) == 1 and self.spec.param_groups:
            raise InvalidInputError(
                f"no parameter name starts with any of {[g.prefix for g in self.spec.param_groups]}"
            )
        return [(mults[key], params) for key, params in groups.items() if params]

    @functools.cached_property
    def group_multipliers(self) -> list[float]:
        """Each param group's LR multiplier, in the optimizer's order (one build of the model)."""
        return [mult for mult, _ in self.param_groups(self.build_model())]

    def build_optimizer(self, model: nn.Module, base_lr: float) -> torch.optim.Optimizer:
        """The job's optimizer with every group at ``base_lr`` times its multiplier.

        ``base_lr`` is the LR of a parameter whose multiplier is 1, for every schedule family:
        build its scheduler with ``group_multipliers=setup.group_multipliers``.
        """
        groups = [{"params": p, "lr": base_lr * mult} for mult, p in self.param_groups(model)]
        return torch_optimizer(self.spec.optimizer, groups)

    def train_loader(self, generator: torch.Generator) -> DataLoader:
        """Shuffled train batches in the order ``generator`` gives.

        A trailing batch of a single sample is dropped: it breaks BatchNorm in training mode
        and is pure noise otherwise.
        """
        return DataLoader(
            self.bundle.train,
            batch_size=self.spec.batch_size,
            shuffle=True,
            generator=generator,
            drop_last=len(self.bundle.train) % self.spec.batch_size == 1,
        )

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(len(self.bundle.train), self.spec.batch_size)
        return full + (1 if rest > 1 else 0)


def torch_optimizer(spec: OptimizerSpec, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The torch optimizer ``spec`` names over ``groups`` (each a dict with params and lr).

    It lives here, not in :mod:`lrtune.spec`, which must not import torch (the HTTP API
    validates specs without it).
    """
    if spec.name == "sgd":
        return torch.optim.SGD(
            groups, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay
        )
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(groups, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)


def train(
    setup: TrainingSetup,
    schedule: ScheduleSpec,
    base_lr: float,
    epochs: int,
    *,
    lr_threshold: float | None = None,
    on_epoch: EpochHook | None = None,
    checkpoint: Path | None = None,
    seed: int | None = None,
) -> TrainingRun:
    """Train the job's model for ``epochs`` under ``schedule`` from ``base_lr``.

    Args:
        base_lr: the LR at multiplier 1 (param groups scale it by their ``lr_mult``).
        lr_threshold: end the run once every group's LR is below this.
        on_epoch: ``on_epoch(epoch, record)`` after each epoch's evaluation; raise
            :class:`StopTraining` in it to end the run as pruned.
        checkpoint: a file to save after every epoch and to resume from when it exists.
        seed: the initial weights' and the data order's seed (default: the job's seed);
            confirmation runs retrain a schedule on other seeds.

    Raises:
        StopRequested: :func:`request_stop` was called; raised before the next epoch starts,
            when the checkpoint of every finished epoch is written.
    """
    seed = setup.spec.seed if seed is None else seed
    model = setup.build_model(seed)
    optimizer = setup.build_optimizer(model, base_lr)
    driver = drive(
        schedule,
        optimizer,
        setup.steps_per_epoch,
        epochs,
        group_multipliers=setup.group_multipliers,
    )
    order = torch.Generator().manual_seed(seed)
    run = TrainingRun()
    start = 0
    if checkpoint is not None and checkpoint.exists():
        start = _resume(checkpoint, model, optimizer, driver, order, run)
    else:
        torch.manual_seed(seed)
    criterion = setup.bundle.loss_fn()
    loader = setup.train_loader(order)
    for epoch in range(start, epochs):
        check_stop(f"before epoch {epoch}")  # the last epoch's checkpoint is saved
        train_loss = _train_epoch(model, optimizer, driver, loader, criterion, setup.device, run)
        if train_loss is None:
            run.status, run.reason = "diverged", f"non-finite training loss in epoch {epoch}"
            break
        record = {"epoch": epoch, "train_loss": train_loss, **_evaluate(setup, model)}
        run.epochs.append(record)
        if not math.isfinite(record["val_loss"]):
            run.status, run.reason = "diverged", f"non-finite validation loss in epoch {epoch}"
            break
        driver.after_epoch(record["val_loss"])
        if checkpoint is not None:
            _save(checkpoint, epoch, model, optimizer, driver, order, run)
        if on_epoch is not None:
            try:
                on_epoch(epoch, record)
            except StopTraining as stop:
                run.status, run.reason = "pruned", str(stop) or f"pruned after epoch {epoch}"
                break
        if lr_threshold is not None and all(lr < lr_threshold for lr in driver.last_lrs()):
            run.status = "lr_threshold"
            run.reason = f"every group's LR fell below {lr_threshold:g} after epoch {epoch}"
            break
    return run


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    driver: Any,
    loader: DataLoader,
    criterion: nn.Module,
    device: torch.device,
    run: TrainingRun,
) -> float | None:
    """Mean training loss of one epoch, or None at the first non-finite loss."""
    model.train()
    total, count = torch.zeros((), device=device), 0
    for batch in loader:
        run.lr_steps.append([float(g["lr"]) for g in optimizer.param_groups])
        loss = batch_loss(model, move_to(batch, device), criterion)
        if not torch.isfinite(loss):
            return None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        driver.after_batch()
        total += loss.detach()
        count += 1
    return total.item() / max(count, 1)


def _evaluate(setup: TrainingSetup, model: nn.Module) -> dict[str, float]:
    scores = setup.bundle.evaluate(model, device=setup.device)
    record = {"val_loss": float(scores["loss"])}
    record.update({k: float(v) for k, v in scores.items() if k != "loss"})
    return record


def _save(
    path: Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    driver: Any,
    order: torch.Generator,
    run: TrainingRun,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": driver.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "data_order": order.get_state(),
        "run": run.model_dump(mode="json"),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous checkpoint intact


def _resume(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    driver: Any,
    order: torch.Generator,
    run: TrainingRun,
) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    driver.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    order.set_state(state["data_order"])
    restored = TrainingRun.model_validate(state["run"])
    run.epochs, run.lr_steps = restored.epochs, restored.lr_steps
    run.resumed_from = int(state["epoch"]) + 1
    return run.resumed_from
