"""Train a job's task under one LR schedule: the loop behind trials, baselines and benchmarks.

The task is the job's registry model and dataset (:mod:`lrtune.registry_task`) or the user's
own code (:mod:`lrtune.task`): one loop for both. Each epoch trains on the task's batches (or
runs the task's own ``train_epoch``; the scheduler stepped per batch or per epoch as its spec
says, always after ``optimizer.step()``), evaluates (the task's ``evaluate``), reports to an
``on_epoch`` hook (the search prunes there), and writes a checkpoint of model, optimizer,
scheduler, RNG, data-order state and the task's own state (and the GradScaler's, with ``amp``),
so that a run resumed from it ends exactly as an uninterrupted one would.

On a GPU (see :class:`TrainingSetup`), for a registry job: the job's data is moved to the device
once when it fits (:data:`DEVICE_DATA_FRACTION`), and batches are sliced there; ``spec.amp``
trains under fp16 autocast with a GradScaler; an epoch reads the device once for its loss and
its divergence check, and once for its evaluation (not once a batch); cuDNN runs deterministic
kernels in full fp32 unless ``spec.cuda_fast_kernels`` opts in to autotuning and TF32. On the
CPU all of this is a no-op and runs are bit-for-bit what they were without it.

A process that wants its runs to end cleanly (a worker told to stop by SIGTERM) calls
:func:`request_stop`: every run then raises :class:`StopRequested` at its next epoch boundary
or, within an epoch, at its next look (at most every ``stop_check_s`` seconds, default
:data:`~lrtune.spec.UNIT_CHECK_S`: one clock read a batch, no device sync), so a run with
epochs of an hour still stops within seconds. The last finished epoch's checkpoint is on
disk, so a later run resumes from there: an epoch interrupted mid-way is redone from its
start, and the resumed run ends exactly as an uninterrupted one would.

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

import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from lrtune.datasets import DatasetBundle
from lrtune.device import resolve_device
from lrtune.exceptions import InvalidInputError
from lrtune.lr_free import LRFreeName, needs_modes, prepare_to_evaluate, prepare_to_train
from lrtune.registry import load_dataset
from lrtune.registry_task import (  # noqa: F401 (re-exported: where they lived before)
    DEVICE_DATA_FRACTION,
    RegistryTask,
    on_device,
    torch_optimizer,
)
from lrtune.result import TrainingRun
from lrtune.schedules import ScheduleSpec, drive
from lrtune.spec import UNIT_CHECK_S, JobSpec
from lrtune.task import Task, TaskError, check_task, checked_scores

EpochHook = Callable[[int, dict[str, float]], None]
StopReason = Callable[[], "str | None"]
"""Why a run must stop now (e.g. its job was cancelled), else None: asked within each epoch."""

logger = logging.getLogger(__name__)


class StopTraining(Exception):
    """Raised by an ``on_epoch`` hook to end the run early (e.g. a pruned trial)."""


class StopRequested(KeyboardInterrupt):
    """The process was asked to stop (:func:`request_stop`): raised between epochs, or within
    one at its next look (the interrupted epoch is redone when the run resumes).

    A ``KeyboardInterrupt``, so that what runs the training treats it as an interruption (a
    search trial is recorded as interrupted and queued again), not as the run's failure.
    """


_stop = threading.Event()
_stop_listeners: list[Callable[[], None]] = []


def request_stop() -> None:
    """Ask every run of this process to stop at its next epoch boundary or look within an
    epoch (from any thread or a signal handler), and tell the :func:`stop_listener`-s at once."""
    _stop.set()
    for listener in list(_stop_listeners):
        listener()


@contextlib.contextmanager
def stop_listener(listener: Callable[[], None]) -> Iterator[None]:
    """Call ``listener`` when a stop is requested while in the ``with`` (e.g. a worker passes
    the request on to its child processes at once, not when its loop next looks)."""
    _stop_listeners.append(listener)
    try:
        yield
    finally:
        _stop_listeners.remove(listener)


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
    """What every run of one job shares: its spec, its task (the code that trains) and device.

    ``task`` is the job's registry model and dataset (:class:`~lrtune.registry_task.RegistryTask`,
    what :meth:`from_spec` builds) or the user's own code (:class:`~lrtune.task.Task`, given to
    :meth:`from_spec`): both train through the same loop.
    """

    spec: JobSpec
    task: Task
    device: torch.device

    @classmethod
    def from_spec(
        cls, spec: JobSpec, device: str | torch.device | None = None, task: Task | None = None
    ) -> TrainingSetup:
        """The setup of ``spec``: its registry model and dataset, or ``task`` for a job that
        names one (``spec.task``).

        Raises:
            InvalidInputError: the job names a task and none is given, or a task is given to a
                job that names a registry model.
        """
        resolved = resolve_device(device if device is not None else spec.device)
        if spec.task is not None:
            if task is None:
                raise InvalidInputError(
                    f"job names task {spec.task.name!r}: run it where that task is loaded "
                    "(tune(task), lrtune worker --task, lrtune agent --task)"
                )
            check_task(task)
            return cls(spec, task, resolved)
        if task is not None:
            raise InvalidInputError("the job names a registry model: it takes no task")
        bundle = load_dataset(spec.dataset.name, spec.dataset.params)
        return cls(spec, RegistryTask(spec, bundle, resolved), resolved)

    @classmethod
    def from_bundle(
        cls, spec: JobSpec, bundle: DatasetBundle, device: torch.device
    ) -> TrainingSetup:
        """The setup of a registry job whose data is already loaded (e.g. an upload)."""
        return cls(spec, RegistryTask(spec, bundle, device), device)

    @classmethod
    def of_shape(
        cls, spec: JobSpec, steps_per_epoch: int, group_multipliers: list[float]
    ) -> TrainingSetup:
        """A setup that knows a job's runs' shape only, and trains nothing: what a service
        that hands a job's units to agents needs to plan them and to write the answer."""
        return cls(spec, RunShape(spec.subject, steps_per_epoch, group_multipliers), cpu())

    @property
    def bundle(self) -> DatasetBundle:
        """A registry job's dataset (a task's data is its own business).

        Raises:
            InvalidInputError: the job runs a task.
        """
        if not isinstance(self.task, RegistryTask):
            raise InvalidInputError(f"task {self.task.name!r} has no registry dataset")
        return self.task.bundle

    @property
    def amp(self) -> bool:
        """Whether the loop trains with a GradScaler (a registry job's ``amp`` on CUDA; a task
        that wants AMP owns its loop: ``train_epoch``)."""
        return bool(getattr(self.task, "amp", False))

    def kernels(self) -> contextlib.AbstractContextManager[None]:
        """A context with the job's CUDA kernel choice in force (see :func:`cuda_kernels`)."""
        return cuda_kernels(self.device, fast=self.spec.cuda_fast_kernels)

    @property
    def metric(self) -> str:
        """The name of the searched metric as it appears in epoch records."""
        return self.spec.search.metric

    def build_model(self, seed: int | None = None) -> nn.Module:
        """The task's model initialised from ``seed`` (default: the job's seed, so every run
        of the job starts from the same weights), on the device."""
        return self.task.build_model(self.spec.seed if seed is None else seed, self.device)

    @functools.cached_property
    def group_multipliers(self) -> list[float]:
        """Each param group's LR multiplier, in the optimizer's order: a registry job's
        ``lr_mult``-s, or the ratios of a task's group LRs to its group 0's as it builds them
        (one build of the model and optimizer)."""
        declared = getattr(self.task, "group_multipliers", None)
        if declared is not None:
            return list(declared)
        return written_lr_ratios(self.task.build_optimizer(self.build_model()), self.task.name)

    def build_optimizer(
        self, model: nn.Module, base_lr: float, lr_free: LRFreeName | None = None
    ) -> torch.optim.Optimizer:
        """The task's optimizer with every group at ``base_lr`` times its multiplier.

        ``base_lr`` is the LR of a parameter whose multiplier is 1, for every schedule family:
        build its scheduler with ``group_multipliers=setup.group_multipliers``. ``lr_free``
        names a learning-rate-free optimizer to build instead over the same groups
        (:mod:`lrtune.lr_free`).
        """
        optimizer = self.task.build_optimizer(model)
        multipliers = self.group_multipliers
        if len(optimizer.param_groups) != len(multipliers):
            raise TaskError(
                f"{self.task.name}.build_optimizer() built {len(optimizer.param_groups)} param "
                f"groups, then {len(multipliers)}: it must build the same groups every time"
            )
        if lr_free is not None:
            from lrtune import lr_free as lr_free_baselines

            groups = [
                {"params": group["params"], "lr": base_lr * mult}
                | ({"weight_decay": group["weight_decay"]} if "weight_decay" in group else {})
                for group, mult in zip(optimizer.param_groups, multipliers, strict=True)
            ]
            return lr_free_baselines.build_optimizer(lr_free, self.spec.optimizer, groups)
        for group, mult in zip(optimizer.param_groups, multipliers, strict=True):
            group["lr"] = base_lr * mult
        return optimizer

    def data_order(self, seed: int) -> DataOrder:
        """A run's batches epoch by epoch: the task's own order (a registry job's generator,
        checkpointed), else ``task.train_batches(seed, epoch)``."""
        own = getattr(self.task, "data_order", None)
        return own(seed) if own is not None else EpochBatches(self.task, seed)

    @functools.cached_property
    def steps_per_epoch(self) -> int:
        """Optimizer steps an epoch: the task's ``steps_per_epoch``, else epoch 0's batches
        counted once."""
        declared = getattr(self.task, "steps_per_epoch", None)
        if declared is not None:
            return int(declared)
        batches = self.task.train_batches(self.spec.seed, 0)
        try:
            count = len(batches)  # type: ignore[arg-type]
        except TypeError:
            count = sum(1 for _ in batches)
        if count < 1:
            raise TaskError(f"{self.task.name}.train_batches() yielded no batches")
        return count

    def evaluate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """The task's evaluation of ``model`` after ``epoch``, checked (:func:`checked_scores`)."""
        return checked_scores(self.task, self.task.evaluate(model, self.device), epoch)

    def range_test_inputs(self) -> tuple[Any, Any, Any]:
        """What the range test sweeps: ``(train_data, criterion, loss_fn)`` for
        :func:`lrtune.finder.find_lr`. A registry job's shuffled loader and its dataset's loss;
        a task's batches per seed (epoch after epoch) and its ``loss``."""
        if isinstance(self.task, RegistryTask):
            loader = self.task.train_loader(torch.Generator().manual_seed(self.spec.seed))
            return loader, self.task.criterion, None
        return functools.partial(_endless_epochs, self.task), None, self.task.loss


@dataclass(frozen=True)
class RunShape:
    """A job's runs as the search sees them: steps per epoch and group LR multipliers. It
    stands in for the task where the task's code is not (see :meth:`TrainingSetup.of_shape`)."""

    name: str
    steps_per_epoch: int
    group_multipliers: list[float]
    metric: str = "val_loss"
    direction: str = "minimize"

    def build_model(self, seed: int, device: torch.device) -> nn.Module:
        raise InvalidInputError(f"{self.name} trains on the agents that run it, not here")

    build_optimizer = train_batches = loss = evaluate = build_model  # type: ignore[assignment]


def cpu() -> torch.device:
    return torch.device("cpu")


class DataOrder(Protocol):
    """A run's batches, epoch by epoch, with the state a checkpoint keeps (if any)."""

    def epoch(self, epoch: int) -> Iterable[Any]: ...

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


class EpochBatches:
    """A task's batches for one seed: ``task.train_batches(seed, epoch)``; nothing to keep."""

    def __init__(self, task: Task, seed: int) -> None:
        self.task = task
        self.seed = seed

    def epoch(self, epoch: int) -> Iterable[Any]:
        return self.task.train_batches(self.seed, epoch)

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


def _endless_epochs(task: Task, seed: int | None) -> Iterator[Any]:
    """A task's batches for ``seed``, epoch after epoch, for a range test longer than one."""
    epoch = 0
    while True:
        yielded = 0
        for batch in task.train_batches(seed or 0, epoch):
            yielded += 1
            yield batch
        if not yielded:
            raise TaskError(f"{task.name}.train_batches() yielded no batches in epoch {epoch + 1}")
        epoch += 1


def written_lr_ratios(optimizer: torch.optim.Optimizer, task_name: str) -> list[float]:
    """Each param group's LR over group 0's, as a task's ``build_optimizer`` wrote them."""
    lrs = [float(group["lr"]) for group in optimizer.param_groups]
    if not lrs or not all(lr > 0 for lr in lrs):
        raise TaskError(f"{task_name}.build_optimizer(): every param group needs an LR > 0")
    return [lr / lrs[0] for lr in lrs]


@contextlib.contextmanager
def cuda_kernels(device: torch.device, *, fast: bool) -> Iterator[None]:
    """Inside, CUDA runs deterministic cuDNN kernels in full fp32, or with ``fast`` lets cuDNN
    autotune (``cudnn.benchmark``) and matmuls and convolutions use TF32 (faster; results may
    differ from run to run). The previous settings are restored on exit. Off CUDA: nothing.
    """
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.benchmark, cudnn.deterministic = fast, not fast
    cudnn.allow_tf32 = matmul.allow_tf32 = fast
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = before


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
    lr_free: LRFreeName | None = None,
    stop_reason: StopReason | None = None,
    stop_check_s: float = UNIT_CHECK_S,
) -> TrainingRun:
    """Train the job's model for ``epochs`` under ``schedule`` from ``base_lr``.

    Args:
        base_lr: the LR at multiplier 1 (param groups scale it by their ``lr_mult``).
        lr_threshold: end the run once every group's LR is below this.
        on_epoch: ``on_epoch(epoch, record)`` after each epoch's evaluation; raise
            :class:`StopTraining` in it to end the run as pruned. ``epoch`` is an index from
            0, as ``record["epoch"]`` is; every message counts epochs from 1, as the
            dashboard and the CLI do (the first epoch is "epoch 1").
        checkpoint: a file to save after every epoch and to resume from when it exists.
        seed: the initial weights' and the data order's seed (default: the job's seed);
            confirmation runs retrain a schedule on other seeds.
        lr_free: train with this learning-rate-free optimizer instead of the job's
            (:mod:`lrtune.lr_free`; schedule-free is evaluated at its averaged weights).
        stop_reason: asked within each epoch, with the look for a requested stop, at most
            every ``stop_check_s`` seconds: a reason ends the run there as pruned with it (its
            ``lr_steps`` hold the steps taken). ``on_epoch`` covers the epoch boundaries.
        stop_check_s: seconds between those looks (the first comes that long after the run
            starts); each batch reads the clock once, never the device.

    A non-finite training loss is checked on the device and read at the end of the epoch:
    the rest of that epoch still runs (on weights that are no longer finite), then the run
    ends ``diverged`` in that epoch, its record and ``lr_steps`` exactly as if it had stopped
    at the first non-finite batch.

    Raises:
        torch.OutOfMemoryError: the device ran out of memory (see
            :func:`out_of_memory_reason` for what to tell the user).

    Raises:
        StopRequested: :func:`request_stop` was called; raised before the next epoch starts or
            at the next look within an epoch, when the checkpoint of every finished epoch is
            written. A run resumed from it redoes the interrupted epoch from its start and ends
            exactly as an uninterrupted one.
    """
    looks = _StopLooks(stop_check_s, stop_reason)
    with setup.kernels():
        return _train(
            setup,
            schedule,
            base_lr,
            epochs,
            lr_threshold,
            on_epoch,
            checkpoint,
            seed,
            lr_free,
            looks,
        )


def _train(
    setup: TrainingSetup,
    schedule: ScheduleSpec,
    base_lr: float,
    epochs: int,
    lr_threshold: float | None,
    on_epoch: EpochHook | None,
    checkpoint: Path | None,
    seed: int | None,
    lr_free: LRFreeName | None,
    looks: _StopLooks,
) -> TrainingRun:
    seed = setup.spec.seed if seed is None else seed
    model = setup.build_model(seed)
    optimizer = setup.build_optimizer(model, base_lr, lr_free)
    driver = drive(
        schedule,
        optimizer,
        setup.steps_per_epoch,
        epochs,
        group_multipliers=setup.group_multipliers,
    )
    order = setup.data_order(seed)
    scaler = torch.amp.GradScaler("cuda") if setup.amp else None
    state = _RunState(model, optimizer, driver, order, scaler, setup.device, setup.task)
    run = TrainingRun()
    start = 0
    if checkpoint is not None and checkpoint.exists():
        start = _resume(checkpoint, state, run)
    else:
        torch.manual_seed(seed)
    for epoch in range(start, epochs):
        check_stop(f"before epoch {epoch + 1}")  # the last epoch's checkpoint is saved
        prepare_to_train(optimizer)
        try:
            train_loss = _train_epoch(setup, state, seed, epoch, run, looks.at(epoch))
        except StopTraining as stop:  # stop_reason said why, mid-epoch
            run.status, run.reason = "pruned", str(stop)
            break
        if train_loss is None:
            run.status, run.reason = "diverged", f"non-finite training loss in epoch {epoch + 1}"
            break
        if needs_modes(optimizer):  # schedule-free: evaluate (and checkpoint) the averaged weights
            prepare_to_evaluate(optimizer, model, setup.data_order(seed).epoch(0), setup.task.loss)
        record = {"epoch": epoch, "train_loss": train_loss, **setup.evaluate(model, epoch)}
        record["epoch"], record["train_loss"] = epoch, train_loss  # the loop's, not the task's
        run.epochs.append(record)
        if not math.isfinite(record.get("val_loss", 0.0)):
            run.status, run.reason = "diverged", f"non-finite validation loss in epoch {epoch + 1}"
            break
        if not math.isfinite(record[setup.metric]):
            raise TaskError(
                f"{setup.task.name}.evaluate() in epoch {epoch + 1} returned "
                f"{setup.metric} = {record[setup.metric]}"
            )
        driver.after_epoch(_plateau_value(setup, record))
        if checkpoint is not None:
            _save(checkpoint, epoch, state, run)
        if on_epoch is not None:
            try:
                on_epoch(epoch, record)
            except StopTraining as stop:
                run.status, run.reason = "pruned", str(stop) or f"pruned after epoch {epoch + 1}"
                break
        if lr_threshold is not None and all(lr < lr_threshold for lr in driver.last_lrs()):
            run.status = "lr_threshold"
            run.reason = f"every group's LR fell below {lr_threshold:g} after epoch {epoch + 1}"
            break
    return run


def _plateau_value(setup: TrainingSetup, record: dict[str, float]) -> float:
    """What ReduceLROnPlateau watches (lower is better): ``val_loss`` when the task reports
    one, else the searched metric (negated when it is to be maximized)."""
    if "val_loss" in record:
        return record["val_loss"]
    value = record[setup.metric]
    return -value if setup.spec.search.direction == "maximize" else value


class _StopLooks:
    """A run's looks within its epochs at whether to stop, at most every ``every_s`` seconds."""

    def __init__(self, every_s: float, reason: StopReason | None) -> None:
        self.every_s = every_s
        self.reason = reason
        self._next_at = time.monotonic() + every_s

    def at(self, epoch: int) -> Callable[[], None]:
        """The look for one epoch's batches: call it before each batch."""
        return functools.partial(self._look, epoch)

    def _look(self, epoch: int) -> None:
        """Raise StopRequested or StopTraining (with the reason) if it is time and they say so."""
        now = time.monotonic()
        if now < self._next_at:
            return
        self._next_at = now + self.every_s
        check_stop(f"in epoch {epoch + 1}, which a resumed run redoes")
        why = self.reason() if self.reason is not None else None
        if why is not None:
            raise StopTraining(why)


@dataclass
class _RunState:
    """What a run changes as it trains, and its checkpoint saves."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    driver: Any
    order: DataOrder
    scaler: torch.amp.GradScaler | None
    device: torch.device
    task: Task


def _train_epoch(
    setup: TrainingSetup,
    state: _RunState,
    seed: int,
    epoch: int,
    run: TrainingRun,
    look: Callable[[], None] = lambda: None,
) -> float | None:
    """Mean training loss of one epoch, or None if a loss in it was not finite.

    ``look()`` before each batch may end the epoch there (:class:`_StopLooks`). A task with
    its own ``train_epoch`` runs it instead (:func:`_task_epoch`).

    The device is read once, at the end: the summed loss and how many batches passed before
    the first non-finite loss. After a non-finite loss the epoch runs on, and ``run.lr_steps``
    is cut back to end at that batch, as a stop there would have left it.
    """
    if callable(getattr(setup.task, "train_epoch", None)):
        return _task_epoch(setup, state, seed, epoch, run, look)
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    model.train()
    total = torch.zeros((), device=state.device)
    finite = torch.ones((), dtype=torch.bool, device=state.device)  # every loss so far
    finite_steps = torch.zeros((), dtype=torch.int64, device=state.device)
    steps_before = len(run.lr_steps)
    count = 0
    for batch in state.order.epoch(epoch):
        look()
        run.lr_steps.append([float(g["lr"]) for g in optimizer.param_groups])
        loss = setup.task.loss(model, batch)
        finite &= torch.isfinite(loss)
        finite_steps += finite
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:  # its skipped-step check reads the device once a batch (torch's GradScaler)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        state.driver.after_batch()
        total += loss.detach().float()
        count += 1
    loss_sum, passed = torch.stack([total.double(), finite_steps.double()]).tolist()
    if passed < count:
        del run.lr_steps[steps_before + int(passed) + 1 :]
        return None
    return loss_sum / max(count, 1)


def _task_epoch(
    setup: TrainingSetup,
    state: _RunState,
    seed: int,
    epoch: int,
    run: TrainingRun,
    look: Callable[[], None],
) -> float | None:
    """One epoch of a task's own loop: ``task.train_epoch(model, optimizer, on_step, ...)``.

    ``on_step(loss=None)``, called after each optimizer step, records the LR that step used,
    advances the schedule and looks whether to stop (raising from inside the task's loop).
    The epoch's loss is what ``train_epoch`` returns, else the mean of the losses ``on_step``
    was given; None (diverged) when it is not finite.
    """
    optimizer, driver = state.optimizer, state.driver
    losses: list[torch.Tensor] = []  # read once, at the end: no device sync a step

    def on_step(loss: Any = None) -> None:
        run.lr_steps.append([float(g["lr"]) for g in optimizer.param_groups])
        driver.after_batch()
        if isinstance(loss, torch.Tensor):
            losses.append(loss.detach().float().reshape(()))
        elif loss is not None:
            losses.append(torch.tensor(float(loss)))
        look()

    state.model.train()
    returned = setup.task.train_epoch(  # type: ignore[attr-defined]
        state.model, optimizer, on_step, seed=seed, epoch=epoch, device=state.device
    )
    if returned is None and not losses:
        raise TaskError(f"{setup.task.name}.train_epoch() returned no loss and gave on_step() none")
    if returned is not None:
        loss = float(returned)
    else:
        loss = float(torch.stack([value.to(losses[0].device) for value in losses]).mean())
    return loss if math.isfinite(loss) else None


def out_of_memory_reason(setup: TrainingSetup, error: BaseException) -> str:
    """What a unit that ran the device out of memory records: the error and what to change.

    E.g. ``CUDA out of memory on cuda:0: lower batch_size (now 64) or the model's size, or set
    amp: true, or run fewer units on this GPU (lrtune worker --concurrency) (CUDA out of
    memory. Tried to allocate ...)``.
    """
    detail = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    hint = (
        f"lower batch_size (now {setup.spec.batch_size}) or the model's size"
        + ("" if setup.spec.amp else ", or set amp: true")
        + ", or run fewer units on this GPU (lrtune worker --concurrency)"
    )
    return f"{setup.device.type.upper()} out of memory on {setup.device}: {hint} ({detail})"


def _save(path: Path, epoch: int, state: _RunState, run: TrainingRun) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {
        "epoch": epoch,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.driver.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "data_order": state.order.state_dict(),
        "run": run.model_dump(mode="json"),
    }
    task_state = getattr(state.task, "state_dict", None)
    if callable(task_state):
        saved["task"] = task_state()
    if state.device.type == "cuda":
        saved["cuda_rng"] = torch.cuda.get_rng_state(state.device)
    if state.scaler is not None:
        saved["grad_scaler"] = state.scaler.state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save(saved, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous checkpoint intact


def _resume(path: Path, state: _RunState, run: TrainingRun) -> int:
    """Load the checkpoint at ``path`` into ``state`` and ``run``; return the next epoch.

    A checkpoint written on another kind of device resumes too: CUDA RNG state is restored
    only on CUDA, and a GradScaler's state only into a run that has one (a run with ``amp``
    resumed from one without starts a fresh scaler).
    """
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.driver.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if state.device.type == "cuda" and "cuda_rng" in saved:
        torch.cuda.set_rng_state(saved["cuda_rng"], state.device)
    if state.scaler is not None and "grad_scaler" in saved:
        state.scaler.load_state_dict(saved["grad_scaler"])
    state.order.load_state_dict(saved["data_order"])
    if "task" in saved and callable(getattr(state.task, "load_state_dict", None)):
        state.task.load_state_dict(saved["task"])
    restored = TrainingRun.model_validate(saved["run"])
    run.epochs, run.lr_steps = restored.epochs, restored.lr_steps
    run.resumed_from = int(saved["epoch"]) + 1
    return run.resumed_from
