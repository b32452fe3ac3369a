"""Train a registry model under one LR schedule: the loop behind trials, baselines and benchmarks.

Each epoch trains on the job's train split (the scheduler stepped per batch or per epoch as its
spec says, always after ``optimizer.step()``), evaluates on the validation split, reports to an
``on_epoch`` hook (the search prunes there), and writes a checkpoint of model, optimizer,
scheduler, RNG and data-order state (and the GradScaler's, with ``amp``), so that a run resumed
from it ends exactly as an uninterrupted one would.

On a GPU (see :class:`TrainingSetup`): the job's data is moved to the device once when it fits
(:data:`DEVICE_DATA_FRACTION`), and batches are sliced there; ``spec.amp`` trains under fp16
autocast with a GradScaler; an epoch reads the device once for its loss and its divergence
check, and once for its evaluation (not once a batch); cuDNN runs deterministic kernels in full
fp32 unless ``spec.cuda_fast_kernels`` opts in to autotuning and TF32. On the CPU all of this
is a no-op and runs are bit-for-bit what they were without it.

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
import dataclasses
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrtune.batches import LoaderOrderRows, batch_loss, move_to
from lrtune.datasets import DatasetBundle
from lrtune.device import resolve_device
from lrtune.exceptions import InvalidInputError
from lrtune.lr_free import LRFreeName, prepare_to_evaluate, prepare_to_train
from lrtune.registry import build_model, load_dataset
from lrtune.result import TrainingRun
from lrtune.schedules import ScheduleSpec, drive
from lrtune.spec import UNIT_CHECK_S, JobSpec, OptimizerSpec

EpochHook = Callable[[int, dict[str, float]], None]
StopReason = Callable[[], "str | None"]
"""Why a run must stop now (e.g. its job was cancelled), else None: asked within each epoch."""

logger = logging.getLogger(__name__)

DEVICE_DATA_FRACTION = 0.25
"""A job's data (train and validation tensors) is kept on a CUDA device when it takes at most
this fraction of the device's free memory at setup; the rest is left for the model, its
activations and other units on the same GPU. Data that does not fit stays in host memory and is
copied batch by batch."""


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
    """What every run of one job shares: data, model recipe, optimizer recipe, device."""

    spec: JobSpec
    bundle: DatasetBundle
    device: torch.device

    @classmethod
    def from_spec(cls, spec: JobSpec, device: str | torch.device | None = None) -> TrainingSetup:
        bundle = load_dataset(spec.dataset.name, spec.dataset.params)
        return cls(spec, bundle, resolve_device(device if device is not None else spec.device))

    @functools.cached_property
    def data(self) -> DatasetBundle:
        """The job's data where training reads it: :func:`on_device` (moved once, on first use)."""
        return on_device(self.bundle, self.device)

    @functools.cached_property
    def amp(self) -> bool:
        """Whether runs train in mixed precision: the spec asks and the device is CUDA.

        On any other device ``spec.amp`` is a no-op: full precision, with one logged note.
        """
        if self.spec.amp and self.device.type != "cuda":
            logger.info("amp=true needs CUDA: training on %s in full precision", self.device)
        return self.spec.amp and self.device.type == "cuda"

    def kernels(self) -> contextlib.AbstractContextManager[None]:
        """A context with the job's CUDA kernel choice in force (see :func:`cuda_kernels`)."""
        return cuda_kernels(self.device, fast=self.spec.cuda_fast_kernels)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """fp16 autocast on CUDA with ``amp``; otherwise a context that changes nothing."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.float16)

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

    def build_optimizer(
        self, model: nn.Module, base_lr: float, lr_free: LRFreeName | None = None
    ) -> torch.optim.Optimizer:
        """The job's optimizer with every group at ``base_lr`` times its multiplier.

        ``base_lr`` is the LR of a parameter whose multiplier is 1, for every schedule family:
        build its scheduler with ``group_multipliers=setup.group_multipliers``. ``lr_free``
        names a learning-rate-free optimizer to build instead (:mod:`lrtune.lr_free`).
        """
        groups = [{"params": p, "lr": base_lr * mult} for mult, p in self.param_groups(model)]
        if lr_free is not None:
            from lrtune import lr_free as lr_free_baselines

            return lr_free_baselines.build_optimizer(lr_free, self.spec.optimizer, groups)
        return torch_optimizer(self.spec.optimizer, groups)

    def train_loader(self, generator: torch.Generator) -> DataLoader:
        """Shuffled train batches in the order ``generator`` gives.

        A trailing batch of a single sample is dropped: it breaks BatchNorm in training mode
        and is pure noise otherwise.
        """
        return DataLoader(
            self.data.train,
            batch_size=self.spec.batch_size,
            shuffle=True,
            generator=generator,
            drop_last=len(self.bundle.train) % self.spec.batch_size == 1,
        )

    def train_batches(self, generator: torch.Generator) -> Iterable[Any]:
        """The batches of :meth:`train_loader`, the same rows in the same order for ``generator``.

        A plain ``TensorDataset`` is sliced where it lies (:class:`~lrtune.batches.LoaderOrderRows`:
        on the GPU when :attr:`data` put it there), with no collation and no host-to-device
        copy per batch; any other dataset goes through the DataLoader.
        """
        train = self.data.train
        if type(train) is not TensorDataset:
            return self.train_loader(generator)
        drop_last = len(train) % self.spec.batch_size == 1
        return LoaderOrderRows(train.tensors, self.spec.batch_size, generator, drop_last)

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(len(self.bundle.train), self.spec.batch_size)
        return full + (1 if rest > 1 else 0)


def on_device(bundle: DatasetBundle, device: torch.device) -> DatasetBundle:
    """``bundle`` with its tensors on ``device`` when they fit there, else ``bundle`` itself.

    On the CPU (and any device but CUDA) the bundle is returned as it is. On CUDA, a bundle of
    plain ``TensorDataset`` splits whose tensors take at most :data:`DEVICE_DATA_FRACTION` of
    the device's free memory is copied there once; a larger one stays in host memory (logged).
    """
    plain = type(bundle.train) is TensorDataset and type(bundle.val) is TensorDataset
    if device.type != "cuda" or not plain:
        return bundle
    tensors = [*bundle.train.tensors, *bundle.val.tensors]
    size = sum(t.numel() * t.element_size() for t in tensors)
    free, _total = torch.cuda.mem_get_info(device)
    if size > DEVICE_DATA_FRACTION * free:
        logger.info(
            "dataset %s (%d MiB) stays in host memory: more than %.0f%% of %s's free %d MiB",
            bundle.name,
            size >> 20,
            100 * DEVICE_DATA_FRACTION,
            device,
            free >> 20,
        )
        return bundle
    return dataclasses.replace(
        bundle,
        train=TensorDataset(*(t.to(device) for t in bundle.train.tensors)),
        val=TensorDataset(*(t.to(device) for t in bundle.val.tensors)),
    )


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


def torch_optimizer(spec: OptimizerSpec, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The torch optimizer ``spec`` names over ``groups`` (each a dict with params and lr).

    It lives here, not in :mod:`lrtune.spec`, which must not import torch (the HTTP API
    validates specs without it). The constructor gets :meth:`OptimizerSpec.keyword_arguments`,
    as the snippet writes it.

    Raises:
        InvalidInputError: the installed torch lacks the class or one of its keywords (the
            spec's table is pinned to a newer torch), or refuses a value.
    """
    cls = getattr(torch.optim, spec.torch_class, None)
    if cls is None:
        raise InvalidInputError(
            f"optimizer {spec.name!r} needs torch.optim.{spec.torch_class}, which torch "
            f"{torch.__version__} lacks: upgrade torch"
        )
    try:
        return cls(groups, **spec.keyword_arguments())
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"torch {torch.__version__} cannot build optimizer {spec.name!r} with "
            f"{spec.keyword_arguments()}: {exc}"
        ) from exc


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
    order = torch.Generator().manual_seed(seed)
    scaler = torch.amp.GradScaler("cuda") if setup.amp else None
    state = _RunState(model, optimizer, driver, order, scaler, setup.device)
    run = TrainingRun()
    start = 0
    if checkpoint is not None and checkpoint.exists():
        start = _resume(checkpoint, state, run)
    else:
        torch.manual_seed(seed)
    criterion = setup.bundle.loss_fn()
    batches = setup.train_batches(order)
    for epoch in range(start, epochs):
        check_stop(f"before epoch {epoch + 1}")  # the last epoch's checkpoint is saved
        prepare_to_train(optimizer)
        try:
            train_loss = _train_epoch(setup, state, batches, criterion, run, looks.at(epoch))
        except StopTraining as stop:  # stop_reason said why, mid-epoch
            run.status, run.reason = "pruned", str(stop)
            break
        if train_loss is None:
            run.status, run.reason = "diverged", f"non-finite training loss in epoch {epoch + 1}"
            break
        prepare_to_evaluate(  # schedule-free: evaluate (and checkpoint) the averaged weights
            optimizer,
            model,
            setup.train_batches(torch.Generator().manual_seed(seed)),
            lambda model, batch: batch_loss(model, move_to(batch, setup.device), criterion),
        )
        record = {"epoch": epoch, "train_loss": train_loss, **_evaluate(setup, model)}
        run.epochs.append(record)
        if not math.isfinite(record["val_loss"]):
            run.status, run.reason = "diverged", f"non-finite validation loss in epoch {epoch + 1}"
            break
        driver.after_epoch(record["val_loss"])
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
    order: torch.Generator
    scaler: torch.amp.GradScaler | None
    device: torch.device


def _train_epoch(
    setup: TrainingSetup,
    state: _RunState,
    batches: Iterable[Any],
    criterion: nn.Module,
    run: TrainingRun,
    look: Callable[[], None],
) -> float | None:
    """Mean training loss of one epoch, or None if a loss in it was not finite.

    ``look()`` before each batch may end the epoch there (:class:`_StopLooks`).

    The device is read once, at the end: the summed loss and how many batches passed before
    the first non-finite loss. After a non-finite loss the epoch runs on, and ``run.lr_steps``
    is cut back to end at that batch, as a stop there would have left it.
    """
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    model.train()
    total = torch.zeros((), device=state.device)
    finite = torch.ones((), dtype=torch.bool, device=state.device)  # every loss so far
    finite_steps = torch.zeros((), dtype=torch.int64, device=state.device)
    steps_before = len(run.lr_steps)
    count = 0
    for batch in batches:
        look()
        run.lr_steps.append([float(g["lr"]) for g in optimizer.param_groups])
        with setup.autocast():
            loss = batch_loss(model, move_to(batch, state.device), criterion)
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


def _evaluate(setup: TrainingSetup, model: nn.Module) -> dict[str, float]:
    with setup.autocast():
        scores = setup.data.evaluate(model, device=setup.device)
    record = {"val_loss": float(scores["loss"])}
    record.update({k: float(v) for k, v in scores.items() if k != "loss"})
    return record


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
        "data_order": state.order.get_state(),
        "run": run.model_dump(mode="json"),
    }
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
    state.order.set_state(saved["data_order"])
    restored = TrainingRun.model_validate(saved["run"])
    run.epochs, run.lr_steps = restored.epochs, restored.lr_steps
    run.resumed_from = int(saved["epoch"]) + 1
    return run.resumed_from
