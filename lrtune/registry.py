"""The registry of model and dataset factories: the one way lrtune creates models and datasets.

A model or dataset is named by its registry name plus params that are plain JSON values, which
the factory validates; nothing a user sends is ever executed. That lets the HTTP service accept
``{"model": "mlp", "params": {"hidden": [64]}}`` from anyone.

Example:
    >>> from lrtune.registry import build_model, load_dataset, model_names
    >>> from lrtune.registry import dataset_shapes, validate_model_params
    >>> {"logreg", "mlp", "cnn", "sequential"} <= set(model_names())
    True
    >>> bundle = load_dataset("digits", {"val_fraction": 0.25, "seed": 3})
    >>> model = build_model("mlp", bundle, {"hidden": [64], "dropout": 0.1}, seed=0)
    >>> sorted(bundle.evaluate(model))
    ['accuracy', 'loss']
    >>> layers = [{"type": "linear", "out_features": 3}]
    >>> validate_model_params("sequential", {"layers": layers}, dataset_shapes("wine"))
    >>> validate_model_params("sequential", {"layers": layers}, dataset_shapes("digits"))
    Traceback (most recent call last):
    ...
    lrtune.sequential.LayerShapeError: invalid params for model 'sequential': layers: the last \
layer outputs (3,), but the dataset needs (10,) (its output_dim): end with {"type": "linear", \
"out_features": 10}
    >>> build_model("resnet", bundle)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lrtune.registry.UnknownNameError: unknown model 'resnet'; available: cnn, logreg, mlp...

Operators extend the registry on the worker side with Python entry points, declared in the
metadata of an installed package (``pyproject.toml`` shown)::

    [project.entry-points."lrtune.models"]
    my_resnet = "my_package.models:make_resnet"    # (input_shape, output_dim, **params)

    [project.entry-points."lrtune.datasets"]
    my_images = "my_package.data:load_images"      # (**params) -> DatasetBundle

Names come without importing anything heavy: the built-ins' from this module, the plugins' from
their entry-point metadata (read on the first lookup, and again on :func:`reload_plugins`). So
:func:`model_names`, :func:`model_params_schema` and :func:`validate_model_params` (and their
dataset twins) work in a process without torch; given a dataset's shapes (:func:`dataset_shapes`
for the built-ins), :func:`validate_model_params` also checks a ``sequential`` model's layers
against them. A factory is imported when it is first used; a plugin that fails to import then
raises :class:`RegistryError` (and logs a warning), and one whose name is malformed or already
in use is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from lrtune.exceptions import InvalidInputError, NotFoundError
from lrtune.params import (
    DATASET_PARAMS,
    MAX_SEED,
    MODEL_PARAMS,
    CNNParams,
    FactoryParams,
    SequentialParams,
    SyntheticParams,
    parse_params,
)

if TYPE_CHECKING:
    from torch import nn

    from lrtune.datasets import DatasetBundle

MODEL_ENTRY_POINT_GROUP = "lrtune.models"
DATASET_ENTRY_POINT_GROUP = "lrtune.datasets"

ModelFactory = Callable[..., "nn.Module"]
DatasetFactory = Callable[..., "DatasetBundle"]
FactoryT = TypeVar("FactoryT", bound=Callable[..., Any])

_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_logger = logging.getLogger(__name__)


class RegistryError(InvalidInputError):
    """A malformed name, a name registered twice, a plugin that cannot be loaded, or a factory
    that broke its contract. A ``ValueError``."""


class UnknownNameError(RegistryError, NotFoundError):
    """No model or dataset is available under the name asked for (also a ``LookupError``)."""


class _Registry(Generic[FactoryT]):
    """The factories of one kind: built-ins, those registered in-process, and entry points.

    Names are known without importing any factory: built-ins are ``"module:attribute"``
    references and plugins are read from their distributions' entry-point metadata. A factory
    is imported on its first :meth:`get` (that is where torch gets imported).
    """

    def __init__(self, kind: str, group: str, builtins: Mapping[str, str]) -> None:
        self.kind = kind
        self.group = group
        self._builtins = dict(builtins)
        self._registered: dict[str, FactoryT] = {}
        self._loaded: dict[str, FactoryT] = {}  # built-ins and plugins imported so far
        self._entry_points: dict[str, importlib.metadata.EntryPoint] | None = None
        # Reentrant: a plugin module may register factories while it is being imported.
        self._lock = threading.RLock()

    def register(self, name: str) -> Callable[[FactoryT], FactoryT]:
        self._check_name(name)

        def decorator(factory: FactoryT) -> FactoryT:
            with self._lock:
                taken = (
                    name in self._builtins
                    or name in self._plugin_entry_points()
                    or self._registered.get(name, factory) is not factory
                )
                if taken:
                    raise RegistryError(f"{self.kind} name {name!r} is already registered")
                self._registered[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted({*self._builtins, *self._registered, *self._plugin_entry_points()})

    def is_builtin(self, name: str) -> bool:
        return name in self._builtins

    def check_known(self, name: str) -> None:
        if not isinstance(name, str) or name not in self.names():
            available = ", ".join(self.names())
            raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {available}")

    def get(self, name: str) -> FactoryT:
        self.check_known(name)
        with self._lock:
            if name in self._registered:
                return self._registered[name]
            if name not in self._loaded:
                self._loaded[name] = self._load(name)
            return self._loaded[name]

    def reload_plugins(self) -> None:
        with self._lock:
            for name in self._entry_points or {}:
                self._loaded.pop(name, None)
            self._entry_points = None
            self._plugin_entry_points()

    def _load(self, name: str) -> FactoryT:
        if name in self._builtins:
            module_name, _, attribute = self._builtins[name].partition(":")
            return getattr(importlib.import_module(module_name), attribute)
        entry_point = self._plugin_entry_points()[name]
        try:
            factory = entry_point.load()
        except Exception as exc:  # a broken plugin must fail its own jobs, not the process
            _logger.warning(
                "cannot load %s plugin %r (entry point %r in group %r): %s: %s",
                self.kind,
                name,
                entry_point.value,
                self.group,
                type(exc).__name__,
                exc,
            )
            raise RegistryError(
                f"{self.kind} plugin {name!r} ({entry_point.value}) cannot be loaded: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not callable(factory):
            raise RegistryError(f"{self.kind} plugin {name!r}: {entry_point.value} is not callable")
        return factory

    def _plugin_entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        with self._lock:
            if self._entry_points is None:
                self._entry_points = self._discover_plugins()
            return self._entry_points

    def _discover_plugins(self) -> dict[str, importlib.metadata.EntryPoint]:
        """Read the entry points' names from metadata, importing none of them."""
        found: dict[str, importlib.metadata.EntryPoint] = {}
        for entry_point in importlib.metadata.entry_points(group=self.group):
            name = entry_point.name
            problem = None
            if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
                problem = "invalid name"
            elif name in self._builtins or name in self._registered or name in found:
                problem = f"{self.kind} name {name!r} is already taken"
            if problem is None:
                found[name] = entry_point
                continue
            _logger.warning(
                "skipping %s plugin %r (entry point %r in group %r): %s",
                self.kind,
                name,
                entry_point.value,
                self.group,
                problem,
            )
        return found

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
            raise RegistryError(
                f"invalid {self.kind} name {name!r}: use up to 64 letters, digits, '_', '.' or "
                "'-', starting with a letter or digit"
            )


_models: _Registry[ModelFactory] = _Registry(
    "model",
    MODEL_ENTRY_POINT_GROUP,
    {name: f"lrtune.models:{name}" for name in MODEL_PARAMS},
)
_datasets: _Registry[DatasetFactory] = _Registry(
    "dataset",
    DATASET_ENTRY_POINT_GROUP,
    {name: f"lrtune.datasets:{name}" for name in DATASET_PARAMS},
)


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory(input_shape, output_dim, **params) -> nn.Module``.

    The factory must validate its params and raise :class:`ValueError` for bad ones
    (:func:`lrtune.params.parse_params` raises the right one).

    Raises:
        RegistryError: the name is invalid or already taken by another factory.
    """
    return _models.register(name)


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator registering ``factory(**params) -> DatasetBundle``.

    The factory must validate its params and raise :class:`ValueError` for bad ones
    (:func:`lrtune.params.parse_params` raises the right one).

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


def model_params_schema(name: str) -> type[FactoryParams] | None:
    """The pydantic model of a built-in model's params; ``None`` for a plugin's.

    Reading it imports neither torch nor the factory. A plugin's params are validated by its
    factory, where the plugin is installed.

    Raises:
        UnknownNameError: no model is available under ``name``.
    """
    _models.check_known(name)
    return MODEL_PARAMS.get(name) if _models.is_builtin(name) else None


def dataset_params_schema(name: str) -> type[FactoryParams] | None:
    """The pydantic model of a built-in dataset's params; ``None`` for a plugin's.

    Raises:
        UnknownNameError: no dataset is available under ``name``.
    """
    _datasets.check_known(name)
    return DATASET_PARAMS.get(name) if _datasets.is_builtin(name) else None


def validate_model_params(
    name: str,
    params: Mapping[str, Any] | None,
    shapes: tuple[tuple[int, ...], int] | None = None,
) -> None:
    """Check that ``name`` is a model and, for a built-in, that ``params`` fit it; no torch.

    With ``shapes`` (one sample's input shape and the output dimension, as
    :func:`dataset_shapes` gives them), a built-in whose params depend on the shapes
    (``sequential``) is also checked against them: each layer's shape and the parameter cap.

    Raises:
        UnknownNameError: no model is available under ``name``.
        InvalidInputError: the params are not a JSON object, or do not fit the built-in, or its
            layers do not fit ``shapes`` (:class:`~lrtune.sequential.LayerShapeError`, whose
            ``loc`` is the bad field's path inside the params).
    """
    schema = model_params_schema(name)
    parsed = _validate_params(schema, "model", name, params)
    if shapes is not None and isinstance(parsed, SequentialParams):
        input_shape, output_dim = shapes
        parsed.check_shapes(tuple(input_shape), output_dim)
    if shapes is not None and isinstance(parsed, CNNParams):
        parsed.check_shapes(tuple(shapes[0]))


def check_token_range(
    model_name: str,
    model_params: Mapping[str, Any] | None,
    max_input_value: float | None,
    min_input_value: float | None = None,
    integer_valued: bool | None = None,
) -> None:
    """Check that a model's embeddings can take the data's values as token ids; no torch.

    For an uploaded dataset, pass its stored range (:class:`lrtune.jobs.DatasetUpload`'s
    ``x_max``, ``x_min`` and ``x_integral``); ``None`` (an upload stored before lrtune kept
    them) is not checked. Only a built-in ``sequential`` model whose input reaches an
    ``embedding`` unchanged is checked (:func:`lrtune.sequential.check_token_ids`): every
    other model takes any values, and a plugin's params (or a name no one registered) are
    not this check's to judge. Call it after
    :func:`validate_model_params`, which says what is wrong with params that do not parse.

    Raises:
        InvalidInputError: a :class:`~lrtune.sequential.LayerShapeError`: the largest value is
            ``num_embeddings`` or more (``loc`` ``("layers", i, "embedding",
            "num_embeddings")``, the path inside the params; the message says the largest
            token id, the vocabulary and the ``num_embeddings`` that fits), or a value is
            negative or fractional (``loc`` the embedding layer's path).

    Example:
        >>> params = {"layers": [
        ...     {"type": "embedding", "num_embeddings": 1000, "embedding_dim": 16},
        ...     {"type": "sequence_pool"},
        ...     {"type": "linear", "out_features": 2},
        ... ]}
        >>> check_token_range("sequential", params, 999.0, 0.0, True)  # ids 0..999 fit
        >>> try:
        ...     check_token_range("sequential", params, 1500.0)
        ... except InvalidInputError as exc:
        ...     print(exc.loc)
        ...     print(exc)
        ('layers', 0, 'embedding', 'num_embeddings')
        invalid params for model 'sequential': layers.0.embedding.num_embeddings=1000: the \
data's largest token id is 1500, outside the vocabulary's ids 0..999: set num_embeddings to at \
least 1501, or map the data's ids below 1000
    """
    builtin = isinstance(model_name, str) and _models.is_builtin(model_name)
    schema = MODEL_PARAMS.get(model_name) if builtin else None
    if max_input_value is None or schema is not SequentialParams:
        return
    parsed = _validate_params(schema, "model", model_name, model_params)
    assert isinstance(parsed, SequentialParams)
    parsed.check_token_ids(max_input_value, min_input_value, integer_valued)


def validate_dataset_params(name: str, params: Mapping[str, Any] | None) -> None:
    """Check that ``name`` is a dataset and, for a built-in, that ``params`` fit it; no torch.

    Raises:
        UnknownNameError: no dataset is available under ``name``.
        InvalidInputError: the params are not a JSON object, or do not fit the built-in.
    """
    _validate_params(dataset_params_schema(name), "dataset", name, params)


def _validate_params(
    schema: type[FactoryParams] | None, kind: str, name: str, params: Mapping[str, Any] | None
) -> FactoryParams | None:
    checked = _checked_params(params)
    return None if schema is None else parse_params(schema, checked, f"{kind} {name!r}")


# One sample's input shape and the output dimension of the built-in datasets (``synthetic``'s
# come from its params); tests/test_sequential.py checks them against the loaded bundles.
_BUILTIN_DATASET_SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "digits": ((64,), 10),
    "breast_cancer": ((30,), 2),
    "wine": ((13,), 3),
    "diabetes": ((10,), 1),
}


def dataset_shapes(
    name: str, params: Mapping[str, Any] | None = None
) -> tuple[tuple[int, ...], int] | None:
    """One sample's input shape and the output dimension of a built-in dataset, without
    loading it (no torch, no scikit-learn); ``None`` for a plugin's, known only once loaded.

    Raises:
        UnknownNameError: no dataset is available under ``name``.
        InvalidInputError: the params do not fit the built-in.
    """
    parsed = _validate_params(dataset_params_schema(name), "dataset", name, params)
    if isinstance(parsed, SyntheticParams):
        return (parsed.n_features,), parsed.n_classes
    return _BUILTIN_DATASET_SHAPES.get(name) if _datasets.is_builtin(name) else None


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
        UnknownNameError: ``name`` is unknown (a :class:`RegistryError`).
        RegistryError: the plugin cannot be loaded, or the factory returned something else
            than a :class:`torch.nn.Module`.
        InvalidInputError: the params, shapes or seed are invalid (plugins may raise a plain
            ``ValueError``).
    """
    from torch import nn

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
        UnknownNameError: ``name`` is unknown (a :class:`RegistryError`).
        RegistryError: the plugin cannot be loaded, or the factory returned something else
            than a :class:`~lrtune.datasets.DatasetBundle`.
        InvalidInputError: the params are invalid (plugins may raise a plain ``ValueError``).
    """
    from lrtune.datasets import DatasetBundle

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
    from lrtune.datasets import DatasetBundle
    from lrtune.models import check_shapes

    if isinstance(bundle_or_shapes, DatasetBundle):
        return tuple(bundle_or_shapes.input_shape), bundle_or_shapes.output_dim
    try:
        raw_shape, output_dim = bundle_or_shapes
        input_shape = tuple(raw_shape)  # JSON gives the shape as a list
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"expected a DatasetBundle or (input_shape, output_dim), got {bundle_or_shapes!r}"
        ) from None
    check_shapes(input_shape, output_dim)
    return input_shape, output_dim


def _checked_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, Mapping) or not all(isinstance(key, str) for key in params):
        raise InvalidInputError(f"params must be a JSON object (string keys), got {params!r}")
    return dict(params)


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(f"seed must be an int in [0, {MAX_SEED}], got {seed!r}")
    import torch

    # Models are built on the CPU, so its generator is the only one construction draws from.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield
