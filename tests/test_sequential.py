"""The ``sequential`` model: layers described as JSON, shapes checked without torch, real training.

The shape walk (:func:`lrtune.sequential.plan_layers`) is pure Python; every test that builds the
torch model checks that the walk's shapes and parameter counts are what torch produces.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from test_imports import heavy_modules_after
from torch import nn

import lrtune
from lrtune.cli import main
from lrtune.exceptions import InvalidInputError
from lrtune.params import SequentialParams
from lrtune.registry import (
    build_model,
    dataset_names,
    dataset_shapes,
    load_dataset,
    model_params_schema,
    validate_model_params,
)
from lrtune.schedules import parse_schedule
from lrtune.sequential import MAX_ACTIVATION, MAX_PARAMETERS, LayerShapeError, plan_layers
from lrtune.spec import JobSpec
from lrtune.training import TrainingSetup, train

REPO = Path(__file__).resolve().parents[1]
DIGITS = ((64,), 10)


def linear(n: int, **extra: Any) -> dict[str, Any]:
    return {"type": "linear", "out_features": n, **extra}


def layer(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


MLP_LAYERS = [layer("flatten"), linear(32), layer("relu"), linear(32), layer("relu"), linear(10)]
CNN_LAYERS = [
    layer("reshape", shape=[1, 8, 8]),
    layer("conv2d", out_channels=16, kernel_size=3, padding=1),
    layer("relu"),
    layer("maxpool", kernel_size=2),
    layer("conv2d", out_channels=32, kernel_size=3, padding=1),
    layer("relu"),
    layer("maxpool", kernel_size=2),
    layer("flatten"),
    linear(10),
]
# Digits' 8x8 image read as 8 time steps (rows) of 8 features.
GRU_LAYERS = [layer("reshape", shape=[8, 8]), layer("gru", hidden_size=32, pool="mean"), linear(10)]
TRANSFORMER_LAYERS = [
    layer("reshape", shape=[8, 8]),
    linear(16),
    layer("positional_embedding"),
    layer("transformer_encoder_layer", nhead=2, dim_feedforward=32, dropout=0.0),
    layer("sequence_pool", mode="mean"),
    linear(10),
]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_plan_against_torch(
    layers: list[dict[str, Any]], shapes: tuple[tuple[int, ...], int], x: torch.Tensor
) -> nn.Module:
    """Build the model; assert each top-level layer's output shape and parameter count are
    the ones the pure-Python walk predicted, and the output is ``(batch, output_dim)``."""
    plan = plan_layers(SequentialParams.model_validate({"layers": layers}), *shapes)
    model = build_model("sequential", shapes, {"layers": layers}, seed=0)
    assert n_params(model) == plan.n_params
    model.eval()
    with torch.no_grad():
        for module, step in zip(model, plan.steps, strict=True):
            assert n_params(module) == step.n_params, step.loc
            x = module(x)
            assert tuple(x.shape[1:]) == step.output_shape, step.loc
    assert tuple(x.shape) == (len(x), shapes[1])
    return model


# --- the built-in models, described declaratively -----------------------------------------------


@pytest.mark.parametrize(
    ("builtin", "params", "layers"),
    [
        ("mlp", {"hidden": [32, 32]}, MLP_LAYERS),
        ("cnn", {"channels": [16, 32]}, CNN_LAYERS),
    ],
)
def test_declared_mlp_and_cnn_are_the_builtins(builtin: str, params: dict, layers: list) -> None:
    reference = build_model(builtin, DIGITS, params, seed=3)
    check_plan_against_torch(layers, DIGITS, torch.rand(7, 64))
    declared = build_model("sequential", DIGITS, {"layers": layers}, seed=3)
    assert n_params(declared) == n_params(reference)
    x = torch.rand(5, 64)
    # Same modules created in the same order: the same seed gives the same weights.
    torch.testing.assert_close(declared(x), reference(x))


# --- sequence models, residual blocks, every layer type ----------------------------------------


def test_gru_with_mean_pooling_over_a_sequence() -> None:
    layers = [layer("gru", hidden_size=12, num_layers=2, dropout=0.1, pool="mean"), linear(3)]
    check_plan_against_torch(layers, ((20, 6), 3), torch.randn(4, 20, 6))


def test_bidirectional_lstm_last_state_is_both_directions_final_hidden_state() -> None:
    layers = [layer("lstm", hidden_size=5, bidirectional=True), linear(2)]
    model = check_plan_against_torch(layers, ((9, 4), 2), torch.randn(3, 9, 4))
    rnn = model[0].rnn
    x = torch.randn(3, 9, 4)
    outputs, _ = rnn(x)
    # Forward direction: its last step; backward direction: its last step is time 0.
    expected = torch.cat([outputs[:, -1, :5], outputs[:, 0, 5:]], dim=-1)
    torch.testing.assert_close(model[0](x), expected)


def test_small_transformer_over_integer_tokens() -> None:
    layers = [
        layer("embedding", num_embeddings=50, embedding_dim=16),
        layer("positional_embedding"),
        layer("transformer_encoder_layer", nhead=4),
        layer("transformer_encoder_layer", nhead=2, activation="gelu", norm_first=True),
        layer("layernorm"),
        layer("sequence_pool", mode="first"),
        linear(4),
    ]
    tokens = torch.randint(0, 50, (6, 12)).float()  # datasets hold float32 features
    check_plan_against_torch(layers, ((12,), 4), tokens)


def test_embedding_rejects_fractional_and_out_of_range_token_ids() -> None:
    layers = [layer("embedding", num_embeddings=10, embedding_dim=4), layer("flatten"), linear(2)]
    model = build_model("sequential", ((3,), 2), {"layers": layers})
    with pytest.raises(InvalidInputError, match="integer token ids"):
        model(torch.tensor([[0.5, 1.0, 2.0]]))
    with pytest.raises(InvalidInputError, match=r"outside \[0, 10\).*max 10"):
        model(torch.tensor([[0.0, 1.0, 10.0]]))


def test_residual_blocks_nest_and_add_their_input() -> None:
    block = [layer("layernorm"), linear(64), layer("gelu"), layer("dropout", p=0.2), linear(32)]
    layers = [
        linear(32),
        layer("residual", layers=[*block, layer("residual", layers=[layer("tanh")])]),
        layer("silu"),
        linear(10),
    ]
    model = check_plan_against_torch(layers, DIGITS, torch.randn(5, 64))
    model.eval()
    x = torch.randn(5, 32)
    torch.testing.assert_close(model[1](x), x + model[1].body(x))


def test_conv1d_batchnorm_pooling_layers_follow_the_input_rank() -> None:
    layers = [
        layer("reshape", shape=[4, 16]),
        layer("conv1d", out_channels=8, kernel_size=3, stride=2, padding=1),
        layer("batchnorm"),
        layer("maxpool", kernel_size=2),
        layer("avgpool", kernel_size=3, stride=1, padding=1),
        layer("global_pool", mode="max"),
        layer("batchnorm"),
        linear(10, bias=False),
    ]
    model = check_plan_against_torch(layers, DIGITS, torch.randn(5, 64))
    assert isinstance(model[2], nn.BatchNorm1d) and isinstance(model[3], nn.MaxPool1d)
    images = [
        layer("conv2d", out_channels=5, kernel_size=[3, 2], stride=[2, 1], padding=[1, 0]),
        layer("batchnorm"),
        layer("avgpool", kernel_size=[2, 3]),
        layer("global_pool"),
        linear(4),
    ]
    model = check_plan_against_torch(images, ((3, 9, 7), 4), torch.randn(2, 3, 9, 7))
    assert isinstance(model[1], nn.BatchNorm2d) and isinstance(model[2], nn.AvgPool2d)


# --- bad layers: rejected before any torch module is built, with the field's path --------------


BAD_LAYERS = [
    pytest.param(
        [layer("conv2d", out_channels=8, kernel_size=3), layer("flatten"), linear(10)],
        ("layers", 0, "conv2d"),
        r'expects a \(C, H, W\) input, got \(64,\): add \{"type": "reshape", "shape": \[1, 8, 8\]',
        id="conv2d-on-flat-input",
    ),
    pytest.param(
        [*CNN_LAYERS[:4], layer("conv2d", out_channels=8, kernel_size=5), layer("flatten")],
        ("layers", 4, "conv2d", "kernel_size"),
        r"kernel_size 5x5 is larger than the input's 4x4 \(padding 0x0\)",
        id="kernel-larger-than-image",
    ),
    pytest.param(
        [layer("reshape", shape=[1, 8, 9]), layer("flatten"), linear(10)],
        ("layers", 0, "reshape", "shape"),
        r"reshape to \(1, 8, 9\) needs 72 values, the input \(64,\) has 64",
        id="reshape-element-count",
    ),
    pytest.param(
        [linear(32)],
        ("layers",),
        r'outputs \(32,\), but the dataset needs \(10,\).*end with \{"type": "linear", '
        r'"out_features": 10\}',
        id="last-layer-not-output-dim",
    ),
    pytest.param(
        [layer("reshape", shape=[8, 8]), layer("gru", hidden_size=4, pool="none")],
        ("layers",),
        r"outputs \(8, 4\).*reduce it with flatten or sequence_pool",
        id="sequence-left-unpooled",
    ),
    pytest.param(
        [layer("lstm", hidden_size=8), linear(10)],
        ("layers", 0, "lstm"),
        r"lstm expects a \(T, F\) \(time steps, features\) input, got \(64,\): add "
        r'\{"type": "reshape", "shape": \[64, 1\]\}',
        id="rnn-on-flat-input",
    ),
    pytest.param(
        [layer("reshape", shape=[8, 8]), layer("transformer_encoder_layer", nhead=3)],
        ("layers", 1, "transformer_encoder_layer", "nhead"),
        r"d_model 8 \(the input's last size\) is not divisible by nhead 3",
        id="heads-do-not-divide-d-model",
    ),
    pytest.param(
        [layer("residual", layers=[linear(32)]), linear(10)],
        ("layers", 0, "residual", "layers"),
        r"must keep its input's shape, but its layers turn \(64,\) into \(32,\)",
        id="residual-changes-shape",
    ),
    pytest.param(
        [
            linear(16),
            layer("residual", layers=[layer("layernorm"), layer("maxpool", kernel_size=2)]),
        ],
        ("layers", 1, "residual", "layers", 1, "maxpool"),
        r"maxpool takes a \(C, L\) or \(C, H, W\) input, got \(16,\)",
        id="error-inside-a-residual-block",
    ),
    pytest.param(
        [layer("reshape", shape=[1, 8, 8]), layer("maxpool", kernel_size=2, padding=2)],
        ("layers", 1, "maxpool", "padding"),
        r"padding 2x2 is more than half of kernel_size 2x2",
        id="pool-padding",
    ),
    pytest.param(
        [layer("global_pool"), linear(10)],
        ("layers", 0, "global_pool"),
        r"no spatial axes to pool",
        id="global-pool-on-flat-input",
    ),
]


@pytest.mark.parametrize(("layers", "loc", "message"), BAD_LAYERS)
def test_bad_layers_name_the_field_and_the_fix(layers: list, loc: tuple, message: str) -> None:
    with pytest.raises(LayerShapeError, match=message) as caught:
        validate_model_params("sequential", {"layers": layers}, shapes=DIGITS)
    assert caught.value.loc == loc
    assert pickle.loads(pickle.dumps(caught.value)).loc == loc  # crosses process boundaries
    dotted = ".".join(map(str, loc))
    assert str(caught.value).startswith(f"invalid params for model 'sequential': {dotted}")
    with pytest.raises(LayerShapeError, match=message):  # the worker's build checks the same
        build_model("sequential", DIGITS, {"layers": layers})


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([layer("conv3d", out_channels=3)], r"layers\.0=.*'conv3d'.*does not match"),
        ([linear(0)], r"layers\.0\.linear\.out_features=0: Input should be greater than"),
        ([linear("10")], r"layers\.0\.linear\.out_features='10': Input should be a valid int"),
        ([linear(10, units=3)], r"layers\.0\.linear\.units: unknown field"),
        ([layer("dropout", p=1.0)], r"layers\.0\.dropout\.p=1\.0: Input should be less than 1"),
        (
            [layer("gru", hidden_size=4, dropout=0.5)],
            r"layers\.0\.gru=.*dropout acts between stacked layers: set num_layers >= 2",
        ),
        (
            [layer("residual", layers=[layer("residual", layers=[linear(0)])])],
            r"layers\.0\.residual\.layers\.0\.residual\.layers\.0\.linear\.out_features=0",
        ),
        ([], r"layers=\[\]: List should have at least 1 item"),
    ],
)
def test_malformed_layers_fail_validation_without_shapes(layers: list, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        validate_model_params("sequential", {"layers": layers})


def test_parameter_count_is_capped_with_the_count_in_the_error() -> None:
    wide = [linear(8192), layer("relu"), linear(8192), linear(10)]
    count = 64 * 8192 + 8192 + 8192 * 8192 + 8192 + 8192 * 10 + 10
    assert count > MAX_PARAMETERS
    with pytest.raises(LayerShapeError, match=f"{count:,} parameters, more than the cap"):
        validate_model_params("sequential", {"layers": wide}, shapes=DIGITS)


def test_activation_size_is_capped() -> None:
    layers = [
        layer("reshape", shape=[1, 8, 8]),
        layer("conv2d", out_channels=4096, kernel_size=1, padding=32),
    ]
    side = 8 + 64
    assert 4096 * side * side > MAX_ACTIVATION
    with pytest.raises(LayerShapeError, match=r"layers\.1\.conv2d: outputs \(4096, 72, 72\)"):
        validate_model_params("sequential", {"layers": layers}, shapes=DIGITS)


def test_depth_and_nesting_are_capped() -> None:
    too_many = [layer("relu")] * 60 + [layer("residual", layers=[layer("relu")] * 4)]
    with pytest.raises(InvalidInputError, match=r"65 layers in all .* the cap is 64"):
        validate_model_params("sequential", {"layers": too_many})
    nested: dict[str, Any] = layer("relu")
    for _ in range(5):
        nested = layer("residual", layers=[nested])
    with pytest.raises(InvalidInputError, match="residual blocks nest 5 deep, the cap is 4"):
        validate_model_params("sequential", {"layers": [nested]})


# --- the registry without torch ----------------------------------------------------------------


# An upload's shapes are its stored row's (tests/test_uploads.py), not the registry's.
@pytest.mark.parametrize("name", sorted(set(dataset_names()) - {"uploaded"}))
def test_dataset_shapes_are_the_loaded_bundles_shapes(name: str) -> None:
    params = {"n_features": 7, "n_classes": 3, "n_samples": 200} if name == "synthetic" else {}
    bundle = load_dataset(name, params)
    assert dataset_shapes(name, params) == (bundle.input_shape, bundle.output_dim)


def test_params_schema_is_served_and_layers_checked_without_torch() -> None:
    good = json.dumps({"layers": CNN_LAYERS})
    bad = json.dumps({"layers": [layer("conv2d", out_channels=8, kernel_size=3), linear(10)]})
    code = f"""
        import json
        from lrtune import registry
        schema = registry.model_params_schema("sequential").model_json_schema()
        tags = schema["properties"]["layers"]["items"]["discriminator"]["mapping"]
        assert {{"linear", "conv2d", "gru", "transformer_encoder_layer", "residual"}} <= set(tags)
        json.dumps(schema)
        shapes = registry.dataset_shapes("digits")
        registry.validate_model_params("sequential", json.loads({good!r}), shapes)
        try:
            registry.validate_model_params("sequential", json.loads({bad!r}), shapes)
        except ValueError as exc:
            assert exc.loc == ("layers", 0, "conv2d"), exc.loc
        else:
            raise AssertionError("a conv2d over a flat input passed")
    """
    assert heavy_modules_after(code) == []


def test_params_schema_lists_every_layer_type() -> None:
    schema = model_params_schema("sequential").model_json_schema()
    tags = set(schema["properties"]["layers"]["items"]["discriminator"]["mapping"])
    assert tags == {
        *("linear", "conv1d", "conv2d", "batchnorm", "layernorm", "relu", "gelu", "tanh"),
        *("silu", "dropout", "maxpool", "avgpool", "global_pool", "flatten", "reshape"),
        *("embedding", "positional_embedding", "lstm", "gru", "transformer_encoder_layer"),
        *("sequence_pool", "residual"),
    }
    conv = schema["$defs"]["Conv2d"]["properties"]["kernel_size"]
    assert {"type": "integer", "minimum": 1, "maximum": 64} in conv["anyOf"]


# --- real training on digits -------------------------------------------------------------------


def example_cnn_layers() -> list[dict[str, Any]]:
    return JobSpec.from_file(REPO / "examples/digits_sequential_cnn.yaml").model.params["layers"]


@pytest.mark.parametrize(
    ("layers", "lr"),
    [
        pytest.param(None, 0.01, id="example-cnn"),
        pytest.param(GRU_LAYERS, 0.01, id="gru"),
        pytest.param(TRANSFORMER_LAYERS, 0.01, id="transformer"),
    ],
)
def test_sequential_models_train_on_digits_to_better_than_chance(
    layers: list | None, lr: float
) -> None:
    spec = JobSpec.model_validate(
        {
            "model": {"name": "sequential", "params": {"layers": layers or example_cnn_layers()}},
            "dataset": {"name": "digits"},
            "optimizer": {"name": "adam"},
            "batch_size": 32,
        }
    )
    validate_model_params(spec.model.name, spec.model.params, dataset_shapes("digits"))
    run = train(
        TrainingSetup.from_spec(spec, device="cpu"),
        parse_schedule({"family": "constant"}),
        lr,
        epochs=3,
    )
    assert run.status == "completed", run.reason
    losses = [record["val_loss"] for record in run.epochs]
    assert losses[-1] < losses[0] and losses[-1] < math.log(10)  # below chance's loss
    assert run.epochs[-1]["accuracy"] > 0.5  # chance is 0.1


def test_cli_find_runs_a_sequential_model_from_model_param() -> None:
    layers = (
        "[{type: reshape, shape: [8, 8]}, {type: gru, hidden_size: 16},"
        " {type: linear, out_features: 10}]"
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["find", "--model", "sequential", "--dataset", "digits", "--model-param",
             f"layers={layers}", "--seeds", "1", "--num-iter", "30", "--json"]
        )  # fmt: skip
    assert code == 0
    result = json.loads(out.getvalue())
    assert result["suggestion"] > 0
    assert result["job"]["model"]["params"]["layers"][1]["type"] == "gru"


def test_a_tiny_tune_run_recommends_a_schedule_for_a_sequential_model() -> None:
    """The whole job path: range test, schedule search, confirmation on fresh seeds."""
    spec = JobSpec.model_validate(
        {
            "model": {"name": "sequential", "params": {"layers": GRU_LAYERS}},
            "dataset": {"name": "digits"},
            "optimizer": {"name": "adam"},
            "range_test": {"seeds": 2, "num_iter": 30},
            "search": {
                "n_trials": 2,
                "epochs": 2,
                "families": ["cosine"],
                "confirm_seeds": 2,
                "metric": "accuracy",
            },
        }
    )
    rec = lrtune.tune(spec, progress=False)
    assert rec.confirmed and rec.metric == "accuracy"
    assert rec.value > 0.25  # chance is 0.1; two epochs reach about 0.5
    assert "CosineAnnealingLR" in rec.to_code()
