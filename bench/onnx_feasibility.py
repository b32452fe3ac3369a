"""Can an uploaded ONNX file become a model lrtune trains? The evidence for issue 8's stretch goal.

Exports lrtune's built-in models (``mlp``, ``cnn``, ``sequential``) with each of torch 2.13's
ONNX exporters, converts them back with ``onnx2torch.convert`` and checks that the result is the
same trainable model: the same outputs, the same parameter count, no weight turned into a frozen
buffer, BatchNorm and Dropout kept (an eval-mode export may fold or drop them), the same loss
over 30 SGD steps from the same weights. Then runs ``lrtune.find_lr`` and a tiny ``tune`` on the
models that pass, and probes what an ONNX file from HTTP could make the conversion do.

Not a dependency of lrtune: install the three packages into the venv first, torch pinned::

    .venv/bin/python -m pip install -c constraints.txt onnx==1.23.2 onnx2torch==1.5.15 \\
        onnxscript==0.7.2
    .venv/bin/python -m pip uninstall -y torchvision   # see "Installing" in the report
    LRTUNE_TORCH_THREADS=1 .venv/bin/python bench/onnx_feasibility.py   # ~2 min, Markdown

The findings and the verdict are in docs/onnx_feasibility.md.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import io
import logging
import math
import os
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

import lrtune
from lrtune.models import cnn, mlp, sequential
from lrtune.registry import load_dataset, register_model

SGD_STEPS = 30
ATOL = 1e-5

CONV_BN_LAYERS = [
    {"type": "reshape", "shape": [1, 8, 8]},
    {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1},
    {"type": "batchnorm"},
    {"type": "relu"},
    {"type": "global_pool", "mode": "mean"},
    {"type": "linear", "out_features": 32},
    {"type": "layernorm"},
    {"type": "gelu"},
    {"type": "linear", "out_features": 10},
]
RESIDUAL_LAYERS = [
    {"type": "linear", "out_features": 32},
    {"type": "tanh"},
    {"type": "residual", "layers": [{"type": "linear", "out_features": 32}, {"type": "silu"}]},
    {"type": "linear", "out_features": 10},
]

# name -> (factory of a fresh model, the input shape of one sample)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp [32, 32]": (lambda: mlp((64,), 10, hidden=[32, 32]), (64,)),
    "mlp [32] batchnorm": (lambda: mlp((64,), 10, hidden=[32], batchnorm=True), (64,)),
    "mlp [32] dropout 0.3": (lambda: mlp((64,), 10, hidden=[32], dropout=0.3), (64,)),
    "cnn [8, 16], input (64,)": (lambda: cnn((64,), 10, channels=[8, 16]), (64,)),
    "cnn [8, 16], input (1, 8, 8)": (lambda: cnn((1, 8, 8), 10, channels=[8, 16]), (1, 8, 8)),
    "cnn [8] batchnorm, input (1, 8, 8)": (
        lambda: cnn((1, 8, 8), 10, channels=[8], batchnorm=True),
        (1, 8, 8),
    ),
    "sequential conv-bn-layernorm-gelu": (
        lambda: sequential((64,), 10, layers=CONV_BN_LAYERS),
        (64,),
    ),
    "sequential residual": (lambda: sequential((64,), 10, layers=RESIDUAL_LAYERS), (64,)),
}

# name -> torch.onnx.export keywords; every export has a dynamic batch axis.
EXPORTERS: dict[str, dict] = {
    "dynamo, defaults (torch 2.13's default)": {"dynamo": True},
    "dynamo, opset 18": {"dynamo": True, "opset_version": 18},
    "dynamo, opset 18, optimize=False": {"dynamo": True, "opset_version": 18, "optimize": False},
    "legacy, defaults (opset 20)": {"dynamo": False},
    "legacy, opset 17": {"dynamo": False, "opset_version": 17},
    "legacy, opset 17, training mode": {
        "dynamo": False,
        "opset_version": 17,
        "training": torch.onnx.TrainingMode.TRAINING,
        "do_constant_folding": False,
    },
}
# The exporter the lrtune checks use: the one under which the plain MLP and CNN convert.
LRTUNE_EXPORTER = "legacy, opset 17"


def report_versions() -> None:
    print("## Versions\n")
    for package in ("torch", "onnx", "onnx2torch", "onnxscript", "numpy", "protobuf"):
        try:
            print(f"- {package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            print(f"- {package}: not installed")
    print()


def import_onnx2torch() -> types.ModuleType:
    """onnx2torch, imported as it is or, where its torchvision import fails, over a stub.

    onnx2torch imports torchvision at import time, for its NMS and RoIAlign converters only;
    the stub lets the rest be measured (those two converters then fail if used).
    """
    print("## Installing\n")
    try:
        import onnx2torch

        print("- `import onnx2torch`: works as installed\n")
        return onnx2torch
    except Exception as exc:  # torchvision's own RuntimeError or a ModuleNotFoundError
        message = str(exc).splitlines()[-1]
        print(f"- `import onnx2torch` fails: `{type(exc).__name__}: {message}`")
    for name in [n for n in sys.modules if n.startswith(("onnx2torch", "torchvision"))]:
        del sys.modules[name]
    stub, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = None
    stub.ops = ops
    sys.modules.update({"torchvision": stub, "torchvision.ops": ops})
    import onnx2torch

    # Gone again, so that torch.onnx's dynamo exporter does not take the stub for torchvision.
    del sys.modules["torchvision"], sys.modules["torchvision.ops"]
    print("- the rest of this report imports it over a stub `torchvision` module\n")
    return onnx2torch


def export_bytes(model: nn.Module, input_shape: tuple[int, ...], exporter: str) -> bytes:
    options = dict(EXPORTERS[exporter])
    example = torch.randn(7, *input_shape)
    model.eval()
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        if options.pop("dynamo"):
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(
                model, (example,), dynamo=True, dynamic_shapes=({0: batch},), **options
            )
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            **options,
        )
        return buffer.getvalue()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter prints its progress and logs torchvision registrations it skips."""
    logging.disable(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def frozen_weights(model: nn.Module) -> int:
    """Floating-point buffers other than BatchNorm statistics: weights that SGD cannot move."""
    return sum(
        b.numel()
        for name, b in model.named_buffers()
        if b.is_floating_point() and not name.endswith(("running_mean", "running_var"))
    )


def count_modules(model: nn.Module, *names: str) -> int:
    return sum(any(n in type(m).__name__ for n in names) for m in model.modules())


def sgd_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    torch.manual_seed(123)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    losses = []
    for step in range(SGD_STEPS):
        rows = slice(step * 32 % 480, step * 32 % 480 + 32)
        loss = nn.functional.cross_entropy(model(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def round_trip_row(onnx2torch: types.ModuleType, model_name: str, exporter: str) -> list[str]:
    """One table row: does ``model_name`` come back from ``exporter`` as the same model?"""
    import onnx

    factory, input_shape = MODELS[model_name]
    torch.manual_seed(0)
    original = factory()
    x, y = torch.randn(512, *input_shape), torch.randint(0, 10, (512,))
    try:
        data = export_bytes(original, input_shape, exporter)
    except Exception as exc:
        return [model_name, exporter, f"export fails: {_first_line(exc)}"] + [""] * 7
    try:
        converted = onnx2torch.convert(onnx.load_from_string(data))
    except Exception as exc:
        return [model_name, exporter, f"convert fails: {_first_line(exc)}"] + [""] * 7
    original.eval()
    converted.eval()
    with torch.no_grad():
        out_diff = max((original(x[:n]) - converted(x[:n])).abs().max().item() for n in (1, 100))
    params = (count_params(original), count_params(converted))
    frozen = frozen_weights(converted)
    batchnorms = (count_modules(original, "BatchNorm"), count_modules(converted, "BatchNorm"))
    dropouts = (count_modules(original, "Dropout"), count_modules(converted, "Dropout"))
    if dropouts[0]:
        loss_diff = math.nan  # the original's dropout masks draw from the RNG: no step-by-step
    else:
        before, after = sgd_losses(copy.deepcopy(original), x, y), sgd_losses(converted, x, y)
        loss_diff = max(abs(a - b) for a, b in zip(before, after, strict=True))
    same = (
        out_diff < ATOL
        and params[0] == params[1]
        and not frozen
        and batchnorms[0] == batchnorms[1]
        and dropouts[0] == dropouts[1]
        and (math.isnan(loss_diff) or loss_diff < 1e-4)
    )
    return [
        model_name,
        exporter,
        "converts",
        f"{out_diff:.0e}",
        f"{params[0]} -> {params[1]}",
        str(frozen),
        f"{batchnorms[0]} -> {batchnorms[1]}",
        f"{dropouts[0]} -> {dropouts[1]}",
        "n/a" if math.isnan(loss_diff) else f"{loss_diff:.0e}",
        "**yes**" if same else "no",
    ]


def _first_line(exc: BaseException) -> str:
    return f"`{type(exc).__name__}: {str(exc).splitlines()[0][:140]}`"


def report_round_trips(onnx2torch: types.ModuleType) -> None:
    print("## Round trips\n")
    print(
        f"max |out| diff in eval mode (batches of 1 and 100); parameters original -> converted; "
        f"frozen: float buffers that are not BatchNorm statistics; SGD: the largest loss "
        f"difference over {SGD_STEPS} steps from the same weights (n/a with dropout).\n"
    )
    header = [
        "model",
        "exporter",
        "result",
        "max out diff",
        "params",
        "frozen",
        "BatchNorm",
        "Dropout",
        "SGD loss diff",
        "trains like the original",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for model_name in MODELS:
        for exporter in EXPORTERS:
            print("| " + " | ".join(round_trip_row(onnx2torch, model_name, exporter)) + " |")
    print()


def report_lrtune(onnx2torch: types.ModuleType) -> None:
    """find_lr and tune on converted models, next to the originals."""
    import onnx

    print(f"## lrtune on converted models (exporter: {LRTUNE_EXPORTER})\n")
    bundle = load_dataset("digits")
    xs, ys = bundle.train.tensors
    for model_name in ("mlp [32, 32]", "cnn [8, 16], input (1, 8, 8)"):
        factory, input_shape = MODELS[model_name]
        torch.manual_seed(0)
        original = factory()
        data = export_bytes(original, input_shape, LRTUNE_EXPORTER)
        converted = onnx2torch.convert(onnx.load_from_string(data))
        batches = [
            (xs[i : i + 64].reshape(-1, *input_shape), ys[i : i + 64]) for i in range(0, 1024, 64)
        ]
        for seeds in (1, 3):
            found = {}
            for label, model in (("original", original), ("converted", converted)):
                result = lrtune.find_lr(
                    model, batches, num_iter=60, seeds=seeds, seed=0, reinit=True, progress=False
                )
                found[label] = f"{result.suggestion:.4g} ({result.config['engine']})"
            print(f"- {model_name}, find_lr seeds={seeds}: suggestion {found}")
        buffer = io.BytesIO()
        torch.save(converted.state_dict(), buffer)
        buffer.seek(0)
        copy.deepcopy(converted).load_state_dict(torch.load(buffer, weights_only=True))
        print(f"- {model_name}: deepcopy and a state_dict round trip (weights_only) work")

    torch.manual_seed(0)
    fixed_mlp = mlp((64,), 10, hidden=[64])
    mlp_bytes = export_bytes(fixed_mlp, (64,), LRTUNE_EXPORTER)
    factories = {
        "original": lambda input_shape, output_dim: copy.deepcopy(fixed_mlp),
        "converted": lambda input_shape, output_dim: onnx2torch.convert(
            onnx.load_from_string(mlp_bytes)
        ),
    }
    for label, factory in factories.items():
        register_model(f"onnx_feasibility_{label}")(factory)
        spec = lrtune.JobSpec.model_validate(
            {
                "model": {"name": f"onnx_feasibility_{label}"},
                "dataset": {"name": "digits"},
                "range_test": {"seeds": 2},
                "search": {"n_trials": 4, "epochs": 2},
                "seed": 0,
            }
        )
        start = time.perf_counter()
        logging.disable(logging.WARNING)
        recommendation = lrtune.tune(spec, progress=False)
        logging.disable(logging.NOTSET)
        best = recommendation.best
        print(
            f"- `tune` on the {label} MLP (the same weights; 4 trials, 2 epochs): "
            f"{time.perf_counter() - start:.0f} s, recommends {best.name} at base LR "
            f"{best.base_lr:.4g}, {recommendation.metric} {best.value(recommendation.metric):.4f}"
        )
    print()


def report_safety(onnx2torch: types.ModuleType) -> None:
    """What an ONNX file (bytes from HTTP) can make onnx.checker and onnx2torch.convert do."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    print("## Safety probes\n")

    def one_node_model(node: onnx.NodeProto, initializers=(), domains=()) -> onnx.ModelProto:
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
            list(initializers),
        )
        opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
        return helper.make_model(graph, opset_imports=opsets)

    def outcome(model: onnx.ModelProto, run: bool = False, secret: bytes = b"") -> str:
        try:
            onnx.checker.check_model(model, full_check=True)
            checker = "passes"
        except Exception as exc:
            checker = f"refuses ({type(exc).__name__})"
        try:
            converted = onnx2torch.convert(model)
            if run:
                with contextlib.suppress(Exception):
                    converted(torch.ones(2, 2))
            result = "converts"
            weights = [b.numpy().tobytes() for b in converted.buffers()]
            if secret and secret in weights:
                result = "converts, **the file's bytes are the weight**"
        except Exception as exc:
            result = f"fails ({type(exc).__name__}: {str(exc).splitlines()[0][:90]})"
        return f"onnx.checker {checker}; onnx2torch.convert {result}"

    with tempfile.TemporaryDirectory() as scratch:
        secret = Path(scratch) / "secret.bin"
        secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
        here = Path.cwd()
        os.chdir(scratch)
        try:
            shown = {"secret.bin": "secret.bin", str(secret): "/tmp/.../secret.bin"}
            for location in ("secret.bin", str(secret), "../../etc/hostname"):
                weight = numpy_helper.from_array(np.zeros((2, 2), np.float32), "w")
                weight.ClearField("raw_data")
                weight.data_location = TensorProto.EXTERNAL
                entry = weight.external_data.add()
                entry.key, entry.value = "location", location
                model = one_node_model(helper.make_node("MatMul", ["x", "w"], ["y"]), [weight])
                found = outcome(model, secret=secret.read_bytes())
                label = shown.get(location, location)
                print(f"- an initializer with external data at `{label}`: {found}")
        finally:
            os.chdir(here)

        node = helper.make_node("Relu", ["x"], ["y"], domain="com.example")
        model = one_node_model(node, domains=["com.example"])
        print(f"- a node in a custom domain: {outcome(model)}")

        marker = Path(scratch) / "code-ran"
        injected = (
            'x") if 0 else None\n'
            f'getattr(__import__("os"), "system")("touch {marker}")\n'
            '_ = (lambda s: (lambda *a: a))("'
        )
        node = helper.make_node("Relu", ["x"], ["y"], name=injected)
        checked = outcome(one_node_model(node), run=True)
        print(
            f"- a node whose *name* is Python code: {checked}; calling the converted model "
            f"{'**ran the code**' if marker.exists() else 'ran nothing'} (torch.fx writes "
            f'the name unescaped into `getattr(self, "...")` in the forward it generates and '
            f"execs)"
        )
        marker.unlink(missing_ok=True)
        renamed = one_node_model(helper.make_node("Relu", ["x"], ["y"], name=injected))
        for index, graph_node in enumerate(renamed.graph.node):
            graph_node.name = f"node_{index}"
        outcome(renamed, run=True)
        print(
            f"- the same model with every node renamed `node_<i>` before converting: "
            f"{'ran the code' if marker.exists() else 'runs nothing'}\n"
        )


def main() -> None:
    torch.set_num_threads(int(os.environ.get("LRTUNE_TORCH_THREADS", "1")))
    print("# ONNX upload feasibility (bench/onnx_feasibility.py)\n")
    report_versions()
    onnx2torch = import_onnx2torch()
    report_round_trips(onnx2torch)
    report_lrtune(onnx2torch)
    report_safety(onnx2torch)


if __name__ == "__main__":
    main()
