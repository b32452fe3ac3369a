from __future__ import annotations

import itertools
import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lrtune import LRFinderResult, find_lr
from lrtune.finder import LossTracker, lr_sequence


def mlp(seed: int = 0, batchnorm: bool = False, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(8, 32)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(32))
    layers += [nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3)]
    return nn.Sequential(*layers)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


# --- LR sequence ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_lr_sequence_reaches_end_lr_exactly_at_last_step(mode: str) -> None:
    lrs = lr_sequence(1e-7, 10.0, 100, mode)
    assert len(lrs) == 100
    assert lrs[0] == pytest.approx(1e-7, rel=1e-12)
    assert lrs[-1] == pytest.approx(10.0, rel=1e-12)
    assert np.all(np.diff(lrs) > 0)
    if mode == "exp":
        ratios = lrs[1:] / lrs[:-1]
        assert np.allclose(ratios, ratios[0])
    else:
        assert np.allclose(np.diff(lrs), np.diff(lrs)[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_iter": 1}, "num_iter"),
        ({"start_lr": 0.0}, "start_lr"),
        ({"start_lr": -1e-3}, "start_lr"),
        ({"start_lr": 1.0, "end_lr": 1.0}, "end_lr"),
        ({"start_lr": 1.0, "end_lr": 0.1}, "end_lr"),
        ({"mode": "cubic"}, "mode"),
    ],
)
def test_bad_sweep_arguments_are_value_errors(blobs, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        find_lr(mlp(), blobs, progress=False, **kwargs)


# --- smoothing and divergence ---------------------------------------------------------------


def test_debiased_smoothing_starts_at_the_first_loss_and_stays_flat_on_flat_loss() -> None:
    tracker = LossTracker(seeds=1, beta=0.98, diverge_threshold=None)
    for step in range(20):
        tracker.update(step, [2.5])
    assert tracker.smoothed[0][0] == 2.5
    assert np.allclose(tracker.smoothed[0], 2.5)


def test_smoothing_matches_debiased_ema_formula() -> None:
    losses = [3.0, 2.0, 4.0, 1.0, 0.5]
    tracker = LossTracker(seeds=1, beta=0.9, diverge_threshold=None)
    for step, loss in enumerate(losses):
        tracker.update(step, [loss])
    avg, expected = 0.0, []
    for t, loss in enumerate(losses, start=1):
        avg = 0.9 * avg + 0.1 * loss
        expected.append(avg / (1 - 0.9**t))
    assert np.allclose(tracker.smoothed[0], expected)


def test_sweep_stops_at_divergence(blobs) -> None:
    result = find_lr(mlp(), blobs, start_lr=1e-4, end_lr=1e4, num_iter=100, progress=False)
    assert result.diverged_at is not None
    assert len(result.seeds[0].raw) < 100
    curve = result.seeds[0]
    assert curve.diverged_at == len(curve.raw) - 1
    last = curve.smoothed[-1]
    assert not math.isfinite(last) or last > 4 * min(curve.smoothed[:-1])
    assert result.suggestion is not None and result.suggestion < result.divergence_lr


def test_non_finite_loss_stops_the_sweep_and_never_reaches_a_suggestion(blobs) -> None:
    calls = {"n": 0}

    def loss_fn(model: nn.Module, batch) -> torch.Tensor:
        calls["n"] += 1
        loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
        return loss * math.nan if calls["n"] == 40 else loss

    result = find_lr(
        mlp(),
        blobs,
        loss_fn=loss_fn,
        start_lr=1e-5,
        end_lr=1e-2,
        num_iter=60,
        diverge_threshold=None,
        progress=False,
    )
    assert len(result.seeds[0].raw) == 40
    assert math.isnan(result.seeds[0].raw[-1])
    assert result.seeds[0].diverged_at == 39
    for s in result.suggestions.values():
        assert s.lr is None or (s.index is not None and s.index < 39)
    assert result.suggestion is None or math.isfinite(result.suggestion)
    json.dumps(result.model_dump(mode="json"), allow_nan=False)


# --- exact restore --------------------------------------------------------------------------


def test_weights_buffers_modes_rng_and_optimizer_are_restored(blobs) -> None:
    model = mlp(batchnorm=True, dropout=0.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    nn.functional.cross_entropy(model(blobs[0][0]), blobs[0][1]).backward()
    optimizer.step()  # the optimizer now carries momentum state
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)
    model[2].eval()  # a mixed train/eval model must come back mixed
    before, opt_before = snapshot(model), json.dumps(str(optimizer.state_dict()))
    sched_before = scheduler.state_dict()
    torch.manual_seed(123)
    random.seed(7)
    np.random.seed(9)
    expected_draws = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(7)
    np.random.seed(9)

    find_lr(model, blobs, optimizer, num_iter=30, seeds=2, progress=False)

    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == (
        expected_draws[0].tolist(),
        expected_draws[1],
        expected_draws[2],
    )
    assert_same_state(model, before)
    assert [m.training for m in model] == [True, True, False, True, True]
    assert json.dumps(str(optimizer.state_dict())) == opt_before
    assert scheduler.state_dict() == sched_before


@pytest.mark.parametrize("seeds", [1, 3])
def test_state_is_restored_when_the_test_raises_midway(blobs, seeds: int) -> None:
    model = mlp(batchnorm=True)
    before = snapshot(model)
    rng_before = torch.get_rng_state()
    calls = {"n": 0}

    def exploding_loss(m: nn.Module, batch) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 25:
            raise RuntimeError("boom at step 25")
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    with pytest.raises(RuntimeError, match="boom"):
        find_lr(
            model,
            blobs,
            loss_fn=exploding_loss,
            num_iter=50,
            seeds=seeds,
            vectorize=False,
            progress=False,
        )
    assert calls["n"] == 25
    assert_same_state(model, before)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert model.training


# --- param groups, accumulation, batch formats ----------------------------------------------


class RecordingSGD(torch.optim.SGD):
    """SGD that records the LR of every group at every step (the sweep clones this class)."""

    log: ClassVar[list[list[float]]] = []

    def step(self, closure=None):  # type: ignore[override]
        RecordingSGD.log.append([g["lr"] for g in self.param_groups])
        return super().step(closure)


def test_param_groups_keep_their_lr_ratio(blobs) -> None:
    model = mlp()
    optimizer = RecordingSGD(
        [
            {"params": model[0].parameters(), "lr": 1e-3},
            {"params": model[3].parameters(), "lr": 1e-2},
        ],
        lr=1e-3,
        momentum=0.9,
    )
    RecordingSGD.log = []
    result = find_lr(
        model, blobs, optimizer, start_lr=1e-6, end_lr=1e-1, num_iter=20, progress=False
    )
    assert result.group_lr_ratios == [1.0, 10.0]
    lrs = np.array(RecordingSGD.log)
    assert len(lrs) == len(result.lrs)
    assert np.allclose(lrs[:, 0], result.lrs)
    assert np.allclose(lrs[:, 1] / lrs[:, 0], 10.0)
    assert result.group_suggestions == pytest.approx([result.suggestion, 10 * result.suggestion])
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 1e-2]


def test_accumulation_records_one_point_per_optimizer_step(blobs) -> None:
    calls = {"n": 0}

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        calls["n"] += 1
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    model = mlp()
    RecordingSGD.log = []
    result = find_lr(
        model,
        blobs,
        RecordingSGD(model.parameters(), lr=0.1),
        loss_fn=loss_fn,
        start_lr=1e-6,
        end_lr=1e-3,
        num_iter=10,
        accumulation_steps=3,
        progress=False,
    )
    assert calls["n"] == 30
    assert len(RecordingSGD.log) == 10
    assert len(result.lrs) == len(result.seeds[0].raw) == 10


def test_accumulated_loss_is_the_mean_of_its_micro_batches(blobs) -> None:
    # At a negligible LR the weights barely move, so the recorded loss of step i must be the
    # mean of the losses of micro-batches 3i..3i+2 under the initial weights.
    model = mlp()
    with torch.no_grad():
        per_batch = [nn.functional.cross_entropy(model(x), y).item() for x, y in blobs[:6]]
    result = find_lr(
        model, blobs, start_lr=1e-12, end_lr=1e-11, num_iter=2, accumulation_steps=3, progress=False
    )
    assert result.seeds[0].raw == pytest.approx(
        [np.mean(per_batch[:3]), np.mean(per_batch[3:6])], rel=1e-5
    )


def test_dict_batches_and_loss_fn_hook_give_the_same_curve(blobs) -> None:
    dict_batches = [{"features": x, "label": y} for x, y in blobs]
    tuple_result = find_lr(mlp(), blobs, num_iter=30, progress=False)
    dict_result = find_lr(mlp(), dict_batches, num_iter=30, progress=False)

    def hook(model: nn.Module, batch) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    hook_result = find_lr(mlp(), blobs, loss_fn=hook, num_iter=30, progress=False)
    assert dict_result.seeds[0].raw == pytest.approx(tuple_result.seeds[0].raw)
    assert hook_result.seeds[0].raw == pytest.approx(tuple_result.seeds[0].raw)


def test_unreadable_batches_name_the_fix(blobs) -> None:
    with pytest.raises(TypeError, match="target key"):
        find_lr(mlp(), [{"features": x} for x, _ in blobs], num_iter=5, progress=False)
    with pytest.raises(TypeError, match="loss_fn"):
        find_lr(mlp(), [x for x, _ in blobs], num_iter=5, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        find_lr(mlp(), [], num_iter=5, progress=False)


def test_validation_loss_every_k_steps(blobs) -> None:
    result = find_lr(
        mlp(),
        blobs[:16],
        val_data=blobs[16:],
        val_every=5,
        val_batches=2,
        start_lr=1e-5,
        end_lr=1e-2,
        num_iter=21,
        progress=False,
    )
    steps = [s for s, _ in result.seeds[0].val]
    assert steps == [0, 5, 10, 15, 20]
    assert all(math.isfinite(v) for _, v in result.seeds[0].val)


def test_callback_sees_every_step(blobs) -> None:
    seen: list[tuple[int, float]] = []
    result = find_lr(
        mlp(),
        blobs,
        num_iter=15,
        end_lr=1e-2,
        callback=lambda step, lr, losses: seen.append((step, lr)),
        progress=False,
    )
    assert [s for s, _ in seen] == list(range(15))
    assert [lr for _, lr in seen] == pytest.approx(result.lrs)


# --- multi-seed -----------------------------------------------------------------------------


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 8, generator=g) * 3
    y = torch.randint(0, 3, (640,), generator=g)
    x = centers[y] + torch.randn(640, 8, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


def test_multi_seed_gives_per_seed_curves_median_band_and_confidence() -> None:
    result = find_lr(mlp(), loader(), seeds=4, seed=0, num_iter=60, progress=False)
    assert result.config.engine == "vectorized"
    assert len(result.seeds) == 4
    assert len({tuple(c.raw[:5]) for c in result.seeds}) == 4  # data orders differ
    n = len(result.median)
    grid = np.array([c.smoothed[:n] for c in result.seeds])
    assert np.allclose(result.median, np.median(grid, axis=0))
    assert np.all(np.array(result.band_low) <= np.array(result.median) + 1e-12)
    assert result.spread_decades is not None and result.spread_decades >= 0
    assert len(result.consensus.per_seed) == 4


@pytest.mark.parametrize("batchnorm", [False, True])
def test_vectorized_and_sequential_seeds_agree(batchnorm: bool) -> None:
    kwargs = {"seeds": 3, "seed": 5, "num_iter": 40, "end_lr": 1.0, "progress": False}
    vec = find_lr(mlp(batchnorm=batchnorm), loader(), vectorize=True, **kwargs)
    seq = find_lr(mlp(batchnorm=batchnorm), loader(), vectorize=False, **kwargs)
    assert vec.config.engine == "vectorized" and seq.config.engine == "sequential"
    for a, b in zip(vec.seeds, seq.seeds, strict=True):
        n = min(len(a.raw), len(b.raw), 30)
        assert np.allclose(a.raw[:n], b.raw[:n], rtol=1e-3, atol=1e-4)


def test_multi_seed_with_reinit_and_dropout_runs_vectorized() -> None:
    result = find_lr(
        mlp(dropout=0.3), loader(), seeds=3, seed=0, reinit=True, num_iter=30, progress=False
    )
    assert result.config.engine == "vectorized"
    starts = [c.raw[0] for c in result.seeds]
    assert len(set(starts)) == 3  # different weights give different first losses


def test_unvectorizable_optimizer_falls_back_to_sequential() -> None:
    model = mlp()
    optimizer = torch.optim.Adafactor(model.parameters(), lr=1e-3)
    result = find_lr(model, loader(), optimizer, seeds=2, num_iter=20, progress=False)
    assert result.config.engine == "sequential"
    assert len(result.seeds) == 2
    with pytest.raises(ValueError, match="cannot be vectorized"):
        find_lr(model, loader(), optimizer, seeds=2, num_iter=20, vectorize=True, progress=False)


def test_fx_graph_module_falls_back_to_sequential_with_the_same_curves() -> None:
    # Every deepcopy of a GraphModule has its own class, which torch.func cannot stack.
    kwargs = {"seeds": 2, "seed": 0, "num_iter": 20, "progress": False}
    traced = find_lr(torch.fx.symbolic_trace(mlp()), loader(), **kwargs)
    plain = find_lr(mlp(), loader(), vectorize=False, **kwargs)
    assert traced.config.engine == "sequential"
    for a, b in zip(traced.seeds, plain.seeds, strict=True):
        assert np.allclose(a.raw, b.raw)
    with pytest.raises(ValueError, match="cannot be stacked"):
        find_lr(torch.fx.symbolic_trace(mlp()), loader(), vectorize=True, **kwargs)


def test_multi_seed_needs_reshufflable_data(blobs) -> None:
    with pytest.raises(ValueError, match="re-shuffle"):
        find_lr(mlp(), iter(blobs), seeds=2, num_iter=10, progress=False)


# --- result ---------------------------------------------------------------------------------


def test_result_round_trips_through_json_and_plots(tmp_path) -> None:
    result = find_lr(
        mlp(), loader(), seeds=2, seed=0, num_iter=50, val_data=loader(), progress=False
    )
    data = json.loads(json.dumps(result.model_dump(mode="json"), allow_nan=False))
    again = LRFinderResult.model_validate(data)
    assert again.suggestion == result.suggestion
    assert again.spread_decades == result.spread_decades
    assert again.model_dump(mode="json") == data
    fig = result.plot()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert len(ax.lines) >= 3  # two seeds and the median, plus suggestion markers
    fig.savefig(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 10_000


def test_device_that_is_not_there_is_a_clear_error(blobs) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="CUDA is not available"):
        find_lr(mlp(), blobs, device="cuda", progress=False)


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True])
def test_cuda_sweep_with_and_without_amp_restores_a_cpu_model(blobs, amp: bool) -> None:
    model = mlp()
    before = snapshot(model)
    result = find_lr(model, blobs, device="cuda", amp=amp, num_iter=50, progress=False)
    assert result.config.device.startswith("cuda")
    assert result.config.amp is amp
    assert result.suggestion is not None
    assert next(model.parameters()).device.type == "cpu"
    assert_same_state(model, before)


@pytest.mark.gpu
def test_cuda_multi_seed_vectorized() -> None:
    result = find_lr(
        mlp(batchnorm=True), loader(), device="auto", seeds=4, seed=0, num_iter=50, progress=False
    )
    assert result.config.device.startswith("cuda")
    assert result.config.engine == "vectorized"


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01),
        lambda p: torch.optim.Adam(p, lr=1e-3, amsgrad=True),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        lambda p: torch.optim.RMSprop(p, lr=1e-3, centered=True),
    ],
    ids=["adamw", "adam-amsgrad", "sgd-nesterov", "rmsprop"],
)
@pytest.mark.parametrize("seeds", [1, 2])
def test_common_optimizers_are_cloned_with_their_hyperparameters(make_optimizer, seeds) -> None:
    model = mlp()
    optimizer = make_optimizer(model.parameters())
    result = find_lr(model, loader(), optimizer, seeds=seeds, num_iter=20, progress=False)
    assert result.config.optimizer == type(optimizer).__name__
    assert len(result.seeds) == seeds


def test_seeded_tensor_batches_cover_every_row_once_per_pass_in_a_seeded_order() -> None:
    from lrtune.batches import seeded_order

    x = torch.arange(50).float().unsqueeze(1)
    data = DataLoader(TensorDataset(x, torch.arange(50)), batch_size=8, shuffle=True)
    first = [b[1].tolist() for b in seeded_order(data, seed=3)]
    assert sorted(itertools.chain.from_iterable(first)) == list(range(50)) and len(first) == 7
    assert all(torch.equal(b[0].squeeze(1), b[1].float()) for b in seeded_order(data, seed=3))
    again = seeded_order(data, seed=3)
    assert [b[1].tolist() for b in again] == first
    assert [b[1].tolist() for b in again] != first  # a new permutation on the next pass
    assert [b[1].tolist() for b in seeded_order(data, seed=4)] != first
    dropped = DataLoader(TensorDataset(x, torch.arange(50)), batch_size=8, drop_last=True)
    assert [len(b[1]) for b in seeded_order(dropped, seed=0)] == [8] * 6


def test_loaders_with_their_own_collate_keep_the_dataloader_path() -> None:
    from lrtune.batches import seeded_order

    def collate(rows):
        return {"x": torch.stack([r[0] for r in rows]), "y": torch.stack([r[1] for r in rows])}

    data = DataLoader(
        TensorDataset(torch.randn(20, 3), torch.arange(20)), batch_size=5, collate_fn=collate
    )
    batches = list(seeded_order(data, seed=1))
    assert isinstance(batches[0], dict)
    assert sorted(itertools.chain.from_iterable(b["y"].tolist() for b in batches)) == list(
        range(20)
    )
    result = find_lr(nn.Linear(3, 20), data, seeds=2, seed=1, num_iter=10, progress=False)
    assert len(result.seeds) == 2


# --- nothing left behind, odd models, odd data, odd losses ----------------------------------


class CountingLayer(nn.Module):
    """A linear layer with a non-persistent buffer that training changes."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 3)
        self.register_buffer("seen_rows", torch.zeros(()), persistent=False)
        self.forward_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen_rows += len(x)
            self.forward_calls += 1
        return self.linear(x)


class CountingLayerWithExtraState(CountingLayer):
    """Keeps its call count in ``state_dict()`` as extra state: a dict, not a tensor."""

    def get_extra_state(self) -> dict[str, int]:
        return {"forward_calls": self.forward_calls}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.forward_calls = state["forward_calls"]


@pytest.mark.parametrize("seeds", [1, 2])
def test_sequential_sweeps_restore_grads_and_non_persistent_buffers(blobs, seeds: int) -> None:
    model = nn.Sequential(CountingLayer())
    nn.functional.cross_entropy(model(blobs[0][0]), blobs[0][1]).backward()
    model[0].linear.bias.grad = None  # one gradient set, one None: both must come back
    weight_grad = model[0].linear.weight.grad
    grad_before = weight_grad.clone()
    buffer_before = model[0].seen_rows.clone()

    result = find_lr(model, blobs, num_iter=20, seeds=seeds, vectorize=False, progress=False)

    assert result.config.engine == "sequential"
    assert model[0].linear.weight.grad is weight_grad  # the caller's tensor, not a copy
    assert torch.equal(model[0].linear.weight.grad, grad_before)
    assert model[0].linear.bias.grad is None
    assert torch.equal(model[0].seen_rows, buffer_before)


@pytest.mark.parametrize("vectorize", [False, True])
def test_models_with_extra_state_are_tested_and_restored(blobs, vectorize: bool) -> None:
    model = nn.Sequential(CountingLayerWithExtraState())
    model(blobs[0][0])
    before = model.state_dict()
    result = find_lr(
        model, loader(), num_iter=20, seeds=2, seed=0, vectorize=vectorize, progress=False
    )
    assert len(result.seeds[0].raw) == 20
    assert model.state_dict()["0._extra_state"] == before["0._extra_state"] == {"forward_calls": 1}
    assert model[0].forward_calls == 1


def test_a_model_without_gradients_has_none_afterwards(blobs) -> None:
    model = mlp()
    find_lr(model, blobs, num_iter=10, progress=False)
    assert all(p.grad is None for p in model.parameters())


def uneven_batches(blobs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """blobs with a short last batch, as a list: each seed's order puts it at another step."""
    return [*blobs[:-1], (blobs[-1][0][:20], blobs[-1][1][:20])]


def test_uneven_batches_with_several_seeds_fall_back_to_the_sequential_curves(blobs) -> None:
    data = uneven_batches(blobs)
    kwargs = {"seeds": 3, "seed": 0, "num_iter": 60, "end_lr": 1.0, "progress": False}
    auto = find_lr(mlp(), data, **kwargs)
    sequential = find_lr(mlp(), data, vectorize=False, **kwargs)
    assert auto.config.engine == "sequential"
    assert [c.raw for c in auto.seeds] == [c.raw for c in sequential.seeds]
    assert auto.suggestion == sequential.suggestion
    with pytest.raises(ValueError, match="cannot be vectorized"):
        find_lr(mlp(), data, vectorize=True, **kwargs)


def test_a_divergence_stop_needs_a_rise_on_the_losss_own_scale_when_the_best_is_negative() -> None:
    tracker = LossTracker(seeds=1, beta=0.0, diverge_threshold=4.0)
    for step, loss in enumerate([-2.0, -3.0, -4.0, -3.5, -2.0]):
        tracker.update(step, [loss])
    assert tracker.diverged_at == [None]  # a rise of 2 on a loss of scale 2 is noise
    tracker.update(5, [5.0])  # a rise of 9 > (4 - 1) * max(|-2|, -2 - -4)
    assert tracker.diverged_at == [5]


def test_a_shifted_negative_loss_sweeps_as_far_as_the_unshifted_one(blobs) -> None:
    def shifted(model: nn.Module, batch) -> torch.Tensor:
        return nn.functional.cross_entropy(model(batch[0]), batch[1]) - 5.0

    kwargs = {"start_lr": 1e-5, "end_lr": 1e3, "num_iter": 100, "progress": False}
    plain = find_lr(mlp(), blobs, **kwargs)
    negative = find_lr(mlp(), blobs, loss_fn=shifted, **kwargs)
    assert max(negative.seeds[0].smoothed) < 0 or negative.diverged_at is not None
    assert len(negative.seeds[0].raw) >= len(plain.seeds[0].raw) > 20
    assert plain.suggestion is not None and negative.suggestion is not None
    assert abs(math.log10(negative.suggestion / plain.suggestion)) < 1


FRESH_PROCESS_SWEEP = """
import sys, torch
from torch import nn
from lrtune import find_lr

device = sys.argv[1]
torch.manual_seed(123)
if device != "none":
    x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    data = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    for vectorize in (True, False):
        find_lr(model, data, device=device, seeds=2, seed=0, reinit=True, vectorize=vectorize,
                num_iter=10, progress=False)
print(torch.cuda.is_initialized())
if torch.cuda.is_available():
    print(torch.rand(4, device="cuda").tolist())
"""


def sweep_in_a_fresh_process(device: str) -> list[str]:
    """Run FRESH_PROCESS_SWEEP where CUDA starts uninitialised; its printed lines."""
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SWEEP, device],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    return done.stdout.splitlines()


def test_a_cpu_sweep_never_initialises_cuda() -> None:
    assert sweep_in_a_fresh_process("cpu")[0] == "False"


@pytest.mark.gpu
@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cuda_generators_are_as_the_caller_would_have_had_them(device: str) -> None:
    # "auto" runs a CPU model on CUDA, initialising CUDA mid-test; "cpu" must not queue a seed
    # for CUDA's lazy initialisation. Either way the caller's next CUDA draw is unchanged.
    untouched = sweep_in_a_fresh_process("none")
    after_sweep = sweep_in_a_fresh_process(device)
    assert after_sweep[0] == ("True" if device == "auto" else "False")
    assert after_sweep[1] == untouched[1]
