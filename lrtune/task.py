"""Your own training code as one object: the :class:`Task` contract.

A task is what lrtune needs from a training script to run the range test, a search trial and a
confirmation run on it; lrtune owns the rest (the LR of every step, the schedule, seeds,
checkpoints, pruning, confirmation and the verdict). The built-in registry models are tasks
too (:class:`lrtune.registry_task.RegistryTask`): every run goes through the same loop
(:func:`lrtune.training.train`).

A task provides:

- ``build_model(seed, device)``: the model, initialised from ``seed``, on ``device``;
- ``build_optimizer(model)``: any ``torch.optim.Optimizer`` (your own class too) over the
  model's parameters. lrtune sets each group's LR on every step and keeps the groups' ratios
  as you built them: a group built at a tenth of group 0's LR stays at a tenth;
- ``train_batches(seed, epoch)``: the batches of one epoch (any iterable or ``DataLoader``),
  the same for the same seed and epoch, so a resumed run sees what an uninterrupted one saw;
- ``loss(model, batch)``: the scalar training loss of a batch (device placement is yours:
  the batch is as ``train_batches`` gave it);
- ``evaluate(model, device)``: ``{metric: value}`` after each epoch, holding ``metric``,
  whose ``direction`` ("minimize" or "maximize") the task declares;
- optionally ``train_epoch(model, optimizer, on_step, *, seed, epoch, device)``, for code that
  owns its loop (AMP, clipping, accumulation, several losses): call ``on_step(loss)`` right
  after each ``optimizer.step()``; lrtune advances the schedule there, records the LR, and may
  stop the run (a cancelled job, SIGTERM, a lost lease) by raising from it. Return the epoch's
  mean loss, or None to let lrtune average what ``on_step`` was given;
- optionally ``steps_per_epoch`` (else measured once by counting epoch 0's batches),
  ``version``, ``state_dict()``/``load_state_dict()`` (checkpointed with the run).

:class:`TaskBase` fills in the usual parts: ``name`` from the class, ``loss`` as
cross-entropy of ``model(inputs)`` on ``(inputs, targets)`` batches, and ``evaluate`` as that
loss and the accuracy over ``val_batches()``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Blobs(TaskBase):
    ...     metric, direction = "accuracy", "maximize"
    ...     def __init__(self):
    ...         g = torch.Generator().manual_seed(0)
    ...         self.x = torch.randn(256, 4, generator=g)
    ...         self.y = (self.x[:, 0] > 0).long()
    ...     def build_model(self, seed, device):
    ...         torch.manual_seed(seed)
    ...         return nn.Linear(4, 2).to(device)
    ...     def build_optimizer(self, model):
    ...         return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ...     def train_batches(self, seed, epoch):
    ...         g = torch.Generator().manual_seed(seed * 1000 + epoch)
    ...         order = torch.randperm(256, generator=g)
    ...         return [(self.x[i], self.y[i]) for i in order.split(32)]
    ...     def val_batches(self):
    ...         return [(self.x, self.y)]
    >>> task = Blobs()
    >>> check_task(task)
    >>> task.name, task.steps_per_epoch
    ('Blobs', None)
    >>> spec = task_job(task, search={"n_trials": 4})  # the job that tunes it
    >>> spec.task.name, spec.task.lrs, spec.search.metric, spec.search.direction
    ('Blobs', [0.1], 'accuracy', 'maximize')
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from lrtune.exceptions import InvalidInputError, LRTuneError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from lrtune.spec import JobSpec

Direction = Literal["minimize", "maximize"]
OnStep = Callable[..., None]
"""``on_step(loss=None)``: called by a task's own ``train_epoch`` after each optimizer step."""

REQUIRED_METHODS = ("build_model", "build_optimizer", "train_batches", "loss", "evaluate")


class TaskError(LRTuneError):
    """The task's own code broke its contract (no metric, a NaN metric, not a number...): the
    unit fails with this one-line reason, and the process goes on with other work."""


@runtime_checkable
class Task(Protocol):
    """Your training code, as lrtune runs it (see the module for each method's contract)."""

    name: str
    metric: str
    direction: Direction

    def build_model(self, seed: int, device: torch.device) -> nn.Module: ...

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer: ...

    def train_batches(self, seed: int, epoch: int) -> Iterable[Any]: ...

    def loss(self, model: nn.Module, batch: Any) -> Tensor: ...

    def evaluate(self, model: nn.Module, device: torch.device) -> Mapping[str, float]: ...


class TaskBase:
    """A convenience base for a :class:`Task`: write ``build_model``, ``build_optimizer``,
    ``train_batches`` and ``val_batches`` (or your own ``loss``/``evaluate``).

    ``name`` defaults to the class's name; ``metric`` to ``"val_loss"`` (minimized).
    """

    name: str = ""
    metric: str = "val_loss"
    direction: Direction = "minimize"
    version: str = "1"
    steps_per_epoch: int | None = None
    params: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        """Cross-entropy of ``model(inputs)`` against ``targets`` for an ``(inputs, targets)``
        batch, both moved to the model's device."""
        from torch.nn import functional

        inputs, targets = _on_model_device(model, batch)
        return functional.cross_entropy(model(inputs), targets)

    def _default_loss(self) -> bool:
        return type(self).loss is TaskBase.loss

    def val_batches(self) -> Iterable[Any]:
        """The validation batches :meth:`evaluate` reads (override, or override evaluate)."""
        raise NotImplementedError(
            f"{type(self).__name__} defines neither val_batches() nor evaluate(model, device)"
        )

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """``val_loss`` (mean :meth:`loss` per batch, weighted by its size) and, where the model
        outputs one score per class, ``accuracy``, over :meth:`val_batches`."""
        import torch
        from torch.nn import functional

        total = correct = count = 0.0
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for batch in self.val_batches():
                inputs, targets = _on_model_device(model, batch)
                size = len(targets)
                outputs = model(inputs)
                if self._default_loss():  # one forward for the loss and the accuracy
                    loss = functional.cross_entropy(outputs, targets)
                else:
                    loss = self.loss(model, (inputs, targets))
                total += float(loss) * size
                if outputs.dim() == 2 and targets.dim() == 1 and not targets.is_floating_point():
                    correct += float((outputs.argmax(1) == targets).sum())
                count += size
        model.train(was_training)
        if count == 0:
            raise TaskError(f"{self.name}.val_batches() yielded no batches")
        scores = {"val_loss": total / count}
        if correct or self.metric == "accuracy":
            scores["accuracy"] = correct / count
        return scores


def _on_model_device(model: nn.Module, batch: Any) -> Any:
    """An ``(inputs, targets)`` batch on the model's device (moved only when it is not)."""
    inputs, targets = batch
    parameter = next(model.parameters(), None)
    if parameter is None or inputs.device == parameter.device:
        return inputs, targets
    return inputs.to(parameter.device), targets.to(parameter.device)


def check_task(task: Any) -> None:
    """Raise :class:`InvalidInputError` naming what ``task`` lacks to be a :class:`Task`."""
    missing = [name for name in REQUIRED_METHODS if not callable(getattr(task, name, None))]
    if missing:
        raise InvalidInputError(
            f"{type(task).__name__} is not an lrtune Task: it lacks {', '.join(missing)} "
            "(see lrtune.task)"
        )
    for attr in ("name", "metric"):
        if not isinstance(getattr(task, attr, None), str) or not getattr(task, attr):
            raise InvalidInputError(f"task {type(task).__name__} needs a non-empty str {attr!r}")
    if getattr(task, "direction", None) not in ("minimize", "maximize"):
        raise InvalidInputError(
            f"task {task.name!r}: direction must be 'minimize' or 'maximize', "
            f"got {getattr(task, 'direction', None)!r}"
        )
    steps = getattr(task, "steps_per_epoch", None)
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise InvalidInputError(f"task {task.name!r}: steps_per_epoch must be an int >= 1")


def checked_scores(task: Task, scores: Any, epoch: int) -> dict[str, float]:
    """``task.evaluate``'s answer as an epoch record's scores, or :class:`TaskError` saying
    what is wrong with it (not a mapping, no ``task.metric``, a value that is not a number).
    A non-finite value is the training loop's to judge (a diverged run, or a broken task).

    ``epoch`` counts from 0; messages count from 1, as the dashboard does.
    """
    where = f"{task.name}.evaluate() in epoch {epoch + 1}"
    if not isinstance(scores, Mapping):
        raise TaskError(f"{where} returned {type(scores).__name__}, not a dict of metrics")
    if task.metric not in scores:
        found = ", ".join(sorted(map(str, scores))) or "nothing"
        raise TaskError(f"{where} returned no {task.metric!r} (it returned {found})")
    record: dict[str, float] = {}
    for key, value in scores.items():
        try:
            record[str(key)] = float(value)
        except (TypeError, ValueError):
            raise TaskError(f"{where}: {key!r} is {type(value).__name__}, not a number") from None
    return record


TaskFactory = Callable[..., Task]


def load_task(path: str, params: Mapping[str, Any] | None = None) -> Task:
    """The task an import path names: ``"package.module:attribute"``.

    The attribute is a task, or a callable (a :class:`TaskBase` subclass, a function) that
    returns one when called with the job's ``params`` as keyword arguments. Only an operator
    names a path (``lrtune worker --task``, ``lrtune agent --task``); nothing from HTTP is
    imported.

    Raises:
        InvalidInputError: the path is malformed, does not import, or names no task.
    """
    target = import_target(path)
    return make_task(target, params or {}, path)


def import_target(path: str) -> Any:
    """The object ``"package.module:attribute"`` names (see :func:`load_task`)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise InvalidInputError(f"task {path!r}: write it as package.module:attribute")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any error, said in one line
        raise InvalidInputError(
            f"task {path!r} failed to import: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise InvalidInputError(f"task {path!r}: {module_name} has no {attribute!r}")
    return target


def is_task(value: Any) -> bool:
    """Whether ``value`` is a task object (it has the :class:`Task` methods), not a class or a
    factory of tasks, a model or a spec."""
    return not inspect.isclass(value) and all(
        callable(getattr(value, name, None)) for name in REQUIRED_METHODS
    )


def make_task(target: Any, params: Mapping[str, Any], label: str) -> Task:
    """``target`` itself when it is a task, else ``target(**params)`` checked as one."""
    if is_task(target):
        if params:
            raise InvalidInputError(f"task {label!r} takes no params, got {sorted(params)}")
        check_task(target)
        return target
    if not callable(target):
        raise InvalidInputError(f"task {label!r} is a {type(target).__name__}, not a task")
    try:
        task = target(**params)
    except TypeError as exc:
        raise InvalidInputError(f"task {label!r} params {dict(params)}: {exc}") from exc
    except Exception as exc:
        raise TaskError(
            f"task {label!r} raised {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    check_task(task)
    return task


def task_job(
    task: Task,
    *,
    search: Mapping[str, Any] | None = None,
    range_test: Mapping[str, Any] | None = None,
    seed: int = 0,
    name: str | None = None,
    device: str = "auto",
    params: Mapping[str, Any] | None = None,
) -> JobSpec:
    """The job spec that tunes ``task``: its name and params, its metric and direction (unless
    ``search`` names others), and what its optimizer is as the task builds it (one build of
    its model and optimizer on the CPU): its groups' LRs (the "your lr as written" baseline) and
    the ``torch.optim`` family the learning-rate-free baselines' recipes follow.
    """
    import torch

    from lrtune.spec import JobSpec

    check_task(task)
    optimizer = task.build_optimizer(task.build_model(seed, torch.device("cpu")))
    searched = {"metric": task.metric, "direction": task.direction, **(search or {})}
    if "metric" in (search or {}) and "direction" not in (search or {}):
        del searched["direction"]  # the metric's own, or the spec asks for one
    return JobSpec.model_validate(
        {
            "name": name,
            "task": {
                "name": task.name,
                "params": dict(params if params is not None else getattr(task, "params", {})),
                "lrs": [float(group["lr"]) for group in optimizer.param_groups],
            },
            "optimizer": optimizer_family(optimizer),
            "search": searched,
            "range_test": dict(range_test or {}),
            "seed": seed,
            "device": device,
        }
    )


def optimizer_family(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The job spec's ``optimizer`` closest to a task's: its ``torch.optim`` class when lrtune
    knows it (with its weight decay for SGD, Adam, AdamW), else AdamW for an optimizer with
    ``betas``, SGD otherwise. Only the learning-rate-free baselines read it (which
    schedule-free variant, what weight decay); the task's own optimizer is what trains."""
    from typing import get_args

    from lrtune.spec import FIELD_KEYWORDS, OptimizerName

    known = set(get_args(OptimizerName))
    name = type(optimizer).__name__.lower()
    if name not in known:
        name = "adamw" if "betas" in optimizer.defaults else "sgd"
    family: dict[str, Any] = {"name": name}
    decay = optimizer.param_groups[0].get("weight_decay", 0.0)
    if name in FIELD_KEYWORDS and isinstance(decay, (int, float)) and 0 <= decay <= 1:
        family["weight_decay"] = float(decay)
    return family
