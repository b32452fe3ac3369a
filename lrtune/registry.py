"""The registry of model and dataset factories: the one way lrtune creates models and datasets.

A model or dataset is named by its registry name plus params that are plain JSON values, which
the factory validates; nothing a user sends is ever executed. That lets the HTTP service accept
``{"model": "mlp", "params": {"hidden": [64]}}`` from anyone.

Example:
    >>> from lrtune.registry import build_model, load_dataset, model_names
    >>> {"logreg", "mlp", "cnn"} <= set(model_names())
    True
    >>> bundle = load_dataset("digits", {"val_fraction": 0.25, "seed": 3})
    >>> model = build_model("mlp", bundle, {"hidden": [64], "dropout": 0.1}, seed=0)
    >>> sorted(bundle.evaluate(model))
    ['accuracy', 'loss']
    >>> build_model("resnet", bundle)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lrtune.registry.RegistryError: unknown model 'resnet'; available: cnn, logreg, mlp...

Operators extend the registry on the worker side with Python entry points, declared in the
metadata of an installed package (``pyproject.toml`` shown)::

    [project.entry-points."lrtune.models"]
    my_resnet = "my_package.models:make_resnet"    # (input_shape, output_dim, **params)

    [project.entry-points."lrtune.datasets"]
    my_images = "my_package.data:load_images"      # (**params) -> DatasetBundle

Entry points are read on the first lookup, and again on :func:`reload_plugins`. A plugin that
fails to load, or that takes a name already in use, is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from lrtune import datasets, models
from lrtune.datasets import DatasetBundle

MODEL_ENTRY_POINT_GROUP = "lrtune.models"
DATASET_ENTRY_POINT_GROUP = "lrtune.datasets"

ModelFactory = Callable[..., nn.Module]
DatasetFactory = Callable[..., DatasetBundle]
FactoryT = TypeVar("FactoryT", bound=Callable[..., Any])

_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MAX_SEED = 2**64 - 1

_logger = logging.getLogger(__name__)


class RegistryError(ValueError):
    """An unknown name, a name registered twice, or a factory that broke its contract."""


class _Registry(Generic[FactoryT]):
    """The factories of one kind: those registered in-process, then those from entry points."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._registered: dict[str, FactoryT] = {}
        self._plugins: dict[str, FactoryT] | None = None  # None until the first lookup
        # Reentrant: a plugin module may register factories while it is being imported.
        self._lock = threading.RLock()

    def register(self, name: str) -> Callable[[FactoryT], FactoryT]:
        self._check_name(name)

        def decorator(factory: FactoryT) -> FactoryT:
            with self._lock:
                taken = self._registered.get(name) or (self._plugins or {}).get(name)
                if taken is not None and taken is not factory:
                    raise RegistryError(f"{self.kind} name {name!r} is already registered")
                self._registered[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        plugins = self._loaded_plugins()
        return sorted({*self._registered, *plugins})

    def get(self, name: str) -> FactoryT:
        plugins = self._loaded_plugins()
        factory = (
            (self._registered.get(name) or plugins.get(name)) if isinstance(name, str) else None
        )
        if factory is None:
            available = ", ".join(self.names())
            raise RegistryError(f"unknown {self.kind} {name!r}; available: {available}")
        return factory

    def reload_plugins(self) -> None:
        with self._lock:
            self._plugins = None
            self._loaded_plugins()

    def _loaded_plugins(self) -> dict[str, FactoryT]:
        with self._lock:
            if self._plugins is None:
                self._plugins = self._discover_plugins()
            return self._plugins

    def _discover_plugins(self) -> dict[str, FactoryT]:
        found: dict[str, FactoryT] = {}
        for entry_point in importlib.metadata.entry_points(group=self.group):
            try:
                found[entry_point.name] = self._load_plugin(entry_point, found)
            except Exception as exc:  # a broken plugin must not take the built-ins down with it
                _logger.warning(
                    "skipping %s plugin %r (entry point %r in group %r): %s: %s",
                    self.kind,
                    entry_point.name,
                    entry_point.value,
                    self.group,
                    type(exc).__name__,
                    exc,
                )
        return found

    def _load_plugin(
        self, entry_point: importlib.metadata.EntryPoint, found: Mapping[str, FactoryT]
    ) -> FactoryT:
        self._check_name(entry_point.name)
        if entry_point.name in self._registered or entry_point.name in found:
            raise RegistryError(f"{self.kind} name {entry_point.name!r} is already taken")
        factory = entry_point.load()
        if not callable(factory):
            raise RegistryError(f"{entry_point.value} is not callable")
        return factory

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
            raise RegistryError(
                f"invalid {self.kind} name {name!r}: use up to 64 letters, digits, '_', '.' or "
                "'-', starting with a letter or digit"
            )


_models: _Registry[ModelFactory] = _Registry("model", MODEL_ENTRY_POINT_GROUP)
_datasets: _Registry[DatasetFactory] = _Registry("dataset", DATASET_ENTRY_POINT_GROUP)


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory(input_shape, output_dim, **params) -> nn.Module``.

    The factory must validate its params and raise :class:`ValueError` for bad ones.

    Raises:
        RegistryError: the name is invalid or already taken by another factory.
    """
    return _models.register(name)


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator registering ``factory(**params) -> DatasetBundle``.

    The factory must validate its params and raise :class:`ValueError` for bad ones.

    Raises:
        RegistryError: the name is invalid or already taken by another factory.
    """
    return _datasets.register(name)


def model_names() -> list[str]:
    """Sorted names of every available model, plugins included."""
    return _models.names()


def dataset_names() -> list[str]:
    """Sorted names of every available dataset, plugins included."""
    return _datasets.names()


def reload_plugins() -> None:
    """Forget the plugins found so far and read the entry points again, now.

    For operators who installed a plugin into a running worker, and for tests.
    """
    _models.reload_plugins()
    _datasets.reload_plugins()


def build_model(
    name: str,
    bundle_or_shapes: DatasetBundle | tuple[tuple[int, ...], int],
    params: Mapping[str, Any] | None = None,
    *,
    seed: int | None = None,
) -> nn.Module:
    """Build the model registered as ``name`` for a dataset or for ``(input_shape, output_dim)``.

    Args:
        name: A name from :func:`model_names`.
        bundle_or_shapes: The dataset the model is for, or its per-sample input shape and
            output dimension.
        params: JSON params for the factory; ``None`` for its defaults.
        seed: If given, the weights are drawn from torch's CPU generator seeded with it, and
            the generator's state is restored afterwards.

    Raises:
        RegistryError: ``name`` is unknown, or the factory returned something else than a
            :class:`torch.nn.Module`.
        ValueError: the params, shapes or seed are invalid.
    """
    factory = _models.get(name)
    input_shape, output_dim = _shapes_of(bundle_or_shapes)
    kwargs = _checked_params(params)
    with _seeded(seed):
        model = factory(input_shape, output_dim, **kwargs)
    if not isinstance(model, nn.Module):
        raise RegistryError(
            f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def load_dataset(name: str, params: Mapping[str, Any] | None = None) -> DatasetBundle:
    """Load the dataset registered as ``name``, with JSON ``params`` (``None`` for defaults).

    Raises:
        RegistryError: ``name`` is unknown, or the factory returned something else than a
            :class:`~lrtune.datasets.DatasetBundle`.
        ValueError: the params are invalid.
    """
    factory = _datasets.get(name)
    bundle = factory(**_checked_params(params))
    if not isinstance(bundle, DatasetBundle):
        raise RegistryError(
            f"dataset factory {name!r} returned {type(bundle).__name__}, not a DatasetBundle"
        )
    return bundle


def _shapes_of(
    bundle_or_shapes: DatasetBundle | tuple[tuple[int, ...], int],
) -> tuple[tuple[int, ...], int]:
    if isinstance(bundle_or_shapes, DatasetBundle):
        return tuple(bundle_or_shapes.input_shape), bundle_or_shapes.output_dim
    try:
        raw_shape, output_dim = bundle_or_shapes
        input_shape = tuple(raw_shape)  # JSON gives the shape as a list
    except (TypeError, ValueError):
        raise ValueError(
            f"expected a DatasetBundle or (input_shape, output_dim), got {bundle_or_shapes!r}"
        ) from None
    models.check_shapes(input_shape, output_dim)
    return input_shape, output_dim


def _checked_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping) or not all(isinstance(key, str) for key in params):
        raise ValueError(f"params must be a JSON object (string keys), got {params!r}")
    return dict(params)


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed!r}")
    # Models are built on the CPU, so its generator is the only one construction draws from.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


register_model("logreg")(models.logreg)
register_model("mlp")(models.mlp)
register_model("cnn")(models.cnn)

register_dataset("digits")(datasets.digits)
register_dataset("breast_cancer")(datasets.breast_cancer)
register_dataset("wine")(datasets.wine)
register_dataset("diabetes")(datasets.diabetes)
register_dataset("synthetic")(datasets.synthetic)
