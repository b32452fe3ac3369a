"""Tests of lrtune.registry and the built-in models and datasets it serves, on real data."""

from __future__ import annotations

import functools
import logging
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lrtune import datasets
from lrtune.datasets import DatasetBundle
from lrtune.exceptions import InvalidInputError, NotFoundError
from lrtune.params import MLPParams, SyntheticParams
from lrtune.registry import (
    RegistryError,
    UnknownNameError,
    build_model,
    dataset_names,
    dataset_params_schema,
    load_dataset,
    model_names,
    model_params_schema,
    register_dataset,
    register_model,
    reload_plugins,
    validate_dataset_params,
    validate_model_params,
)

PLUGIN_DIST = Path(__file__).parent / "plugin_dist"

# name -> (task, input_shape, output_dim, total samples)
DATASETS = {
    "digits": ("classification", (64,), 10, 1797),
    "breast_cancer": ("classification", (30,), 2, 569),
    "wine": ("classification", (13,), 3, 178),
    "diabetes": ("regression", (10,), 1, 442),
    "synthetic": ("classification", (20,), 2, 2000),
}
CLASSIFICATION = [name for name, spec in DATASETS.items() if spec[0] == "classification"]
STANDARDIZED = ["breast_cancer", "wine", "diabetes", "synthetic"]
MODEL_FITS = [(model, data) for model in ("logreg", "mlp") for data in DATASETS] + [
    ("cnn", "digits")
]


@functools.cache
def default_bundle(name: str) -> DatasetBundle:
    return load_dataset(name)


def split_tensors(bundle: DatasetBundle) -> list[torch.Tensor]:
    return [*bundle.train.tensors, *bundle.val.tensors]


def class_shares(labels: torch.Tensor, n_classes: int) -> np.ndarray:
    return np.bincount(labels.numpy(), minlength=n_classes) / len(labels)


# --- datasets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_builtin_dataset_has_its_task_shapes_and_classes(name: str) -> None:
    task, input_shape, output_dim, n_total = DATASETS[name]
    bundle = load_dataset(name)
    train_x, train_y, val_x, val_y = split_tensors(bundle)

    assert (bundle.name, bundle.task) == (name, task)
    assert (bundle.input_shape, bundle.output_dim) == (input_shape, output_dim)
    assert len(bundle.train) + len(bundle.val) == n_total
    assert len(bundle.val) == math.ceil(0.2 * n_total)
    assert train_x.dtype == val_x.dtype == torch.float32
    assert train_x.shape[1:] == val_x.shape[1:] == input_shape
    if task == "classification":
        assert train_y.dtype == val_y.dtype == torch.int64
        assert set(train_y.tolist()) == set(val_y.tolist()) == set(range(output_dim))
        assert (bundle.metric_name, bundle.metric_direction) == ("accuracy", "maximize")
        assert isinstance(bundle.loss_fn(), nn.CrossEntropyLoss)
    else:
        assert train_y.dtype == val_y.dtype == torch.float32
        assert train_y.shape == (len(bundle.train), 1)
        assert (bundle.metric_name, bundle.metric_direction) == ("mse", "minimize")
        assert isinstance(bundle.loss_fn(), nn.MSELoss)


@pytest.mark.parametrize("name", DATASETS)
def test_split_is_deterministic_for_a_seed_and_differs_across_seeds(name: str) -> None:
    first = split_tensors(load_dataset(name, {"seed": 1}))
    again = split_tensors(load_dataset(name, {"seed": 1}))
    other = split_tensors(load_dataset(name, {"seed": 2}))

    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_split_is_stratified(name: str) -> None:
    bundle = load_dataset(name, {"val_fraction": 0.3, "seed": 5})
    train_shares = class_shares(bundle.train.tensors[1], bundle.output_dim)
    val_shares = class_shares(bundle.val.tensors[1], bundle.output_dim)

    # One sample of rounding per class in the smallest split (wine's val split has 54).
    assert np.abs(train_shares - val_shares).max() < 2 / len(bundle.val)


def test_synthetic_params_shape_the_task() -> None:
    bundle = load_dataset("synthetic", {"n_samples": 600, "n_features": 8, "n_classes": 6})

    assert (bundle.input_shape, bundle.output_dim) == ((8,), 6)
    assert len(bundle.train) + len(bundle.val) == 600
    assert set(bundle.val.tensors[1].tolist()) == set(range(6))


@pytest.mark.parametrize("name", STANDARDIZED)
def test_features_are_standardized_with_train_statistics(name: str) -> None:
    train_x, _, val_x, _ = split_tensors(default_bundle(name))

    # Exactly zero mean and unit std on train is what train statistics give; statistics of the
    # whole dataset would leave the train mean visibly off zero, as the val mean is.
    assert torch.allclose(train_x.mean(dim=0), torch.zeros(train_x.shape[1]), atol=1e-5)
    assert torch.allclose(train_x.std(dim=0, correction=0), torch.ones(train_x.shape[1]), atol=1e-4)
    assert val_x.mean(dim=0).abs().max() > 1e-3


def test_diabetes_target_is_standardized_with_train_statistics() -> None:
    _, train_y, _, val_y = split_tensors(default_bundle("diabetes"))

    assert train_y.mean().abs() < 1e-5
    assert torch.isclose(train_y.std(correction=0), torch.tensor(1.0), atol=1e-5)
    assert val_y.mean().abs() > 1e-3


def test_digits_pixels_are_scaled_to_the_unit_interval() -> None:
    train_x, _, val_x, _ = split_tensors(default_bundle("digits"))
    pixels = torch.cat([train_x, val_x])

    assert pixels.min() == 0.0 and pixels.max() == 1.0
    assert torch.equal(pixels * 16, (pixels * 16).round())


def test_max_samples_caps_the_dataset_by_a_stratified_deterministic_subsample() -> None:
    bundle = load_dataset("digits", {"max_samples": 300, "seed": 3})
    again = load_dataset("digits", {"max_samples": 300, "seed": 3})

    assert len(bundle.train) + len(bundle.val) == 300
    assert all(
        torch.equal(a, b) for a, b in zip(split_tensors(bundle), split_tensors(again), strict=True)
    )
    full_shares = class_shares(default_bundle("digits").train.tensors[1], 10)
    capped = torch.cat([bundle.train.tensors[1], bundle.val.tensors[1]])
    assert np.abs(class_shares(capped, 10) - full_shares).max() < 0.01


def test_max_samples_above_the_dataset_size_keeps_everything() -> None:
    bundle = load_dataset("wine", {"max_samples": 10_000})

    assert all(
        torch.equal(a, b)
        for a, b in zip(split_tensors(bundle), split_tensors(default_bundle("wine")), strict=True)
    )


@pytest.mark.parametrize(
    ("name", "params", "named"),
    [
        ("digits", {"val_fraction": 0.95}, "val_fraction"),
        ("digits", {"val_fraction": 0}, "val_fraction"),
        ("wine", {"seed": "1"}, "seed"),
        ("wine", {"seed": -1}, "seed"),
        ("diabetes", {"max_samples": 5}, "max_samples"),
        ("breast_cancer", {"max_samples": 2.5}, "max_samples"),
        ("digits", {"bogus": 1}, "bogus"),
        ("synthetic", {"n_classes": 11}, "n_classes"),
        ("synthetic", {"n_samples": True}, "n_samples"),
        # 20 samples leave 2 for validation: too few to hold each of the 10 classes.
        ("digits", {"max_samples": 20, "val_fraction": 0.1}, "val_fraction"),
    ],
)
def test_bad_dataset_params_raise_value_error_naming_the_param(
    name: str, params: dict[str, object], named: str
) -> None:
    with pytest.raises(ValueError, match=named) as raised:
        load_dataset(name, params)

    assert "\n" not in str(raised.value)


def test_unknown_dataset_param_error_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"allowed params: val_fraction, seed, max_samples"):
        load_dataset("wine", {"val_frac": 0.3})


def test_raw_sklearn_arrays_are_loaded_once_per_process() -> None:
    load_dataset("breast_cancer", {"seed": 11})
    hits = datasets._sklearn_arrays.cache_info().hits
    load_dataset("breast_cancer", {"seed": 12})

    assert datasets._sklearn_arrays.cache_info().hits == hits + 1


# --- evaluation --------------------------------------------------------------------------------


def test_evaluate_runs_in_eval_mode_and_restores_each_module_mode() -> None:
    bundle = default_bundle("digits")
    model = build_model("mlp", bundle, {"dropout": 0.5, "batchnorm": True}, seed=0)
    model.train()
    model[2].eval()  # the first BatchNorm1d, to check that mixed modes come back as they were
    modes = [module.training for module in model.modules()]

    first = bundle.evaluate(model, batch_size=100)
    second = bundle.evaluate(model, device="cpu")

    assert [module.training for module in model.modules()] == modes
    assert first.keys() == {"loss", "accuracy"}
    # Dropout off and batch norm on running stats: batching and repetition change nothing.
    assert first == pytest.approx(second, rel=1e-5)
    assert 0.0 <= first["accuracy"] <= 1.0
    assert all(parameter.grad is None for parameter in model.parameters())


def test_evaluate_regression_reports_mse_equal_to_the_loss() -> None:
    bundle = default_bundle("diabetes")
    model = build_model("logreg", bundle, seed=0)

    result = bundle.evaluate(model, batch_size=7)
    with torch.no_grad():
        expected = nn.functional.mse_loss(model(bundle.val.tensors[0]), bundle.val.tensors[1])

    assert result["mse"] == pytest.approx(result["loss"])
    assert result["mse"] == pytest.approx(expected.item(), rel=1e-5)


def test_logreg_learns_digits() -> None:
    bundle = default_bundle("digits")
    model = build_model("logreg", bundle, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    loss_fn = bundle.loss_fn()
    loader = DataLoader(
        bundle.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    before = bundle.evaluate(model)

    for _ in range(5):
        for features, labels in loader:
            optimizer.zero_grad()
            loss_fn(model(features), labels).backward()
            optimizer.step()
    after = bundle.evaluate(model)

    assert after["accuracy"] > 0.85
    assert after["loss"] < before["loss"]


# --- models ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model_name", "dataset_name"), MODEL_FITS)
def test_model_builds_for_the_datasets_it_fits(model_name: str, dataset_name: str) -> None:
    bundle = default_bundle(dataset_name)
    model = build_model(model_name, bundle, seed=0)
    features, targets = bundle.train.tensors

    outputs = model(features[:7])

    assert outputs.shape == (7, bundle.output_dim)
    assert torch.isfinite(bundle.loss_fn()(outputs, targets[:7]))


@pytest.mark.parametrize("model_name", ["logreg", "mlp", "cnn"])
def test_same_seed_gives_identical_weights(model_name: str) -> None:
    bundle = default_bundle("digits")
    first = build_model(model_name, bundle, seed=7).state_dict()
    again = build_model(model_name, bundle, seed=7).state_dict()
    other = build_model(model_name, bundle, seed=8).state_dict()

    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_seeded_build_restores_the_global_rng() -> None:
    torch.manual_seed(123)
    build_model("mlp", ((64,), 10), seed=1)
    after_build = torch.rand(3)
    torch.manual_seed(123)

    assert torch.equal(after_build, torch.rand(3))


def test_cnn_takes_flat_or_image_shaped_input() -> None:
    flat = build_model("cnn", ((64,), 10), {"channels": [4, 8, 8], "batchnorm": True}, seed=0)
    image = build_model("cnn", ([1, 8, 8], 10), {"channels": [4, 8, 8], "batchnorm": True}, seed=0)
    pixels = torch.rand(5, 64)

    flat.eval()
    image.eval()
    assert isinstance(flat[0], nn.Unflatten)
    assert torch.allclose(flat(pixels), image(pixels.view(5, 1, 8, 8)))


@pytest.mark.parametrize("input_shape", [(30,), (1, 4, 4), (3, 8, 8), (64, 1), (8, 8)])
def test_cnn_rejects_input_that_is_not_an_8x8_image(input_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="8x8"):
        build_model("cnn", (input_shape, 10))


def test_cnn_rejects_a_tabular_dataset() -> None:
    with pytest.raises(ValueError, match=r"got \(13,\)"):
        build_model("cnn", default_bundle("wine"))


@pytest.mark.parametrize(
    ("name", "params", "named"),
    [
        ("mlp", {"hidden": [0]}, "hidden"),
        ("mlp", {"hidden": []}, "hidden"),
        ("mlp", {"hidden": 128}, "hidden"),
        ("mlp", {"hidden": [64, 10**6]}, "hidden"),
        ("mlp", {"dropout": 1.0}, "dropout"),
        ("mlp", {"activation": "swish"}, "activation"),
        ("mlp", {"batchnorm": "yes"}, "batchnorm"),
        ("mlp", {"width": 3}, "width"),
        ("cnn", {"channels": [8, 8, 8, 8]}, "channels"),
        ("cnn", {"dropout": -0.1}, "dropout"),
        ("logreg", {"hidden": [8]}, "hidden"),
    ],
)
def test_bad_model_params_raise_value_error_naming_the_param(
    name: str, params: dict[str, object], named: str
) -> None:
    with pytest.raises(ValueError, match=named) as raised:
        build_model(name, ((64,), 10), params)

    assert "allowed params" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_mlp_with_batchnorm_and_dropout_trains_a_step() -> None:
    bundle = default_bundle("digits")
    params = {"hidden": [32, 16], "batchnorm": True, "dropout": 0.2, "activation": "tanh"}
    model = build_model("mlp", bundle, params, seed=0)
    features, labels = (tensor[:64] for tensor in bundle.train.tensors)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    loss = bundle.loss_fn()(model(features), labels)
    loss.backward()
    optimizer.step()

    kinds = {type(module) for module in model.modules()}
    assert {nn.BatchNorm1d, nn.Dropout, nn.Tanh} <= kinds
    assert torch.isfinite(loss)
    assert all(not torch.equal(b, a) for b, a in zip(before, model.parameters(), strict=True))


# --- registry ----------------------------------------------------------------------------------


def test_names_list_the_builtins() -> None:
    assert {"logreg", "mlp", "cnn"} <= set(model_names())
    assert set(DATASETS) <= set(dataset_names())
    assert model_names() == sorted(model_names())


@pytest.mark.parametrize(
    "lookup", [lambda: build_model("resnet", ((4,), 2)), lambda: load_dataset("mnist")]
)
def test_unknown_name_raises_registry_error_listing_the_available_names(
    lookup: Callable[[], object],
) -> None:
    with pytest.raises(RegistryError, match=r"available: .*\b(mlp|digits)\b") as raised:
        lookup()

    assert isinstance(raised.value, UnknownNameError)
    assert isinstance(raised.value, NotFoundError) and isinstance(raised.value, LookupError)
    assert isinstance(raised.value, ValueError)  # what callers caught before the hierarchy
    assert "\n" not in str(raised.value)


def test_builtin_params_are_validated_without_building_anything() -> None:
    assert model_params_schema("mlp") is MLPParams
    assert dataset_params_schema("synthetic") is SyntheticParams
    validate_model_params("cnn", {"channels": [8], "batchnorm": True})
    validate_dataset_params("wine", None)
    with pytest.raises(InvalidInputError, match=r"hidden\.0"):
        validate_model_params("mlp", {"hidden": [0]})
    with pytest.raises(InvalidInputError, match="n_clases: unknown field"):
        validate_dataset_params("synthetic", {"n_clases": 3})
    with pytest.raises(UnknownNameError, match="resnet"):
        validate_model_params("resnet", {})


@pytest.mark.usefixtures("plugin_dist_on_path")
def test_a_plugins_params_are_left_to_its_factory() -> None:
    reload_plugins()

    assert model_params_schema("plugin_mlp") is None
    validate_model_params("plugin_mlp", {"width": 0})  # not checked here: the worker checks
    with pytest.raises(ValueError, match="width"):
        build_model("plugin_mlp", ((2,), 3), {"width": 0})


def test_the_factories_errors_are_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="depth"):
        build_model("mlp", ((64,), 10), {"depth": 3})
    with pytest.raises(InvalidInputError, match="val_fraction"):
        load_dataset("digits", {"val_fraction": 2.0})
    with pytest.raises(InvalidInputError, match="8x8"):
        build_model("cnn", ((13,), 3))


@pytest.fixture
def scratch_registrations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a test register factories without leaving them behind."""
    from lrtune import registry

    monkeypatch.setattr(registry._models, "_registered", dict(registry._models._registered))
    monkeypatch.setattr(registry._datasets, "_registered", dict(registry._datasets._registered))


@pytest.mark.usefixtures("scratch_registrations")
def test_register_model_and_dataset_make_them_available_by_name() -> None:
    @register_model("tiny")
    def tiny(input_shape: tuple[int, ...], output_dim: int, **params: object) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), output_dim))

    @register_dataset("wine_small")
    def wine_small(**params: object) -> DatasetBundle:
        return datasets.wine(max_samples=60, **params)

    bundle = load_dataset("wine_small", {"seed": 4})
    model = build_model("tiny", bundle, seed=0)

    assert "tiny" in model_names() and "wine_small" in dataset_names()
    assert len(bundle.train) + len(bundle.val) == 60
    assert model(bundle.val.tensors[0]).shape == (len(bundle.val), 3)


@pytest.mark.usefixtures("scratch_registrations")
def test_register_refuses_taken_and_malformed_names() -> None:
    with pytest.raises(RegistryError, match="already registered"):
        register_model("mlp")(lambda input_shape, output_dim: nn.Identity())
    with pytest.raises(RegistryError, match="invalid model name"):
        register_model("my model!")
    with pytest.raises(RegistryError, match="invalid dataset name"):
        register_dataset("")


@pytest.mark.usefixtures("scratch_registrations")
def test_factory_returning_the_wrong_type_is_a_registry_error() -> None:
    register_model("not_a_module")(lambda input_shape, output_dim: "model")
    register_dataset("not_a_bundle")(lambda: (None, None))

    with pytest.raises(RegistryError, match=r"not a torch\.nn\.Module"):
        build_model("not_a_module", ((4,), 2))
    with pytest.raises(RegistryError, match="not a DatasetBundle"):
        load_dataset("not_a_bundle")


@pytest.mark.parametrize(
    "call",
    [
        lambda: build_model("mlp", ((64,), 10), ["hidden"]),
        lambda: load_dataset("digits", {1: 0.2}),
        lambda: build_model("mlp", ((0,), 10)),
        lambda: build_model("mlp", ((64,), 0)),
        lambda: build_model("mlp", (64, 10)),
        lambda: build_model("mlp", ((64,), 10), seed=-1),
        lambda: build_model("mlp", ((64,), 10), seed=1.5),
    ],
)
def test_malformed_params_shapes_and_seeds_raise_value_error(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()


# --- entry-point plugins -----------------------------------------------------------------------


@pytest.fixture
def plugin_dist_on_path() -> Iterator[None]:
    """Put the test plugin's distribution on sys.path; forget it and its plugins afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(PLUGIN_DIST))
        yield
    sys.modules.pop("lrtune_test_plugin", None)
    reload_plugins()


@pytest.mark.usefixtures("plugin_dist_on_path")
def test_plugins_are_found_through_entry_points(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lrtune.registry"):
        reload_plugins()

    bundle = load_dataset("plugin_blobs", {"n_samples": 200})
    model = build_model("plugin_mlp", bundle, {"width": 8}, seed=0)
    assert {"plugin_mlp", "logreg", "mlp", "cnn"} <= set(model_names())
    assert "plugin_blobs" in dataset_names()
    assert model(bundle.val.tensors[0]).shape == (len(bundle.val), 3)
    assert set(bundle.evaluate(model)) == {"loss", "accuracy"}
    with pytest.raises(ValueError, match="width"):
        build_model("plugin_mlp", bundle, {"width": 0})


@pytest.mark.usefixtures("plugin_dist_on_path")
def test_clashing_plugins_are_skipped_and_broken_ones_fail_when_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="lrtune.registry"):
        reload_plugins()
        names = model_names()
        clash_warnings = registry_warnings(caplog)
        # Names come from the entry-point metadata: the broken plugin is listed until used.
        assert "broken" in names
        with pytest.raises(RegistryError, match="does_not_exist") as raised:
            build_model("broken", ((4,), 2))

    assert not isinstance(raised.value, LookupError)  # the name exists; its code does not
    assert any("'mlp'" in message and "already taken" in message for message in clash_warnings)
    assert any("'broken'" in m and "does_not_exist" in m for m in registry_warnings(caplog))
    # The built-in mlp kept its name: default hidden width 128, not the plugin's 16.
    assert build_model("mlp", ((64,), 10))[1].out_features == 128
    assert len(load_dataset("digits").val) == 360


def registry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "lrtune.registry"]


def test_plugins_are_forgotten_once_their_distribution_leaves_the_path() -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(PLUGIN_DIST))
        reload_plugins()
        assert "plugin_mlp" in model_names()
    sys.modules.pop("lrtune_test_plugin", None)
    reload_plugins()

    assert "plugin_mlp" not in model_names()
    assert "plugin_blobs" not in dataset_names()
    with pytest.raises(RegistryError, match="plugin_blobs"):
        load_dataset("plugin_blobs")
