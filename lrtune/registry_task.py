"""A job's registry model on its registry dataset (or upload), as a :class:`~lrtune.task.Task`.

:class:`RegistryTask` is what a job spec that names ``model`` and ``dataset`` trains: the model
from :func:`lrtune.registry.build_model`, the optimizer the spec names over its param groups
(``param_groups``' prefixes and LR multipliers), shuffled batches of ``batch_size`` rows, the
dataset's own loss and metric. Runs of it go through the same loop as any user's task
(:func:`lrtune.training.train`), and it adds what only it can do:

- its data order is one generator per run, checkpointed with the run (:meth:`data_order`), so
  results are those of a ``DataLoader(shuffle=True, generator=...)`` epoch after epoch;
- on CUDA the job's data is moved to the device once when it fits
  (:data:`DEVICE_DATA_FRACTION`) and batches are sliced there (:func:`on_device`);
- ``spec.amp`` trains under fp16 autocast (the loop adds the GradScaler).

Example:
    >>> from lrtune.spec import JobSpec
    >>> from lrtune.registry import load_dataset
    >>> spec = JobSpec.model_validate({"model": {"name": "logreg"}, "dataset": {"name": "wine"}})
    >>> task = RegistryTask(spec, load_dataset("wine", {}), torch.device("cpu"))
    >>> task.name, task.metric, task.direction, task.steps_per_epoch
    ('logreg on wine', 'val_loss', 'minimize', 3)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lrtune.batches import LoaderOrderRows, batch_loss, move_to
from lrtune.datasets import DatasetBundle
from lrtune.exceptions import InvalidInputError
from lrtune.registry import build_model
from lrtune.spec import JobSpec, OptimizerSpec

logger = logging.getLogger(__name__)

DEVICE_DATA_FRACTION = 0.25
"""A job's data (train and validation tensors) is kept on a CUDA device when it takes at most
this fraction of the device's free memory at setup; the rest is left for the model, its
activations and other units on the same GPU. Data that does not fit stays in host memory and is
copied batch by batch."""


class RegistryTask:
    """A job spec's registry model, dataset and optimizer as a task (see the module)."""

    version = "builtin"

    def __init__(self, spec: JobSpec, bundle: DatasetBundle, device: torch.device) -> None:
        if spec.model is None or spec.dataset is None:
            raise InvalidInputError("a RegistryTask needs a job spec with model and dataset")
        self.spec = spec
        self.bundle = bundle
        self.device = device
        self.name = f"{spec.model.name} on {spec.dataset.name}"
        self.metric = spec.search.metric
        self.direction = spec.search.direction or "minimize"
        self.criterion = bundle.loss_fn()

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

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """fp16 autocast on CUDA with ``amp``; otherwise a context that changes nothing."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.float16)

    def build_model(self, seed: int, device: torch.device) -> nn.Module:
        model = build_model(self.spec.model.name, self.bundle, self.spec.model.params, seed=seed)
        return model.to(device)

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
        model = self.build_model(self.spec.seed, self.device)
        return [mult for mult, _ in self.param_groups(model)]

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The spec's optimizer with each group at its multiplier (the loop scales them)."""
        groups = [{"params": p, "lr": mult} for mult, p in self.param_groups(model)]
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

    def data_order(self, seed: int) -> GeneratorOrder:
        """A run's batches, epoch after epoch, in the order one generator seeded ``seed`` gives."""
        return GeneratorOrder(self, torch.Generator().manual_seed(seed))

    def train_batches(self, seed: int, epoch: int) -> Iterable[Any]:
        """Epoch ``epoch``'s batches of a run seeded ``seed`` (the epochs before it drawn)."""
        order = self.data_order(seed)
        for _ in range(epoch):
            order.skip_epoch()
        return order.epoch(epoch)

    def batches(self, generator: torch.Generator) -> Iterable[Any]:
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

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        with self.autocast():
            return batch_loss(model, move_to(batch, self.device), self.criterion)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        with self.autocast():
            scores = self.data.evaluate(model, device=device)
        record = {"val_loss": float(scores["loss"])}
        record.update({k: float(v) for k, v in scores.items() if k != "loss"})
        return record

    @property
    def steps_per_epoch(self) -> int:
        full, rest = divmod(len(self.bundle.train), self.spec.batch_size)
        return full + (1 if rest > 1 else 0)


class GeneratorOrder:
    """A :class:`RegistryTask` run's data order: every epoch draws from one generator, whose
    state the run's checkpoint keeps."""

    def __init__(self, task: RegistryTask, generator: torch.Generator) -> None:
        self.generator = generator
        self._batches = task.batches(generator)

    def epoch(self, _epoch: int) -> Iterable[Any]:
        return self._batches

    def skip_epoch(self) -> None:
        for _ in self._batches:
            pass

    def state_dict(self) -> Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: Tensor) -> None:
        self.generator.set_state(state)


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
