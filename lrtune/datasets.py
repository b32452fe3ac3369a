"""Built-in datasets as train/validation tensors: scikit-learn's bundled data and a synthetic task.

Nothing is downloaded: ``digits``, ``breast_cancer``, ``wine`` and ``diabetes`` ship inside
scikit-learn, and ``synthetic`` is drawn by :func:`sklearn.datasets.make_classification`.
Every factory takes plain JSON params, validated by a pydantic model of :mod:`lrtune.params`
(unknown or ill-typed params raise :class:`~lrtune.exceptions.InvalidInputError`, a
``ValueError``, naming the param), and returns a :class:`DatasetBundle`:

* the split is deterministic for a given ``seed`` and stratified by class for classification;
* features are standardized with statistics of the train split only (digits' pixels are
  scaled to ``[0, 1]`` instead), and so is the diabetes target;
* ``max_samples`` caps the size by a deterministic (stratified) subsample taken before the split.

Example:
    >>> import torch
    >>> from lrtune.datasets import wine
    >>> bundle = wine(val_fraction=0.25, seed=1)
    >>> bundle.task, bundle.input_shape, bundle.output_dim, bundle.metric_name
    ('classification', (13,), 3, 'accuracy')
    >>> len(bundle.train) + len(bundle.val)
    178
    >>> model = torch.nn.Linear(13, 3)
    >>> sorted(bundle.evaluate(model))
    ['accuracy', 'loss']

Users load datasets by name through :func:`lrtune.registry.load_dataset`, which also finds
datasets added by plugins. Arrays of one's own become a bundle with :func:`from_arrays` (the
same checks and split as an upload to the service, :mod:`lrtune.upload_parsing`); a job names an
uploaded dataset as ``uploaded`` with its ``id``, which a worker reads from its job store.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import sklearn.datasets
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import TensorDataset

from lrtune.exceptions import InvalidInputError
from lrtune.params import FactoryParams as FactoryParams  # re-exported for plugins
from lrtune.params import SplitParams, SyntheticParams, UploadedParams, parse_params
from lrtune.upload_parsing import UploadedArrays, check_arrays

Task = Literal["classification", "regression"]

_TASKS: tuple[Task, ...] = ("classification", "regression")


@dataclass(frozen=True)
class DatasetBundle:
    """A dataset split into train and validation parts, with what training needs to know.

    Features are float32; classification targets are int64 class indices, regression targets
    float32 of shape ``(n, 1)``.
    """

    name: str
    task: Task
    train: TensorDataset
    val: TensorDataset
    input_shape: tuple[int, ...]
    output_dim: int

    def __post_init__(self) -> None:
        if self.task not in _TASKS:
            raise InvalidInputError(f"task must be one of {_TASKS}, got {self.task!r}")
        if isinstance(self.output_dim, bool) or self.output_dim < 1:
            raise InvalidInputError(f"output_dim must be a positive int, got {self.output_dim!r}")
        for split_name, split in (("train", self.train), ("val", self.val)):
            if len(split.tensors) != 2 or len(split) == 0:
                raise InvalidInputError(
                    f"{split_name} must hold (features, targets) and be non-empty"
                )
            if tuple(split.tensors[0].shape[1:]) != tuple(self.input_shape):
                raise InvalidInputError(
                    f"{split_name} features have shape {tuple(split.tensors[0].shape[1:])} "
                    f"per sample, but input_shape is {tuple(self.input_shape)}"
                )

    @property
    def metric_name(self) -> str:
        """``"accuracy"`` for classification, ``"mse"`` for regression."""
        return "accuracy" if self.task == "classification" else "mse"

    @property
    def metric_direction(self) -> Literal["maximize", "minimize"]:
        return "maximize" if self.task == "classification" else "minimize"

    def loss_fn(self) -> nn.Module:
        """A fresh training loss: cross-entropy for classification, MSE for regression."""
        return nn.CrossEntropyLoss() if self.task == "classification" else nn.MSELoss()

    def evaluate(
        self,
        model: nn.Module,
        device: str | torch.device | None = None,
        batch_size: int = 1024,
    ) -> dict[str, float]:
        """Mean loss and the metric on the validation split.

        Runs in eval mode without gradients, then restores each submodule's train/eval mode.
        ``device`` is where batches are sent (the model must already be there); by default
        the device of the model's first parameter. The sums are kept on that device (in
        float64, as Python floats would add them) and read once at the end: one host sync
        however many batches.

        Returns:
            ``{"loss": ..., self.metric_name: ...}``.
        """
        if batch_size < 1:
            raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
        target_device = _device_of(model) if device is None else torch.device(device)
        features, targets = self.val.tensors
        sums = torch.zeros(2, dtype=_sum_dtype(target_device), device=target_device)
        modes = {module: module.training for module in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(features), batch_size):
                    batch_x = features[start : start + batch_size].to(target_device)
                    batch_y = targets[start : start + batch_size].to(target_device)
                    sums += self._summed_loss_and_metric(model(batch_x), batch_y)
        finally:
            for module, training in modes.items():
                module.training = training
        loss_sum, metric_sum = sums.tolist()
        # Per sample for cross-entropy and accuracy, per element for MSE (as nn.MSELoss averages).
        count = len(targets) if self.task == "classification" else targets.numel()
        return {"loss": loss_sum / count, self.metric_name: metric_sum / count}

    def _summed_loss_and_metric(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch's summed loss and summed metric, as a tensor of two on the batch's device."""
        dtype = _sum_dtype(outputs.device)
        if self.task == "classification":
            loss = F.cross_entropy(outputs, targets, reduction="sum")
            hits = (outputs.argmax(dim=1) == targets).sum()
            return torch.stack([loss.to(dtype), hits.to(dtype)])
        loss = F.mse_loss(outputs, targets, reduction="sum").to(dtype)
        return torch.stack([loss, loss])


def _sum_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (MPS does not): sums then match Python's float adds."""
    return torch.float32 if device.type == "mps" else torch.float64


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


# --- built-in datasets -------------------------------------------------------------------------


def digits(**params: Any) -> DatasetBundle:
    """8x8 handwritten digits: 1797 samples, 10 classes, 64 pixel features scaled to [0, 1].

    Params: ``val_fraction`` (0.2), ``seed`` (0), ``max_samples`` (None).
    """
    split = parse_params(SplitParams, params, "dataset 'digits'")
    features, labels = _sklearn_arrays("digits")
    return _make_bundle(
        "digits", "classification", features / 16.0, labels, split, standardize_features=False
    )


def breast_cancer(**params: Any) -> DatasetBundle:
    """Wisconsin breast cancer: 569 samples, 2 classes, 30 standardized features.

    Params: ``val_fraction`` (0.2), ``seed`` (0), ``max_samples`` (None).
    """
    split = parse_params(SplitParams, params, "dataset 'breast_cancer'")
    features, labels = _sklearn_arrays("breast_cancer")
    return _make_bundle(
        "breast_cancer", "classification", features, labels, split, standardize_features=True
    )


def wine(**params: Any) -> DatasetBundle:
    """Wine cultivars: 178 samples, 3 classes, 13 standardized features.

    Params: ``val_fraction`` (0.2), ``seed`` (0), ``max_samples`` (None).
    """
    split = parse_params(SplitParams, params, "dataset 'wine'")
    features, labels = _sklearn_arrays("wine")
    return _make_bundle(
        "wine", "classification", features, labels, split, standardize_features=True
    )


def diabetes(**params: Any) -> DatasetBundle:
    """Diabetes progression: 442 samples, 10 features, a regression target; both standardized.

    Params: ``val_fraction`` (0.2), ``seed`` (0), ``max_samples`` (None).
    """
    split = parse_params(SplitParams, params, "dataset 'diabetes'")
    features, target = _sklearn_arrays("diabetes")
    return _make_bundle(
        "diabetes", "regression", features, target, split, standardize_features=True
    )


def synthetic(**params: Any) -> DatasetBundle:
    """A classification task from :func:`sklearn.datasets.make_classification`.

    Params: ``n_samples`` (2000), ``n_features`` (20), ``n_classes`` (2, up to 10),
    ``val_fraction`` (0.2), ``seed`` (0; seeds both the data and the split), ``max_samples``.
    """
    parsed = parse_params(SyntheticParams, params, "dataset 'synthetic'")
    features, labels = _synthetic_arrays(
        parsed.n_samples, parsed.n_features, parsed.n_classes, parsed.seed
    )
    return _make_bundle(
        "synthetic", "classification", features, labels, parsed, standardize_features=True
    )


def from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: Task | None = None,
    name: str = "arrays",
    **params: Any,
) -> DatasetBundle:
    """A bundle of your own arrays, checked as an upload is
    (:func:`lrtune.upload_parsing.check_arrays`).

    ``x`` is ``(n, F)``, ``(n, T)`` token ids, ``(n, C, L)`` or ``(n, C, H, W)``; ``y`` holds
    class labels (integers: classification) or values (floats: regression), or say ``task``.
    Params: ``val_fraction`` (0.2), ``seed`` (0), ``max_samples`` (None), ``standardize``
    (None: only ``(n, F)`` features that are not all whole numbers).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(40, 3))
        >>> bundle = from_arrays(x, (x[:, 0] > 0).astype(int), val_fraction=0.25)
        >>> bundle.task, bundle.input_shape, bundle.output_dim, len(bundle.val)
        ('classification', (3,), 2, 10)

    Raises:
        InvalidInputError: the arrays fail a check, or the params are invalid.
    """
    return bundle_of(check_arrays(x, y, task=task), name, params)


def bundle_of(arrays: UploadedArrays, name: str, params: dict[str, Any]) -> DatasetBundle:
    """The bundle of checked arrays (an upload read back from the store) with split params:
    those of :class:`~lrtune.params.UploadedParams`, ``id`` aside."""
    split = parse_params(UploadedParams, {"id": "0" * 64, **params}, f"dataset {name!r}")
    standardize = split.standardize
    if standardize is None:
        standardize = arrays.x.ndim == 2 and not bool(np.all(arrays.x == np.round(arrays.x)))
    return _make_bundle(
        name, arrays.task, arrays.x, arrays.y, split, standardize_features=standardize
    )


def uploaded(**params: Any) -> DatasetBundle:
    """A dataset uploaded to the job store (``POST /v1/datasets``), by its ``id``.

    Its arrays live in the job store's database: a worker reads them there
    (:meth:`lrtune.jobs.uploads.DatasetUploads.bundle`), so this factory, which has no store,
    only says so. Params: :class:`~lrtune.params.UploadedParams`.
    """
    parse_params(UploadedParams, params, "dataset 'uploaded'")
    raise InvalidInputError(
        "dataset 'uploaded' is read from a job store: run the job on a worker of the store it "
        "was uploaded to (lrtune worker), or build a bundle of the arrays with "
        "lrtune.datasets.from_arrays"
    )


_SKLEARN_LOADERS: dict[str, Callable[..., Any]] = {
    "digits": sklearn.datasets.load_digits,
    "breast_cancer": sklearn.datasets.load_breast_cancer,
    "wine": sklearn.datasets.load_wine,
    "diabetes": sklearn.datasets.load_diabetes,
}


@functools.cache
def _sklearn_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    # Trials load the same dataset over and over; read-only, since every caller shares them.
    features, targets = _SKLEARN_LOADERS[name](return_X_y=True)
    return _read_only(np.asarray(features, dtype=np.float64)), _read_only(np.asarray(targets))


@functools.lru_cache(maxsize=8)
def _synthetic_arrays(
    n_samples: int, n_features: int, n_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    # make_classification needs 2**n_informative >= n_classes; 4 informative features cover 10.
    n_informative = max(4, n_features // 2)
    features, labels = sklearn.datasets.make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_informative,
        n_redundant=min(2, n_features - n_informative),
        n_classes=n_classes,
        n_clusters_per_class=1,
        random_state=seed,
    )
    return _read_only(features), _read_only(labels)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _make_bundle(
    name: str,
    task: Task,
    features: np.ndarray,
    targets: np.ndarray,
    split: SplitParams,
    *,
    standardize_features: bool,
) -> DatasetBundle:
    classification = task == "classification"
    n_classes = int(targets.max()) + 1 if classification else 1
    if split.max_samples is not None and split.max_samples < len(targets):
        keep = _subsample_indices(targets, split.max_samples, split.seed, classification)
        features, targets = features[keep], targets[keep]
    train_idx, val_idx = _split_indices(name, targets, split, classification)
    train_x, val_x = features[train_idx], features[val_idx]
    if standardize_features:
        train_x, val_x = _standardize(train_x, val_x)
    if classification:
        train_y = torch.as_tensor(targets[train_idx], dtype=torch.int64)
        val_y = torch.as_tensor(targets[val_idx], dtype=torch.int64)
    else:
        train_t, val_t = _standardize(targets[train_idx, None], targets[val_idx, None])
        train_y = torch.as_tensor(train_t, dtype=torch.float32)
        val_y = torch.as_tensor(val_t, dtype=torch.float32)
    return DatasetBundle(
        name=name,
        task=task,
        train=TensorDataset(torch.as_tensor(train_x, dtype=torch.float32), train_y),
        val=TensorDataset(torch.as_tensor(val_x, dtype=torch.float32), val_y),
        input_shape=tuple(features.shape[1:]),
        output_dim=n_classes,
    )


def _subsample_indices(targets: np.ndarray, size: int, seed: int, stratify: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if not stratify:
        return np.sort(rng.permutation(len(targets))[:size])
    # Largest-remainder rounding keeps each class within one sample of its exact share. Unlike
    # scikit-learn's stratified split, it needs no minimum for the samples left out.
    classes, counts = np.unique(targets, return_counts=True)
    exact_quota = counts * size / len(targets)
    quota = np.floor(exact_quota).astype(np.int64)
    by_remainder = np.argsort(quota - exact_quota, kind="stable")
    quota[by_remainder[: size - int(quota.sum())]] += 1
    picks = [
        rng.permutation(np.flatnonzero(targets == label))[:count]
        for label, count in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picks))


def _split_indices(
    name: str, targets: np.ndarray, split: SplitParams, stratify: bool
) -> tuple[np.ndarray, np.ndarray]:
    try:
        train_idx, val_idx = train_test_split(
            np.arange(len(targets)),
            test_size=split.val_fraction,
            random_state=split.seed,
            stratify=targets if stratify else None,
        )
    except ValueError as exc:
        raise InvalidInputError(
            f"cannot split dataset {name!r} with val_fraction={split.val_fraction} and "
            f"max_samples={split.max_samples}: {exc}"
        ) from None
    return np.sort(train_idx), np.sort(val_idx)


def _standardize(train: np.ndarray, val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shift and scale both parts by the train part's mean and (population) std."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant column stays constant instead of NaN
    return (train - mean) / std, (val - mean) / std
