"""Batches: how lrtune reads them, computes a loss from them, and orders them per seed.

A batch is one of
- a tuple or list ``(input, ..., target)``: the model gets the inputs positionally;
- a dict with a target under ``target``, ``targets``, ``label``, ``labels`` or ``y``: the
  model gets the one remaining value positionally, or all remaining values as keywords;
- anything else, when the caller passes ``loss_fn(model, batch) -> loss``.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> batch = {"x": torch.randn(4, 3), "label": torch.tensor([0, 1, 1, 0])}
    >>> loss = batch_loss(model, batch, torch.nn.functional.cross_entropy)
    >>> loss.shape
    torch.Size([])
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from torch.utils.data.dataloader import default_collate

Criterion = Callable[[Tensor, Tensor], Tensor]
LossFn = Callable[[nn.Module, Any], Tensor]

TARGET_KEYS = ("target", "targets", "label", "labels", "y")


def batch_loss(
    model: nn.Module, batch: Any, criterion: Criterion | None, loss_fn: LossFn | None = None
) -> Tensor:
    """The scalar training loss of ``model`` on ``batch``."""
    if loss_fn is not None:
        return loss_fn(model, batch)
    if criterion is None:
        raise ValueError("pass a criterion (e.g. nn.CrossEntropyLoss()) or a loss_fn(model, batch)")
    if isinstance(batch, Mapping):
        target_key = next((k for k in TARGET_KEYS if k in batch), None)
        if target_key is None:
            raise TypeError(
                f"dict batch has no target key (one of {', '.join(TARGET_KEYS)}); "
                f"got keys {sorted(batch)}: pass loss_fn(model, batch) for this format"
            )
        inputs = {k: v for k, v in batch.items() if k != target_key}
        output = model(*inputs.values()) if len(inputs) == 1 else model(**inputs)
        return criterion(output, batch[target_key])
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return criterion(model(*batch[:-1]), batch[-1])
    raise TypeError(
        f"cannot read a {type(batch).__name__} batch: use (inputs..., target), a dict with a "
        f"target key ({', '.join(TARGET_KEYS)}), or pass loss_fn(model, batch)"
    )


def move_to(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (nested in tuples, lists, dicts) on ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def stack_batches(batches: Sequence[Any]) -> Any:
    """One batch whose tensors gain a leading dimension, one entry per given batch.

    Raises:
        TypeError: a batch holds something other than tensors, tuples, lists and dicts.
        ValueError: the batches' shapes differ.
    """
    first = batches[0]
    if isinstance(first, Tensor):
        if any(b.shape != first.shape for b in batches):
            raise ValueError(f"batches differ in shape: {[tuple(b.shape) for b in batches]}")
        return torch.stack(list(batches))
    if isinstance(first, Mapping):
        return {k: stack_batches([b[k] for b in batches]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(stack_batches(parts) for parts in zip(*batches, strict=True))
    raise TypeError(f"cannot stack a {type(first).__name__} inside a batch")


def seeded_order(data: Iterable[Any], seed: int | None) -> Iterable[Any]:
    """``data`` re-ordered by ``seed`` (a fresh shuffle each pass), or as given for ``None``.

    Multi-seed sweeps need an order per seed, which only data that can be re-shuffled allows:
    a DataLoader over a map-style dataset with a ``batch_size``, or a sequence of batches; or
    data that makes its own order: a callable ``data(seed)`` returning the seed's batches.
    """
    if callable(data) and not isinstance(data, (DataLoader, Sequence)):
        return data(seed)
    if seed is None:
        return data
    if isinstance(data, DataLoader):
        if _is_plain_tensor_loader(data):
            return _ShuffledTensorBatches(
                data.dataset.tensors, data.batch_size, data.drop_last, seed
            )
        if isinstance(data.dataset, IterableDataset) or data.batch_size is None:
            raise ValueError(
                "seeded sweeps re-shuffle the data: pass a DataLoader over a map-style dataset "
                "with batch_size set, or a list of batches"
            )
        return DataLoader(
            data.dataset,
            batch_size=data.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            collate_fn=data.collate_fn,
            drop_last=data.drop_last,
            num_workers=data.num_workers,
            pin_memory=data.pin_memory,
        )
    if isinstance(data, Sequence):
        return _ShuffledSequence(data, seed)
    raise ValueError(
        f"seeded sweeps re-shuffle the data, which a {type(data).__name__} cannot do: "
        "pass a DataLoader or a list of batches"
    )


def _is_plain_tensor_loader(loader: DataLoader) -> bool:
    """A loader whose batches are just rows of a TensorDataset, so slicing can replace collation."""
    return (
        type(loader.dataset) is TensorDataset
        and loader.batch_size is not None
        and loader.collate_fn is default_collate
        and loader.num_workers == 0
        and not loader.pin_memory
    )


class _ShuffledTensorBatches:
    """Batches of a TensorDataset's rows in a new seeded permutation on every pass.

    Indexing the tensors with a slice of the permutation gives the same batches a shuffling
    DataLoader would collate sample by sample, about 20 times faster for small rows.
    """

    def __init__(
        self, tensors: Sequence[Tensor], batch_size: int, drop_last: bool, seed: int
    ) -> None:
        self._tensors = tensors
        self._batch_size = batch_size
        self._drop_last = drop_last
        self._generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[list[Tensor]]:
        n = len(self._tensors[0])
        # Drawn on the CPU (the generator's device), copied once a pass to where the rows are.
        order = torch.randperm(n, generator=self._generator).to(self._tensors[0].device)
        yield from _row_batches(self._tensors, order, self._batch_size, self._drop_last)


class LoaderOrderRows:
    """A TensorDataset's batches in the order of ``DataLoader(dataset, batch_size, shuffle=True,
    generator=generator, drop_last=drop_last)``, sliced where the tensors are.

    Each pass draws from ``generator`` exactly what that DataLoader's pass draws (its
    iterator's base seed, then its sampler's permutation, and the sampler's final empty one),
    so the batches are the same rows in the same order and the generator ends in the same
    state: a checkpoint of the generator resumes either. The permutation is drawn on the CPU
    and copied to the tensors' device once a pass; each batch is an ``index_select`` there, so
    a dataset on a GPU is never copied from the host batch by batch.
    """

    def __init__(
        self,
        tensors: Sequence[Tensor],
        batch_size: int,
        generator: torch.Generator,
        drop_last: bool,
    ) -> None:
        self._tensors = tensors
        self._batch_size = batch_size
        self._generator = generator
        self._drop_last = drop_last

    def __len__(self) -> int:
        full, rest = divmod(len(self._tensors[0]), self._batch_size)
        return full + (1 if rest and not self._drop_last else 0)

    def __iter__(self) -> Iterator[list[Tensor]]:
        n = len(self._tensors[0])
        torch.empty((), dtype=torch.int64).random_(generator=self._generator)  # the base seed
        order = torch.randperm(n, generator=self._generator)
        torch.randperm(n, generator=self._generator)  # RandomSampler's trailing order[:0]
        order = order.to(self._tensors[0].device, non_blocking=True)
        yield from _row_batches(self._tensors, order, self._batch_size, self._drop_last)


def _row_batches(
    tensors: Sequence[Tensor], order: Tensor, batch_size: int, drop_last: bool
) -> Iterator[list[Tensor]]:
    """Batches of ``tensors``' rows in ``order`` (on their device), ``batch_size`` rows each."""
    n = len(order)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        rows = order[start : start + batch_size]
        yield [t.index_select(0, rows) for t in tensors]


class _ShuffledSequence:
    """A sequence of batches visited in a new seeded permutation on every pass."""

    def __init__(self, batches: Sequence[Any], seed: int) -> None:
        self._batches = batches
        self._rng = random.Random(seed)

    def __iter__(self) -> Iterator[Any]:
        order = list(range(len(self._batches)))
        self._rng.shuffle(order)
        return (self._batches[i] for i in order)


def endless(data: Iterable[Any]) -> Iterator[Any]:
    """Batches of ``data`` pass after pass, so a sweep may be longer than one epoch."""
    while True:
        yielded = 0
        for batch in data:
            yielded += 1
            yield batch
        if yielded == 0:
            raise ValueError(
                "train data yielded no batches (an exhausted iterator?): pass a DataLoader "
                "or a list of batches, which can be iterated more than once"
            )
