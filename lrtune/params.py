"""The params schemas of the built-in models and datasets, readable without torch or scikit-learn.

A job names a registry factory and gives it plain JSON params; each built-in factory checks them
against one pydantic model here. Keeping the schemas apart from the factories lets a process
that never trains (the HTTP API, ``lrtune list``) validate params and publish their JSON schemas
without importing torch. Plugins subclass :class:`FactoryParams` the same way.

Example:
    >>> from lrtune.params import MLPParams, parse_params
    >>> parse_params(MLPParams, {"hidden": [64, 32]}, "model 'mlp'").hidden
    [64, 32]
    >>> parse_params(MLPParams, {"depth": 3}, "model 'mlp'")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lrtune.exceptions.InvalidInputError: invalid params for model 'mlp': depth: unknown field ...
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lrtune.exceptions import InvalidInputError, describe_validation_error
from lrtune.sequential import MAX_LAYERS, Layer, check_structure, check_token_ids, plan_layers

MAX_SEED = 2**31 - 1
"""The largest seed lrtune takes anywhere (job, dataset split, model init): every RNG accepts it."""
# Bounds keep a request to the service from asking for a model that exhausts memory.
MAX_WIDTH = 4096
MAX_HIDDEN_LAYERS = 8
MAX_CHANNELS = 512


class FactoryParams(BaseModel):
    """Base of the params models of model and dataset factories.

    Strict, so that JSON's ``"1"`` or ``true`` is never taken for the integer 1, and closed, so
    that a misspelt param is an error instead of being silently ignored.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


ParamsT = TypeVar("ParamsT", bound=FactoryParams)


def parse_params(schema: type[ParamsT], params: Mapping[str, Any], owner: str) -> ParamsT:
    """Validate ``params`` against ``schema``, turning pydantic's report into a one-line error.

    Raises:
        InvalidInputError: (a ``ValueError``) a param is unknown, of the wrong type or out of
            range. The message names ``owner`` (e.g. ``"model 'mlp'"``), each bad param, and
            the allowed params.
    """
    try:
        return schema.model_validate(dict(params))
    except ValidationError as exc:
        allowed = ", ".join(schema.model_fields) or "none"
        problems = describe_validation_error(exc)
        raise InvalidInputError(
            f"invalid params for {owner}: {problems} (allowed params: {allowed})"
        ) from None


# --- models ------------------------------------------------------------------------------------

Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Channels = Annotated[int, Field(ge=1, le=MAX_CHANNELS)]
Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]


class LogRegParams(FactoryParams):
    """``logreg`` takes no params."""


class MLPParams(FactoryParams):
    """Params of the ``mlp`` model."""

    hidden: list[Width] = Field(default=[128], min_length=1, max_length=MAX_HIDDEN_LAYERS)
    batchnorm: bool = False
    dropout: Dropout = 0.0
    activation: Literal["relu", "gelu", "tanh"] = "relu"


class CNNParams(FactoryParams):
    """Params of the ``cnn`` model."""

    # Each block halves the 8x8 image, so three blocks bring it down to 1x1.
    channels: list[Channels] = Field(default=[16, 32], min_length=1, max_length=3)
    batchnorm: bool = False
    dropout: Dropout = 0.0

    def check_shapes(self, input_shape: tuple[int, ...]) -> None:
        """Refuse an input that is not an 8x8 single-channel image, flat or not.

        Raises:
            InvalidInputError: ``input_shape`` is neither ``(64,)`` nor ``(1, 8, 8)``.
        """
        if tuple(input_shape) not in ((64,), (1, 8, 8)):
            raise InvalidInputError(
                "model 'cnn' needs 8x8 single-channel images: input_shape (64,) or (1, 8, 8), "
                f"got {tuple(input_shape)}; use sequential with conv layers for other shapes"
            )


class SequentialParams(FactoryParams):
    """Params of the ``sequential`` model: its layers, as :mod:`lrtune.sequential` describes.

    Validating them checks each layer's fields and the caps on layer count and nesting; the
    shapes need the dataset's input shape: :meth:`check_shapes`.
    """

    layers: list[Layer] = Field(min_length=1, max_length=MAX_LAYERS)

    @field_validator("layers")
    @classmethod
    def _within_caps(cls, layers: list[Layer]) -> list[Layer]:
        check_structure(layers)
        return layers

    def check_shapes(self, input_shape: tuple[int, ...], output_dim: int) -> None:
        """Raise :class:`~lrtune.sequential.LayerShapeError` (an ``InvalidInputError``) unless
        the layers fit ``input_shape`` and end in ``(output_dim,)`` within the caps."""
        plan_layers(self, input_shape, output_dim)

    def check_token_ids(
        self, max_value: float, min_value: float | None = None, integral: bool | None = None
    ) -> None:
        """Raise :class:`~lrtune.sequential.LayerShapeError` if an ``embedding`` fed the
        input would get ids outside its vocabulary (:func:`lrtune.sequential.check_token_ids`)."""
        check_token_ids(self.layers, max_value, min_value, integral)


# --- datasets ----------------------------------------------------------------------------------


class SplitParams(FactoryParams):
    """Params every built-in dataset takes."""

    val_fraction: float = Field(0.2, gt=0.0, lt=0.9)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    max_samples: int | None = Field(None, ge=10)

    def check_split(self, n_samples: int, n_classes: int | None) -> None:
        """Refuse a split that cannot be stratified: each part needs a sample of every class
        (scikit-learn's rule: ``ceil(val_fraction * n)`` validation samples, the rest train).

        Raises:
            InvalidInputError: a part of the split holds fewer samples than there are classes.
        """
        if not n_classes:
            return
        n = n_samples if self.max_samples is None else min(self.max_samples, n_samples)
        n_val = math.ceil(self.val_fraction * n)
        n_train = n - n_val
        if min(n_val, n_train) < n_classes:
            raise InvalidInputError(
                f"val_fraction={self.val_fraction} splits {n} samples into {n_train} train and "
                f"{n_val} validation samples, and a stratified split needs at least one of each "
                f"of the {n_classes} classes in each part: change val_fraction or max_samples"
            )


class SyntheticParams(SplitParams):
    """Params of the ``synthetic`` dataset; ``seed`` also seeds the data generation."""

    # Bounded so that a request to the service cannot ask for gigabytes.
    n_samples: int = Field(2000, ge=50, le=100_000)
    n_features: int = Field(20, ge=4, le=200)
    n_classes: int = Field(2, ge=2, le=10)


class UploadedParams(SplitParams):
    """Params of the ``uploaded`` dataset: a dataset uploaded to the job store, by its id.

    ``standardize``: shift and scale each feature by the train split's statistics; by default
    (null) only ``(n, F)`` features that are not all whole numbers (integer token ids and
    images are left as uploaded).
    """

    id: str = Field(pattern=r"^[0-9a-f]{64}$", description="the upload's id (SHA-256 hex)")
    standardize: bool | None = None


MODEL_PARAMS: dict[str, type[FactoryParams]] = {
    "logreg": LogRegParams,
    "mlp": MLPParams,
    "cnn": CNNParams,
    "sequential": SequentialParams,
}
DATASET_PARAMS: dict[str, type[FactoryParams]] = {
    "digits": SplitParams,
    "breast_cancer": SplitParams,
    "wine": SplitParams,
    "diabetes": SplitParams,
    "synthetic": SyntheticParams,
    "uploaded": UploadedParams,
}
