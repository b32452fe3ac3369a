"""PyTorch Lightning and lrtune: tune a ``LightningModule`` as a :class:`~lrtune.task.Task`,
find its LR with lrtune's range test, train it under a stored recommendation.

Three pieces (``pip install lrtune[lightning]``; ``import lrtune`` never imports Lightning):

- :class:`LightningTask`: a task from a module factory ``module_factory(seed)`` and a
  datamodule factory ``datamodule_factory(seed)`` (or train/val dataloader factories). Every
  epoch runs through a Lightning ``Trainer``: your ``training_step``, precision, gradient
  clipping and accumulation are Lightning's; lrtune sets the LR after every optimizer step
  and reads ``metric`` from what ``validation_step`` logs. The optimizer is the one your
  ``configure_optimizers()`` builds (a scheduler it returns is ignored: lrtune's schedule
  drives the LR). Give it to :func:`lrtune.tune` or :func:`lrtune.find_lr`.
- :class:`LRTuneFinder`: a drop-in for Lightning's ``LearningRateFinder`` callback that runs
  lrtune's multi-seed range test at fit start and sets the module's ``lr`` (or
  ``learning_rate``) to its suggestion; the result stays on the callback (``.result``).
- :class:`LRTuneSchedule`: a callback that trains under a recommendation (an object, its JSON
  file, or a job id on an lrtune server): the optimizer's LRs and the recommended scheduler.

Example (a sketch; ``examples/lightning_task.py`` runs one end to end):

.. code-block:: python

    import lightning as L
    import lrtune
    from lrtune.integrations.lightning import LightningTask, LRTuneSchedule

    task = LightningTask(
        lambda seed: MyModule(lr=1e-3),
        lambda seed: MyDataModule(seed=seed),
        metric="val_acc",
        direction="maximize",
        trainer_kwargs={"gradient_clip_val": 1.0},
    )
    rec = lrtune.tune(task, search={"n_trials": 20, "epochs": 5})
    print(rec.to_code())
    L.Trainer(max_epochs=5, callbacks=[LRTuneSchedule(rec)]).fit(MyModule(), MyDataModule())
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.parsing import lightning_hasattr, lightning_setattr

from lrtune.batches import move_to
from lrtune.exceptions import InvalidInputError
from lrtune.task import Direction, OnStep, TaskError

ModuleFactory = Callable[[int], pl.LightningModule]
DataModuleFactory = Callable[[int], pl.LightningDataModule]
LoaderFactory = Callable[[int], Any]

QUIET_TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}
"""What every Trainer lrtune builds runs with: nothing written to disk, nothing printed."""

OWNED_TRAINER_KEYS = frozenset(
    {"max_epochs", "min_epochs", "max_steps", "accelerator", "devices", "callbacks", *QUIET_TRAINER}
)
"""Trainer arguments lrtune sets itself: a ``trainer_kwargs`` that names one is refused."""

HARMLESS_WARNINGS = (
    r".*does not have many workers.*",
    r".*`self\.log\(\)`.*",  # logging outside a Trainer (the range test calls training_step)
    r".*You called `self\.log\(.*",
    r".*`limit_val_batches=0`.*",
    r".*GPU available but not used.*",
    r".*The number of training batches \(\d+\) is smaller than the logging interval.*",
    r".*`training_step` returned `None`.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning 2.6 on newer torch
)
"""Messages Lightning warns with that say nothing about a run lrtune drives."""


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Inside, Lightning's banner ("GPU available: ...", tips) and its :data:`HARMLESS_WARNINGS`
    are silenced; every other warning and error comes through."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        for pattern in HARMLESS_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def trainer_device(device: torch.device) -> dict[str, Any]:
    """The ``accelerator`` and ``devices`` Trainer arguments that train on ``device``."""
    if device.type == "cuda":
        return {"accelerator": "gpu", "devices": [device.index or 0]}
    if device.type in ("cpu", "mps"):
        return {"accelerator": device.type, "devices": 1}
    raise InvalidInputError(f"LightningTask runs on cpu, cuda or mps, not {device}")


def optimizer_of(configured: Any, where: str) -> torch.optim.Optimizer:
    """The one optimizer in what ``configure_optimizers()`` returned (an optimizer, a list or
    tuple holding one, ``([optimizer], [schedulers])``, or a dict with ``"optimizer"``); its
    schedulers are dropped.

    Raises:
        TaskError: none, or several optimizers (lrtune drives one optimizer's LR).
    """
    found: list[torch.optim.Optimizer] = []

    def collect(value: Any) -> None:
        if isinstance(value, torch.optim.Optimizer):
            found.append(value)
        elif isinstance(value, Mapping):
            collect(value.get("optimizer"))
        elif isinstance(value, (list, tuple)):
            if len(value) == 2 and isinstance(value[0], (list, tuple)):
                collect(value[0])  # ([optimizers], [schedulers])
            else:
                for item in value:
                    collect(item)

    collect(configured)
    if len(found) != 1:
        raise TaskError(
            f"{where}.configure_optimizers() returned {len(found)} optimizers: lrtune tunes a "
            "module with exactly one (return it, with or without a scheduler)"
        )
    return found[0]


def training_loss(module: pl.LightningModule, batch: Any, batch_idx: int = 0) -> torch.Tensor:
    """The loss ``module.training_step(batch, batch_idx)`` returns (a tensor, or a dict's
    ``"loss"``), the batch moved to the module's device; outside a Trainer.

    Raises:
        TaskError: the module optimizes manually, or its training_step returned no loss.
    """
    name = type(module).__name__
    if not module.automatic_optimization:
        raise TaskError(
            f"{name} uses manual optimization: the range test needs a training_step that "
            "returns its loss (automatic optimization)"
        )
    batch = move_to(batch, module.device)
    with quiet_lightning():
        output = module.training_step(batch, batch_idx)
    loss = output.get("loss") if isinstance(output, Mapping) else output
    if not isinstance(loss, torch.Tensor):
        raise TaskError(
            f"{name}.training_step() returned {type(output).__name__}: return the loss tensor "
            "(or a dict with 'loss')"
        )
    return loss


class _StepRaised(Exception):
    """Carries what ``on_step`` raised out of ``trainer.fit``: Lightning turns a
    ``KeyboardInterrupt`` (lrtune's ``StopRequested``) into ``sys.exit(1)``, so none may leave a
    callback as itself."""

    def __init__(self, raised: BaseException) -> None:
        super().__init__(f"on_step raised {type(raised).__name__}: {raised}")
        self.raised = raised


class _OnStepCallback(pl.Callback):
    """Calls lrtune's ``on_step()`` after each optimizer step of one epoch (an optimizer step is
    a batch after which ``trainer.global_step`` grew) and sums the batches' losses."""

    def __init__(self, on_step: OnStep) -> None:
        self.on_step = on_step
        self.loss_sum: torch.Tensor | None = None
        self.batches = 0
        self.interrupt: BaseException | None = None
        self._steps_seen = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._steps_seen = trainer.global_step

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            value = loss.detach().float()
            self.loss_sum = value if self.loss_sum is None else self.loss_sum + value
            self.batches += 1
        if trainer.global_step == self._steps_seen:
            return  # accumulating gradients: no optimizer step yet
        self._steps_seen = trainer.global_step
        try:
            self.on_step()
        except BaseException as raised:  # StopTraining, StopRequested: out of fit as themselves
            raise _StepRaised(raised) from raised

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupt = exception  # Lightning exits the process after this: re-raised

    def mean_loss(self) -> float | None:
        """The epoch's mean training-step loss, or None if training_step returned none."""
        if self.loss_sum is None or not self.batches:
            return None
        return float(self.loss_sum) / self.batches


def _epoch_seed(seed: int, epoch: int) -> int:
    """The global torch seed an epoch starts from: its data order and dropout, per (seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63)


class _SeededBatches:
    """A train dataloader's batches for one (seed, epoch): its shuffle drawn from that seed,
    the global RNG left as it was."""

    def __init__(self, loader: Any, seed: int) -> None:
        self.loader = loader
        self.seed = seed

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            batches = iter(self.loader)
            first = next(batches, None)  # the sampler draws its order on the first batch
        if first is None:
            return
        yield first
        yield from batches


class _LoaderDataModule(pl.LightningDataModule):
    """A datamodule from a train and an optional val dataloader factory, for one seed."""

    def __init__(self, train: LoaderFactory, val: LoaderFactory | None, seed: int) -> None:
        super().__init__()
        self._train, self._val, self._seed = train, val, seed

    def train_dataloader(self) -> Any:
        return self._train(self._seed)

    def val_dataloader(self) -> Any:
        if self._val is None:
            return []
        return self._val(self._seed)


class LightningTask:
    """A :class:`~lrtune.task.Task` that trains a ``LightningModule`` through Lightning.

    Args:
        module_factory: ``module_factory(seed)``: a fresh module, its weights initialised from
            ``seed`` (lrtune also seeds torch with it before the call).
        datamodule_factory: ``datamodule_factory(seed)``: its data (the seed may pick a split).
            Or give ``train_dataloader_factory`` (and ``val_dataloader_factory``) instead.
        metric: a key the module logs (``self.log``), read after each epoch's validation run
            (``validation_step``), else from what training logged; e.g. ``"val_loss"``.
        direction: ``"minimize"`` or ``"maximize"`` the metric.
        name: the task's name in lrtune's jobs (default: the module's class name).
        trainer_kwargs: more ``lightning.Trainer`` arguments, e.g. ``precision``,
            ``gradient_clip_val``, ``accumulate_grad_batches``, ``limit_train_batches``,
            ``deterministic``; not those lrtune sets itself (:data:`OWNED_TRAINER_KEYS`).
        callbacks: ``callbacks()``: a list of fresh Lightning callbacks for each epoch's
            Trainer (your own; not checkpointing, early stopping or LR monitors that need a
            logger).

    Each epoch (``train_epoch``) is one ``trainer.fit`` of a fresh Trainer with
    ``max_epochs`` one more than the epochs done, its epoch counter set to them, on the model
    and optimizer lrtune keeps for the run (the optimizer is handed to Lightning through the
    module's ``configure_optimizers`` for that fit); the global torch seed is set from
    ``(seed, epoch)`` first, so a shuffled dataloader sees the same order every time.
    ``evaluate`` runs ``trainer.validate``. Lightning moves the module to the CPU when a fit
    ends; it is moved back to the run's device.
    """

    version = "1"

    def __init__(
        self,
        module_factory: ModuleFactory,
        datamodule_factory: DataModuleFactory | None = None,
        *,
        metric: str = "val_loss",
        direction: Direction = "minimize",
        name: str | None = None,
        train_dataloader_factory: LoaderFactory | None = None,
        val_dataloader_factory: LoaderFactory | None = None,
        trainer_kwargs: Mapping[str, Any] | None = None,
        callbacks: Callable[[], list[pl.Callback]] | None = None,
    ) -> None:
        if (datamodule_factory is None) == (train_dataloader_factory is None):
            raise InvalidInputError(
                "LightningTask needs datamodule_factory, or train_dataloader_factory (and "
                "val_dataloader_factory): exactly one of the two"
            )
        owned = sorted(OWNED_TRAINER_KEYS & set(trainer_kwargs or {}))
        if owned:
            raise InvalidInputError(
                f"trainer_kwargs {owned}: lrtune sets these itself (epochs are the search's "
                "'epochs', the device is the job's)"
            )
        self.module_factory = module_factory
        self.datamodule_factory = datamodule_factory
        self.train_dataloader_factory = train_dataloader_factory
        self.val_dataloader_factory = val_dataloader_factory
        self.metric = metric
        self.direction: Direction = direction
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.callbacks = callbacks
        self.params: dict[str, Any] = {}
        self._name = name
        self._datamodules: dict[int, pl.LightningDataModule] = {}
        self._steps_per_epoch: int | None = None

    # -- what lrtune calls ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The given name, else the module's class name (one module built to find it)."""
        if self._name is None:
            self._name = type(self.module_factory(0)).__name__
        return self._name

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps an epoch: seed 0's train batches over ``accumulate_grad_batches``
        (rounded up: Lightning steps on an epoch's last, partial accumulation), within
        ``limit_train_batches`` when it is a count."""
        if self._steps_per_epoch is None:
            batches = len(self._datamodule(0).train_dataloader())
            limit = self.trainer_kwargs.get("limit_train_batches")
            if isinstance(limit, int) and not isinstance(limit, bool):
                batches = min(batches, limit)
            elif isinstance(limit, float):
                batches = int(batches * limit)
            accumulate = int(self.trainer_kwargs.get("accumulate_grad_batches", 1))
            self._steps_per_epoch = max(1, math.ceil(batches / accumulate))
        return self._steps_per_epoch

    def build_model(self, seed: int, device: torch.device) -> pl.LightningModule:
        """``module_factory(seed)`` (torch seeded with ``seed`` first), on ``device``."""
        torch.manual_seed(seed)
        module = self.module_factory(seed)
        if not isinstance(module, pl.LightningModule):
            raise TaskError(
                f"module_factory returned {type(module).__name__}, not a LightningModule"
            )
        module._lrtune_seed = seed  # which datamodule evaluate() validates on
        return module.to(device)

    def build_optimizer(self, model: pl.LightningModule) -> torch.optim.Optimizer:
        """The optimizer the module's ``configure_optimizers()`` returns (its scheduler, if
        any, is dropped: lrtune's schedule sets the LR)."""
        where = type(model).__name__
        try:
            configured = model.configure_optimizers()
        except Exception as exc:
            raise TaskError(
                f"{where}.configure_optimizers() raised {type(exc).__name__}: {exc} (lrtune "
                "calls it outside a Trainer: do not read self.trainer there)".splitlines()[0]
            ) from exc
        return optimizer_of(configured, where)

    def train_batches(self, seed: int, epoch: int) -> _SeededBatches:
        """The datamodule's train batches for ``seed``, shuffled from ``(seed, epoch)`` (what
        the range test sweeps and lrtune counts; training itself goes through the Trainer)."""
        loader = self._datamodule(seed).train_dataloader()
        return _SeededBatches(loader, _epoch_seed(seed, epoch))

    def loss(self, model: pl.LightningModule, batch: Any) -> torch.Tensor:
        """The loss the module's ``training_step`` returns for ``batch`` (the range test)."""
        return training_loss(model, batch)

    def train_epoch(
        self,
        model: pl.LightningModule,
        optimizer: torch.optim.Optimizer,
        on_step: OnStep,
        *,
        seed: int,
        epoch: int,
        device: torch.device,
    ) -> float | None:
        """Epoch ``epoch`` of ``model`` with ``optimizer`` through a Lightning Trainer, calling
        ``on_step()`` after each optimizer step; the mean loss of its training steps.

        What ``on_step`` raises (lrtune's ``StopTraining``, ``StopRequested``) ends the epoch
        at once and comes out of here as itself.
        """
        stepper = _OnStepCallback(on_step)
        extra = self.callbacks() if self.callbacks is not None else []
        trainer = self._trainer(device, [stepper, *extra], max_epochs=epoch + 1, limit_val=0)
        _start_at_epoch(trainer, epoch)
        datamodule = self._datamodule(seed)
        torch.manual_seed(_epoch_seed(seed, epoch))
        model.configure_optimizers = lambda: optimizer  # type: ignore[method-assign]
        try:
            with quiet_lightning():
                trainer.fit(model, datamodule=datamodule)
        except _StepRaised as carried:
            raise carried.raised from None
        except SystemExit:
            if stepper.interrupt is not None:  # Lightning's answer to a KeyboardInterrupt
                raise stepper.interrupt from None
            raise
        finally:
            del model.configure_optimizers
            model.to(device)
        model._lrtune_trained_metrics = _scalars(trainer.callback_metrics)
        return stepper.mean_loss()

    def evaluate(self, model: pl.LightningModule, device: torch.device) -> dict[str, float]:
        """Every scalar the module logs in a ``trainer.validate`` run (over the validation data
        of the seed it was built from), over what its last training epoch logged."""
        scores = dict(getattr(model, "_lrtune_trained_metrics", {}))
        datamodule = self._datamodule(getattr(model, "_lrtune_seed", 0))
        trainer = self._trainer(device, [], limit_val=None)
        with quiet_lightning():
            trainer.validate(model, datamodule=datamodule, verbose=False)
        model.to(device)
        scores.update(_scalars(trainer.callback_metrics))
        if self.metric not in scores:
            logged = ", ".join(sorted(scores)) or "nothing"
            raise TaskError(
                f"{self.name} logs no {self.metric!r} (it logged {logged}): call "
                f"self.log({self.metric!r}, value) in validation_step, or set metric= to one "
                "of those"
            )
        return scores

    # -- helpers ----------------------------------------------------------------------------

    def _datamodule(self, seed: int) -> pl.LightningDataModule:
        """The datamodule for ``seed`` (built once, its data prepared and set up for fit)."""
        if seed not in self._datamodules:
            if self.datamodule_factory is not None:
                datamodule = self.datamodule_factory(seed)
            else:
                assert self.train_dataloader_factory is not None
                datamodule = _LoaderDataModule(
                    self.train_dataloader_factory, self.val_dataloader_factory, seed
                )
            datamodule.prepare_data()
            datamodule.setup("fit")
            self._datamodules[seed] = datamodule
        return self._datamodules[seed]

    def _trainer(
        self,
        device: torch.device,
        callbacks: list[pl.Callback],
        *,
        limit_val: int | None,
        max_epochs: int = 1,
    ) -> pl.Trainer:
        kwargs = {**QUIET_TRAINER, **self.trainer_kwargs, **trainer_device(device)}
        if limit_val is not None:
            kwargs["limit_val_batches"] = limit_val
        with quiet_lightning():
            return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, **kwargs)


def _start_at_epoch(trainer: pl.Trainer, epoch: int) -> None:
    """Make ``trainer`` count ``epoch`` epochs done, so that the module's ``current_epoch``
    (and a sampler's ``set_epoch``) read the run's epoch, not 0."""
    progress = trainer.fit_loop.epoch_progress.current
    progress.ready = progress.started = progress.processed = progress.completed = epoch


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The one-number entries of Lightning's ``callback_metrics`` as floats."""
    return {str(key): float(value) for key, value in metrics.items() if _is_scalar(value)}


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- the range test as a callback -----------------------------------------------------------


class LRTuneFinder(pl.Callback):
    """Lightning's ``LearningRateFinder``, with lrtune's multi-seed range test: at fit start,
    run the test on the module (its ``training_step`` loss, its ``configure_optimizers()``
    optimizer, the fit's train dataloader) and set its ``lr`` or ``learning_rate`` (on the
    module or its ``hparams``, as Lightning's finder does) to the suggestion, then rebuild
    the fit's optimizers from ``configure_optimizers()``.

    Args:
        seeds, num_iter, start_lr, end_lr: the sweep (:func:`lrtune.finder.find_lr`).
        attr_name: the attribute to set (default: ``lr``, else ``learning_rate``).
        update_attr: set it (False: only keep the result).
        progress: show the range test's progress bar.
        find_lr_kwargs: more :func:`lrtune.finder.find_lr` keywords (``mode``,
            ``diverge_threshold``, ``accumulation_steps``...).

    After the fit starts, ``.result`` is the :class:`~lrtune.result.LRFinderResult` (its
    ``suggestion``, curves, ``plot()``) and ``.suggestion`` the LR that was set.
    """

    def __init__(
        self,
        *,
        seeds: int = 3,
        num_iter: int = 100,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        attr_name: str = "",
        update_attr: bool = True,
        progress: bool = False,
        **find_lr_kwargs: Any,
    ) -> None:
        self.options = {
            "seeds": seeds,
            "num_iter": num_iter,
            "start_lr": start_lr,
            "end_lr": end_lr,
            **find_lr_kwargs,
        }
        self.attr_name = attr_name
        self.update_attr = update_attr
        self.progress = progress
        self.result: Any = None
        self.suggestion: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lrtune.finder import find_lr

        attr = _lr_attribute(pl_module, self.attr_name) if self.update_attr else ""
        optimizer = optimizer_of(pl_module.configure_optimizers(), type(pl_module).__name__)
        loader = trainer.fit_loop._data_source.dataloader()
        with quiet_lightning():
            self.result = find_lr(
                pl_module,
                loader,
                optimizer,
                loss_fn=training_loss,
                device=pl_module.device,
                progress=self.progress,
                **self.options,
            )
        self.suggestion = self.result.suggestion
        if attr and self.suggestion is not None:
            lightning_setattr(pl_module, attr, float(self.suggestion))
            trainer.strategy.setup_optimizers(trainer)  # built again at the new LR


def _lr_attribute(module: pl.LightningModule, attr_name: str) -> str:
    """The module's LR attribute: ``attr_name``, else ``lr``, else ``learning_rate``."""
    for attr in [attr_name] if attr_name else ["lr", "learning_rate"]:
        if lightning_hasattr(module, attr):
            return attr
    wanted = repr(attr_name) if attr_name else "'lr' or 'learning_rate'"
    raise InvalidInputError(
        f"{type(module).__name__} has no {wanted} attribute (on itself or its hparams) for "
        "LRTuneFinder to set: add one and read it in configure_optimizers(), or pass attr_name="
    )


# -- a recommendation as a callback ---------------------------------------------------------


class LRTuneSchedule(pl.Callback):
    """Train under a recommendation: at fit start, set the optimizer's param-group LRs to the
    recommended LR (keeping the groups' ratios: group ``i`` at ``base_lr * multiplier_i``) and
    build the recommended scheduler; step it after every optimizer step or every epoch, as its
    ``interval`` says (``plateau`` watches ``val_loss``, else the recommendation's metric).

    Args:
        recommendation: a :class:`~lrtune.recommendation.Recommendation`, the path of its
            JSON, or a job id or spec fingerprint on the service at ``url`` (``token`` if it
            wants one) or in the job store at ``database``
            (:func:`lrtune.integrations.recommendations.load_recommendation`).
        steps_per_epoch, epochs: the schedule's length; default the recommendation's (what
            was tuned and confirmed). A fit that runs longer keeps the schedule's last LR.

    Any scheduler ``configure_optimizers()`` returned is dropped (with a warning). A
    recommendation of a learning-rate-free optimizer (Prodigy, schedule-free) is refused: build
    that optimizer in ``configure_optimizers()`` (``rec.to_code()`` shows how).
    """

    def __init__(
        self,
        recommendation: Any,
        *,
        url: str | None = None,
        token: str | None = None,
        database: str | None = None,
        steps_per_epoch: int | None = None,
        epochs: int | None = None,
    ) -> None:
        from lrtune.integrations.recommendations import load_recommendation

        self.recommendation = load_recommendation(
            recommendation, url=url, token=token, database=database
        )
        best = self.recommendation.best
        if best is None:
            raise InvalidInputError("the recommendation has no recommended schedule (no trial)")
        if best.lr_free is not None:
            raise InvalidInputError(
                f"the recommendation is the learning-rate-free {best.lr_free!r} optimizer, not "
                "a schedule: build it in configure_optimizers() (see rec.to_code())"
            )
        self.steps_per_epoch = steps_per_epoch or self.recommendation.steps_per_epoch
        self.epochs = epochs or self.recommendation.spec.search.epochs
        self.driver: Any = None
        self._steps_seen = 0
        self._ended = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lrtune.schedules import drive

        rec = self.recommendation
        if len(trainer.optimizers) != 1:
            raise InvalidInputError(
                f"LRTuneSchedule drives one optimizer; the fit has {len(trainer.optimizers)}"
            )
        if trainer.lr_scheduler_configs:
            warnings.warn(
                "LRTuneSchedule replaces the scheduler configure_optimizers() returned",
                stacklevel=2,
            )
            trainer.strategy.lr_scheduler_configs = []
        optimizer = trainer.optimizers[0]
        multipliers = self._multipliers(optimizer)
        for group, mult in zip(optimizer.param_groups, multipliers, strict=True):
            group["lr"] = rec.base_lr * mult
            group.pop("initial_lr", None)  # a scheduler built before set it from the old LR
        self.driver = drive(
            rec.schedule,
            optimizer,
            self.steps_per_epoch,
            self.epochs,
            group_multipliers=multipliers,
        )
        self._steps_seen = trainer.global_step

    def _multipliers(self, optimizer: torch.optim.Optimizer) -> list[float]:
        """The recommendation's group multipliers when the optimizer has as many groups, else
        the optimizer's own LR ratios to group 0."""
        stored = list(self.recommendation.group_multipliers)
        if len(stored) == len(optimizer.param_groups):
            return stored
        lrs = [float(group["lr"]) for group in optimizer.param_groups]
        return [lr / lrs[0] for lr in lrs]

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.driver is None or trainer.global_step == self._steps_seen:
            return
        self._steps_seen = trainer.global_step
        if trainer.global_step <= self.steps_per_epoch * self.epochs:
            self.driver.after_batch()  # past the planned run: the schedule's last LR stays

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.driver is None or trainer.current_epoch + 1 > self.epochs:
            return
        self.driver.after_epoch(self._plateau_value(trainer))

    def _plateau_value(self, trainer: pl.Trainer) -> float | None:
        """What a plateau schedule watches (lower is better), as lrtune's loop gives it."""
        metrics = _scalars(trainer.callback_metrics)
        if "val_loss" in metrics:
            return metrics["val_loss"]
        rec = self.recommendation
        if rec.metric not in metrics:
            return None
        value = metrics[rec.metric]
        return -value if rec.direction == "maximize" else value
