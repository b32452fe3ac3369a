"""Hugging Face ``transformers.Trainer`` code as an lrtune task, and its answer back in a Trainer.

Needs ``transformers`` and ``accelerate`` (``Trainer`` refuses to train without it).

- :class:`TrainerTask`: a :class:`~lrtune.task.Task` from ``trainer_factory(seed) -> Trainer``
  (your model, ``TrainingArguments``, datasets, data collator, ``compute_metrics``). Every
  epoch of a range test, search trial or confirmation run goes through *your* Trainer: its
  collator, gradient accumulation, clipping (``max_grad_norm``), fp16/bf16, ``compute_loss``
  and ``evaluate``; lrtune's schedule sets the LR of every optimizer step.
- :func:`apply_recommendation`: the recommended optimizer and schedule as the
  ``optimizers=(optimizer, scheduler)`` pair of a ``Trainer``.
- :func:`quiet_training_args`: ``TrainingArguments`` that leave nothing behind (a temporary
  ``output_dir``, no checkpoints, no reporting, no progress bars), for a factory to start from.

How one epoch runs (the design choice): each ``train_epoch`` call runs ``trainer.train()``
for exactly one epoch on the model and optimizer lrtune holds. Before the call the Trainer is
given lrtune's optimizer and, in HF's scheduler slot, :class:`KeepLR`, whose ``step()`` keeps
every LR as lrtune's schedule set it; a ``TrainerCallback`` calls lrtune's ``on_step()`` in
``on_step_end`` (after HF's optimizer step), where lrtune advances its schedule (and may
raise :class:`~lrtune.training.StopTraining` or :class:`~lrtune.training.StopRequested`,
which leave ``train_epoch`` as themselves). Running HF's own loop, rather than calling
``training_step`` from a loop of ours, keeps every Trainer semantic (accumulation with a
short last step, clipping, AMP scaling and skipped steps, schedule-free ``optimizer.train()``,
your subclass's overrides) exactly as HF has it.

What a :class:`TrainerTask` sets on your Trainer's ``args`` (everything else is yours):

- once, when the model is built: ``num_train_epochs=1`` and ``max_steps=-1`` (one epoch per
  call; for an ``IterableDataset``, ``max_steps`` is the task's ``steps_per_epoch``, which
  you must give, and each epoch restarts the dataset's iterator),
  ``eval_strategy``/``save_strategy`` ``"no"``, ``load_best_model_at_end=False``,
  ``eval_on_start=False``, ``push_to_hub=False`` (lrtune evaluates after each epoch and owns
  checkpoints), and ``logging_nan_inf_filter=False`` (so a diverged epoch's loss reads NaN and
  lrtune sees the divergence); a ``model_init`` is dropped after the Trainer built the model
  with it (``train()`` would otherwise re-initialise the model every epoch). With
  ``quiet=True`` (the default) HF's progress bar and log printer callbacks are removed;
- before each epoch: ``seed`` and ``data_seed`` (and the accelerator's data seed) to a value
  derived from lrtune's ``(seed, epoch)``, so each epoch's data order is its own and the same
  whenever that epoch is run again (a resumed run sees what an uninterrupted one saw).

Which device trains is the Trainer's (``args.device``: ``use_cpu=True`` for the CPU); lrtune's
device is ignored, with a warning when the two differ.

Metrics: ``metric`` is a key of ``trainer.evaluate()``'s answer, given with or without the
``eval_`` prefix (``"accuracy"`` and ``"eval_accuracy"`` name the same); the task's ``metric``
is always the prefixed name. :meth:`TrainerTask.evaluate` returns the numeric ``eval_*``
metrics (without HF's runtime and throughput ones, and without its ``epoch``) and
``val_loss``, a copy of ``eval_loss``, which lrtune reads to detect a diverged run and to
drive ``plateau`` schedules.

The range test (``lrtune.find_lr(task)``) calls :meth:`TrainerTask.loss` on the Trainer's
training batches (:meth:`TrainerTask.train_batches`): ``trainer.compute_loss`` on one
micro-batch per step, with no accumulation or clipping.
"""

from __future__ import annotations

import atexit
import logging
import math
import shutil
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import transformers
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, has_length

from lrtune.exceptions import InvalidInputError
from lrtune.task import OnStep, TaskError

logger = logging.getLogger(__name__)

TrainerFactory = Callable[[int], Trainer]
"""``trainer_factory(seed)``: a new ``Trainer`` whose model is initialised from ``seed``."""

RECENT_TRAINERS = 4
"""How many of the latest built Trainers a :class:`TrainerTask` keeps, by their model (a run
uses one at a time; the range test's and the group-ratio builds come and go)."""

NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time")
"""Suffixes of ``trainer.evaluate()`` keys that time the evaluation rather than score it."""


class KeepLR(torch.optim.lr_scheduler.LRScheduler):
    """The scheduler in HF's slot while lrtune trains: ``step()`` keeps every param group's LR
    as it is (lrtune's schedule set it), so HF stepping it changes nothing."""

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [float(group["lr"]) for group in self.optimizer.param_groups]


class _OnStepCallback(TrainerCallback):
    """Calls lrtune's ``on_step()`` at HF's ``on_step_end``: after each optimizer step (after
    HF stepped :class:`KeepLR`), once per optimizer step, accumulation included."""

    def __init__(self, on_step: OnStep) -> None:
        self.on_step = on_step
        self.steps = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.steps += 1
        self.on_step()


class TrainerTask:
    """A :class:`~lrtune.task.Task` whose every epoch runs through a ``transformers.Trainer``.

    Args:
        trainer_factory: ``trainer_factory(seed) -> Trainer``, a new Trainer (with a new model
            initialised from ``seed``, a ``train_dataset`` and an ``eval_dataset``) each call.
            lrtune calls ``transformers.set_seed(seed)`` just before, so a model built inside
            the factory is seeded; with ``model_init``, pass ``TrainingArguments(seed=seed)``.
        metric: the ``trainer.evaluate()`` key lrtune searches on, with or without ``eval_``
            (stored with it: ``"accuracy"`` becomes ``"eval_accuracy"``).
        direction: ``"minimize"`` or ``"maximize"``; may be left out for a metric whose name
            ends in ``loss`` (minimized).
        name: the task's name in the job (default: the factory's ``__name__``).
        steps_per_epoch: optimizer steps an epoch; default: measured from the Trainer's
            training dataloader and ``gradient_accumulation_steps`` as HF counts them.
        quiet: remove HF's progress-bar and log-printing callbacks from each Trainer.

    The Trainer's args are changed as the module says (one epoch per call, no HF evaluation
    or checkpoints during training, per-epoch data seeds); nothing else of yours is.
    """

    version = "1"
    params: Mapping[str, Any] = {}

    def __init__(
        self,
        trainer_factory: TrainerFactory,
        *,
        metric: str = "eval_loss",
        direction: str | None = None,
        name: str | None = None,
        steps_per_epoch: int | None = None,
        quiet: bool = True,
    ) -> None:
        if not callable(trainer_factory):
            raise InvalidInputError(
                f"TrainerTask needs trainer_factory(seed) -> Trainer, got {trainer_factory!r}"
            )
        self.trainer_factory = trainer_factory
        self.metric = eval_metric_name(metric)
        self.direction = _direction_of(self.metric, direction)
        self.name = name or _factory_name(trainer_factory)
        self.quiet = quiet
        self._declared_steps = steps_per_epoch
        self._measured_steps: int | None = None
        self._trainers: OrderedDict[int, Trainer] = OrderedDict()

    # -- the Task contract -------------------------------------------------------------------

    def build_model(self, seed: int, device: torch.device) -> nn.Module:
        """A new Trainer from ``trainer_factory(seed)``, prepared for lrtune; its model."""
        trainer = self._new_trainer(seed)
        if torch.device(device).type != trainer.args.device.type:
            logger.warning(
                "%s: lrtune's device is %s but the Trainer trains on %s (its args decide; "
                "use_cpu=True for the CPU)",
                self.name,
                device,
                trainer.args.device,
            )
        return trainer.model

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The optimizer the Trainer trains with: the one given in ``optimizers=`` if any,
        else ``trainer.create_optimizer()`` (from ``args.optim``, e.g. AdamW with weight decay
        on every parameter but biases and norms)."""
        trainer = self._trainer_of(model)
        return trainer.optimizer if trainer.optimizer is not None else trainer.create_optimizer()

    def train_batches(self, seed: int, epoch: int) -> Iterable[Any]:
        """The Trainer's training dataloader (its collator and batch size, on its device) in
        the data order of ``(seed, epoch)``: one micro-batch per item."""
        trainer = self._any_trainer(seed)
        _seed_epoch(trainer, seed, epoch)
        return trainer.get_train_dataloader()

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """``trainer.compute_loss(model, batch)`` (its label smoothing, your override), in the
        Trainer's autocast context; the mean loss of the batch."""
        trainer = self._trainer_of(model, required=False) or self._any_trainer(0)
        inputs = trainer._prepare_inputs(batch)
        with trainer.compute_loss_context_manager():
            return trainer.compute_loss(model, inputs)

    def train_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        on_step: OnStep,
        *,
        seed: int,
        epoch: int,
        device: torch.device,
    ) -> float:
        """One epoch of ``trainer.train()`` on ``model`` with lrtune's ``optimizer``, calling
        ``on_step()`` after each optimizer step; the epoch's mean training loss (NaN if one
        was not finite). What ``on_step`` raises comes out of here as itself."""
        trainer = self._trainer_of(model)
        _seed_epoch(trainer, seed, epoch)
        callback = _OnStepCallback(on_step)
        _hand_over_optimizer(trainer, optimizer)
        trainer.add_callback(callback)
        try:
            output = trainer.train()
        finally:
            trainer.remove_callback(callback)
            trainer.is_in_train = False
            _hand_over_optimizer(trainer, optimizer)  # unwrap accelerate's wrapper
        if callback.steps == 0:
            raise TaskError(f"{self.name}: the Trainer took no optimizer step in epoch {epoch + 1}")
        return float(output.training_loss)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """``trainer.evaluate()``'s numeric ``eval_*`` metrics and ``val_loss`` (its
        ``eval_loss``), without the runtime/throughput ones and ``epoch``."""
        trainer = self._trainer_of(model)
        scores = scored_metrics(trainer.evaluate())
        if self.metric not in scores:
            found = ", ".join(sorted(scores)) or "nothing"
            raise TaskError(
                f"{self.name}: trainer.evaluate() returned no {self.metric!r} (it returned "
                f"{found}); for other metrics give the Trainer compute_metrics"
            )
        return scores

    @property
    def steps_per_epoch(self) -> int | None:
        """Optimizer steps an epoch, as HF counts them: ``ceil(batches / accumulation)``."""
        if self._declared_steps is not None:
            return self._declared_steps
        if self._measured_steps is None:
            self._measured_steps = optimizer_steps_per_epoch(self._any_trainer(0))
        return self._measured_steps

    # -- the Trainers, one per built model ---------------------------------------------------

    def _new_trainer(self, seed: int) -> Trainer:
        transformers.set_seed(seed)
        trainer = self.trainer_factory(seed)
        if not isinstance(trainer, Trainer):
            raise InvalidInputError(
                f"{self.name}: trainer_factory(seed) must return a transformers.Trainer, "
                f"got {type(trainer).__name__}"
            )
        for needed in ("train_dataset", "eval_dataset"):
            if getattr(trainer, needed) is None:
                raise InvalidInputError(
                    f"{self.name}: the factory's Trainer has no {needed}: pass {needed}= to it"
                )
        if any(known.model is trainer.model for known in self._trainers.values()):
            raise InvalidInputError(
                f"{self.name}: trainer_factory(seed) returned a model it returned before: "
                "build a new Trainer and model on every call"
            )
        sized = has_length(trainer.train_dataset)
        if not sized and self._declared_steps is None:
            raise InvalidInputError(
                f"{self.name}: the Trainer's train_dataset has no length (an IterableDataset): "
                "give TrainerTask(steps_per_epoch=...), the optimizer steps of one epoch"
            )
        prepare_for_lrtune(
            trainer, quiet=self.quiet, max_steps=-1 if sized else self._declared_steps
        )
        self._trainers[id(trainer.model)] = trainer
        while len(self._trainers) > RECENT_TRAINERS:
            self._trainers.popitem(last=False)
        return trainer

    def _trainer_of(self, model: nn.Module, *, required: bool = True) -> Trainer | None:
        trainer = self._trainers.get(id(model))
        if trainer is not None and trainer.model is model:
            return trainer
        if required:
            raise TaskError(
                f"{self.name}: this model was not built by this task's build_model() (or is "
                f"no longer among its {RECENT_TRAINERS} latest): build it with build_model()"
            )
        return None

    def _any_trainer(self, seed: int) -> Trainer:
        """The latest built Trainer (for data and counts), or a new one."""
        if self._trainers:
            return next(reversed(self._trainers.values()))
        return self._new_trainer(seed)


def eval_metric_name(metric: str) -> str:
    """``metric`` as ``trainer.evaluate()`` names it: with its ``eval_`` prefix."""
    if not isinstance(metric, str) or not metric.strip():
        raise InvalidInputError(
            f"metric must be a non-empty str such as 'eval_loss', got {metric!r}"
        )
    metric = metric.strip()
    if metric == "val_loss":
        return "eval_loss"
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def _direction_of(metric: str, direction: str | None) -> str:
    if direction is None:
        if metric.endswith("loss"):
            return "minimize"
        raise InvalidInputError(
            f"TrainerTask(metric={metric!r}) needs direction='maximize' or 'minimize'"
        )
    if direction not in ("minimize", "maximize"):
        raise InvalidInputError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    return direction


def _factory_name(factory: Callable[..., Any]) -> str:
    name = getattr(factory, "__name__", "")
    return name if name and name.isidentifier() else "TrainerTask"


def scored_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scores of ``trainer.evaluate()``'s answer: its numeric ``eval_*`` values but the
    timing ones (:data:`NOT_METRICS`), plus ``val_loss`` = ``eval_loss`` when there is one."""
    scores: dict[str, float] = {}
    for key, value in metrics.items():
        if not key.startswith("eval_") or key.endswith(NOT_METRICS):
            continue
        try:
            scores[key] = float(value)
        except (TypeError, ValueError):
            continue
    if "eval_loss" in scores:
        scores["val_loss"] = scores["eval_loss"]
    return scores


def prepare_for_lrtune(trainer: Trainer, *, quiet: bool = True, max_steps: int = -1) -> None:
    """Set on ``trainer.args`` what one lrtune epoch per ``train()`` call needs (see the
    module); drop ``model_init`` (the model is built); with ``quiet``, remove HF's progress
    bar and log printer. ``max_steps``: -1 (one pass over a sized dataset), or the steps of
    an epoch of an ``IterableDataset`` (HF needs them; each epoch restarts its iterator)."""
    args = trainer.args
    args.num_train_epochs = 1
    args.max_steps = max_steps
    args.eval_strategy = IntervalStrategy.NO
    args.save_strategy = SaveStrategy.NO
    args.load_best_model_at_end = False
    args.eval_on_start = False
    args.push_to_hub = False
    args.logging_nan_inf_filter = False
    trainer.model_init = None
    if quiet:
        trainer.remove_callback(ProgressCallback)
        trainer.remove_callback(PrinterCallback)


def epoch_seed(seed: int, epoch: int) -> int:
    """The data seed of epoch ``epoch`` of a run from ``seed`` (fits a 32-bit seed)."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**31 - 1)


def _seed_epoch(trainer: Trainer, seed: int, epoch: int) -> None:
    """Seed the Trainer's next training dataloader for ``(seed, epoch)``: HF's sampler (and
    accelerate's seedable one) read ``data_seed``; ``train()`` restarts at its epoch 0."""
    value = epoch_seed(seed, epoch)
    trainer.args.seed = value
    trainer.args.data_seed = value
    config = getattr(trainer.accelerator, "dataloader_config", None)
    if config is not None:
        config.data_seed = value


def _hand_over_optimizer(trainer: Trainer, optimizer: torch.optim.Optimizer) -> None:
    """Give HF lrtune's optimizer (unwrapped: HF wraps it again in ``train()``) and
    :class:`KeepLR` in its scheduler slot, which HF must not replace."""
    trainer.optimizer = optimizer
    keep = getattr(trainer, "_lrtune_keep_lr", None)
    if keep is None or keep.optimizer is not optimizer:
        keep = KeepLR(optimizer)
        trainer._lrtune_keep_lr = keep
    trainer.lr_scheduler = keep
    trainer._created_lr_scheduler = False  # else train() drops it for one of its own


def optimizer_steps_per_epoch(trainer: Trainer) -> int:
    """Optimizer steps in one epoch of ``trainer.train()``: its dataloader's batches over
    ``gradient_accumulation_steps``, a short last step counting as one (HF's count).

    Raises:
        InvalidInputError: the training dataset has no length (give ``steps_per_epoch=``).
    """
    loader = trainer.get_train_dataloader()
    try:
        batches = len(loader)
    except TypeError:
        raise InvalidInputError(
            "the Trainer's train_dataset has no length: give TrainerTask(steps_per_epoch=...)"
        ) from None
    accumulation = max(int(trainer.args.gradient_accumulation_steps), 1)
    return max(math.ceil(batches / accumulation), 1)


_scratch_dirs: list[str] = []


def quiet_training_args(**kwargs: Any) -> TrainingArguments:
    """``TrainingArguments(**kwargs)`` with what leaves nothing behind unless ``kwargs`` say
    otherwise: ``output_dir`` a temporary folder (removed at exit), ``save_strategy="no"``,
    ``report_to=[]``, ``disable_tqdm=True``, ``logging_strategy="no"``."""
    if "output_dir" not in kwargs:
        if not _scratch_dirs:
            _scratch_dirs.append(tempfile.mkdtemp(prefix="lrtune-hf-"))
            atexit.register(shutil.rmtree, _scratch_dirs[0], True)
        kwargs["output_dir"] = _scratch_dirs[0]
    defaults = {
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "logging_strategy": "no",
    }
    return TrainingArguments(**{**defaults, **kwargs})


# -- the recommendation, back in a Trainer ----------------------------------------------------


class EpochSteppedScheduler:
    """A per-epoch torch scheduler that HF may step every optimizer step: it steps the wrapped
    one once every ``steps_per_epoch`` calls of :meth:`step`, i.e. at each epoch boundary."""

    def __init__(self, scheduler: Any, steps_per_epoch: int) -> None:
        if steps_per_epoch < 1:
            raise InvalidInputError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.scheduler = scheduler
        self.optimizer = scheduler.optimizer
        self.steps_per_epoch = steps_per_epoch
        self.steps = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps % self.steps_per_epoch == 0:
            self.scheduler.step()

    def get_last_lr(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.scheduler.load_state_dict(dict(state["scheduler"]))


def apply_recommendation(
    trainer_or_kwargs: Trainer | Mapping[str, Any],
    recommendation: Any,
    *,
    url: str | None = None,
    token: str | None = None,
    database: str | None = None,
    steps_per_epoch: int | None = None,
    epochs: int | None = None,
) -> tuple[torch.optim.Optimizer, Any]:
    """``(optimizer, scheduler)`` for ``Trainer(optimizers=...)`` that train as recommended.

    The optimizer holds the parameters of that Trainer's model: train that Trainer
    (``trainer.optimizer, trainer.lr_scheduler = apply_recommendation(trainer, rec)`` before
    ``trainer.train()``), or give the keyword arguments you build yours with
    (``Trainer(**kwargs, optimizers=apply_recommendation(kwargs, rec))``).

    Args:
        trainer_or_kwargs: a ``Trainer``, or the keyword arguments you would build one with
            (``model``, ``args``, ...): the optimizer is a new one built as that Trainer builds
            it (``create_optimizer()``), over the param groups the task tuned.
        recommendation: a :class:`~lrtune.recommendation.Recommendation`, its JSON's path,
            or a job id or spec fingerprint on the service at ``url`` (``token`` if it wants
            one) or in the job store at ``database``
            (:func:`lrtune.integrations.recommendations.load_recommendation`).
        steps_per_epoch, epochs: the run the schedule spans; default the tuned run's
            (``recommendation.steps_per_epoch`` and ``spec.search.epochs``). A warning says so
            when the Trainer's own differ.

    Every param group's LR is ``base_lr`` times its multiplier (the ratios the groups had when
    tuned). The scheduler is meant to be stepped once per optimizer step, as HF does: a
    per-batch schedule is the torch scheduler itself; a per-epoch one is wrapped in
    :class:`EpochSteppedScheduler`, which steps it every ``steps_per_epoch`` steps. ``plateau``
    without warm-up is a ``ReduceLROnPlateau``, which HF steps after each evaluation with
    ``metric_for_best_model`` (set ``eval_strategy="epoch"``); with a warm-up it is refused.
    A learning-rate-free baseline (Prodigy, schedule-free) builds that optimizer over the groups.

    Raises:
        InvalidInputError: no recommended schedule, a group count that differs from the tuned
            one, or a schedule HF cannot step (plateau with a warm-up).
    """
    from lrtune.integrations.recommendations import load_recommendation
    from lrtune.schedules import build

    rec = load_recommendation(recommendation, url=url, token=token, database=database)
    best = rec.best
    if best is None:
        raise InvalidInputError("the recommendation has no recommended schedule: no trial finished")
    trainer = trainer_or_kwargs if isinstance(trainer_or_kwargs, Trainer) else None
    if trainer is None:
        trainer = Trainer(**dict(trainer_or_kwargs))
    optimizer = _recommended_optimizer(trainer, rec, best)
    steps = steps_per_epoch or rec.steps_per_epoch
    run_epochs = epochs or rec.spec.search.epochs
    _warn_if_other_run(trainer, steps, run_epochs, given=steps_per_epoch or epochs)
    scheduler = build(
        best.schedule, optimizer, steps, run_epochs, group_multipliers=rec.group_multipliers
    )
    return optimizer, _stepped_per_optimizer_step(best.schedule, scheduler, steps)


def _recommended_optimizer(trainer: Trainer, rec: Any, best: Any) -> torch.optim.Optimizer:
    """The Trainer's own optimizer (a fresh one, not the one it holds) at the recommended LRs,
    or the learning-rate-free baseline's over its groups."""
    held = trainer.optimizer
    trainer.optimizer = None
    try:
        optimizer = trainer.create_optimizer()
    finally:
        trainer.optimizer = held
    multipliers = list(rec.group_multipliers)
    if len(optimizer.param_groups) != len(multipliers):
        raise InvalidInputError(
            f"the Trainer's optimizer has {len(optimizer.param_groups)} param groups but the "
            f"recommendation was tuned with {len(multipliers)}: build the Trainer as the task did"
        )
    groups = [
        {**group, "lr": best.base_lr * mult}
        for group, mult in zip(optimizer.param_groups, multipliers, strict=True)
    ]
    if best.lr_free is not None:
        from lrtune import lr_free

        plain = [{"params": g["params"], "lr": g["lr"]} for g in groups]
        return lr_free.build_optimizer(best.lr_free, rec.spec.optimizer, plain)
    for group, changed in zip(optimizer.param_groups, groups, strict=True):
        group["lr"] = changed["lr"]
    return optimizer


def _stepped_per_optimizer_step(schedule: Any, scheduler: Any, steps_per_epoch: int) -> Any:
    from lrtune.schedules import PlateauWithWarmup

    if isinstance(scheduler, PlateauWithWarmup):
        raise InvalidInputError(
            "a plateau schedule with a warm-up needs the metric each epoch, which HF's Trainer "
            "does not give it: train it with lrtune.schedules.drive() in your own loop"
        )
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return scheduler  # HF steps it after each evaluation, with metric_for_best_model
    if schedule.interval == "batch":
        return scheduler
    return EpochSteppedScheduler(scheduler, steps_per_epoch)


def _warn_if_other_run(trainer: Trainer, steps: int, epochs: int, *, given: Any) -> None:
    """Warn when the Trainer's run is not the one the schedule spans (unless the caller said)."""
    if given:
        return
    try:
        own_steps = optimizer_steps_per_epoch(trainer)
    except (InvalidInputError, ValueError):
        return
    own_epochs = trainer.args.num_train_epochs
    if (own_steps, own_epochs) != (steps, epochs):
        warnings.warn(
            f"the recommendation's schedule spans {epochs} epochs of {steps} steps, this "
            f"Trainer runs {own_epochs:g} of {own_steps}: pass steps_per_epoch= and epochs= "
            "to stretch it to your run, or train as the task did",
            stacklevel=3,
        )


__all__ = [
    "EpochSteppedScheduler",
    "KeepLR",
    "TrainerTask",
    "apply_recommendation",
    "eval_metric_name",
    "quiet_training_args",
    "scored_metrics",
]
