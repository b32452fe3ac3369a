"""Population trials: K runs of one job trained as one stacked population give what each run
gives alone (records, LR steps, statuses, checkpoints), and jobs that cannot be stacked fall
back to one run at a time, saying why once."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from task_fixtures import Blobs

from lrtune.functional_optim import StackedOptimizer
from lrtune.population import Member, population_refusal, population_size, train_population
from lrtune.result import TrainingRun
from lrtune.schedules import parse_schedule
from lrtune.spec import JobSpec
from lrtune.task import task_job
from lrtune.training import (
    StopRequested,
    StopTraining,
    TrainingSetup,
    clear_stop_request,
    request_stop,
    train,
)

EPOCHS = 3
MIX = [  # (schedule, base_lr): every kind of stepping, one member diverging
    ({"family": "constant"}, 0.05),
    ({"family": "step", "step_size": 1, "gamma": 0.01}, 0.05),  # below lr_threshold after 2
    ({"family": "cosine", "T_max": EPOCHS, "warmup": {"steps": 10, "start_factor": 0.1}}, 0.1),
    ({"family": "onecycle", "max_lr": 0.3, "pct_start": 0.3}, 0.1),
    ({"family": "plateau", "factor": 0.5, "patience": 0}, 0.08),
    ({"family": "cyclic", "base_lr": 0.01, "max_lr": 0.2, "step_size_up": 7}, 0.05),
    ({"family": "constant"}, 1e37),  # diverges in epoch 1
]
LR_THRESHOLD = 1e-4
MODELS = {
    "mlp with dropout": {"name": "mlp", "params": {"hidden": [32], "dropout": 0.2}},
    "cnn with batchnorm": {"name": "cnn", "params": {"channels": [4], "batchnorm": True}},
}


def make_setup(model: dict, optimizer: dict | None = None) -> TrainingSetup:
    spec = JobSpec.model_validate(
        {
            "model": model,
            "dataset": {"name": "digits"},
            "optimizer": optimizer or {"name": "sgd", "momentum": 0.9},
            "batch_size": 128,
            "search": {"metric": "accuracy"},
        }
    )
    return TrainingSetup.from_spec(spec, device="cpu")


def prune_at_epoch_1(epoch: int, record: dict[str, float]) -> None:
    if epoch == 1:
        raise StopTraining("pruned by the test after epoch 2")


def mix_members(checkpoints: Path | None = None) -> list[Member]:
    members = [
        Member(
            parse_schedule(schedule),
            lr,
            checkpoint=None if checkpoints is None else checkpoints / f"member{i}.pt",
        )
        for i, (schedule, lr) in enumerate(MIX)
    ]
    members[0].on_epoch = prune_at_epoch_1
    return members


def alone(setup: TrainingSetup, member: Member, **options) -> TrainingRun:
    return train(
        setup,
        member.schedule,
        member.base_lr,
        EPOCHS,
        on_epoch=member.on_epoch,
        checkpoint=member.checkpoint,
        **options,
    )


def assert_same_run(population: TrainingRun, sequential: TrainingRun, val_size: int) -> None:
    """Equal to float tolerance: statuses and reasons, every LR step, every record (an
    accuracy may differ by one validation sample, where a near tie flips)."""
    assert (population.status, population.reason) == (sequential.status, sequential.reason)
    assert len(population.lr_steps) == len(sequential.lr_steps)
    for mine, theirs in zip(population.lr_steps, sequential.lr_steps, strict=True):
        assert mine == pytest.approx(theirs, rel=1e-6)
    assert len(population.epochs) == len(sequential.epochs)
    for mine, theirs in zip(population.epochs, sequential.epochs, strict=True):
        assert mine.keys() == theirs.keys()
        assert mine["epoch"] == theirs["epoch"]
        for key in ("train_loss", "val_loss"):
            if math.isfinite(theirs[key]):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
        assert abs(mine["accuracy"] - theirs["accuracy"]) <= 1.5 / val_size


# --- the stacked optimizer -------------------------------------------------------------------

OPTIMIZERS = {
    "sgd momentum": (torch.optim.SGD, {"momentum": 0.9}),
    "sgd nesterov, weight decay": (
        torch.optim.SGD,
        {"momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
    ),
    "sgd dampening": (torch.optim.SGD, {"momentum": 0.9, "dampening": 0.3}),
    "sgd plain": (torch.optim.SGD, {"momentum": 0.0}),
    "sgd, one member without momentum until step 3": (torch.optim.SGD, {"momentum": 0.9}),
    "adam": (torch.optim.Adam, {}),
    "adam amsgrad, weight decay": (torch.optim.Adam, {"amsgrad": True, "weight_decay": 0.01}),
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.05, "betas": (0.8, 0.99)}),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_stacked_optimizer_steps_each_member_as_torch_optim_does(name: str) -> None:
    kind, options = OPTIMIZERS[name]
    generator = torch.Generator().manual_seed(0)
    shapes = {"w": (4, 3), "b": (4,)}
    start = {n: torch.randn(s, generator=generator) for n, s in shapes.items()}
    lrs = [0.01, 0.1, 0.5]
    members = []
    for lr in lrs:  # two param groups, the second at a tenth of the LR
        params = {n: torch.nn.Parameter(t.clone()) for n, t in start.items()}
        groups = [{"params": [params["w"]], "lr": lr}, {"params": [params["b"]], "lr": lr / 10}]
        members.append((params, kind(groups, **options)))
    stacked = {n: torch.stack([t] * len(lrs)) for n, t in start.items()}
    optimizer = StackedOptimizer(kind, {"w": 0, "b": 1})
    late_momentum = name.startswith("sgd, one member without momentum")
    for group in members[2][1].param_groups if late_momentum else ():
        group["momentum"] = 0.0
    for step in range(6):
        if late_momentum and step == 3:
            for group in members[2][1].param_groups:
                group["momentum"] = 0.9
        grads = {n: torch.randn((len(lrs), *s), generator=generator) for n, s in shapes.items()}
        if step == 3:  # a schedule changes one member's momentum or betas mid-run
            group = members[1][1].param_groups[0]
            group["momentum" if kind is torch.optim.SGD else "betas"] = (
                0.5 if kind is torch.optim.SGD else (0.7, 0.9)
            )
        for k, (params, torch_optimizer) in enumerate(members):
            for n, p in params.items():
                p.grad = grads[n][k].clone()
            torch_optimizer.step()
        optimizer.step(stacked, grads, [o.param_groups for _, o in members])
    for k, (params, torch_optimizer) in enumerate(members):
        for n, p in params.items():
            torch.testing.assert_close(stacked[n][k], p.detach(), rtol=1e-5, atol=1e-6)
            mine = optimizer.member_state(k, n)
            theirs = torch_optimizer.state[p]
            assert mine.keys() == theirs.keys()
            for key in theirs:
                torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-6)


def test_stacked_optimizer_state_round_trips_through_torch_format() -> None:
    optimizer = StackedOptimizer(torch.optim.Adam, {"w": 0})
    groups = [[{"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                "amsgrad": False}]] * 2  # fmt: skip
    stacked = {"w": torch.zeros(2, 3)}
    optimizer.step(stacked, {"w": torch.tensor([[1.0, 2, 3], [4, 5, 6]])}, groups)
    states = [{"w": optimizer.member_state(k, "w")} for k in (1, 0)]
    reloaded = StackedOptimizer(torch.optim.Adam, {"w": 0})
    reloaded.load_member_states(states)
    torch.testing.assert_close(
        reloaded.state["w"]["exp_avg"], optimizer.state["w"]["exp_avg"].flip(0)
    )
    assert reloaded.member_state(0, "w")["step"].item() == 1.0


# --- populations against runs alone ------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_a_population_gives_each_member_what_training_it_alone_gives(model: str) -> None:
    setup = make_setup(MODELS[model])
    assert population_refusal(setup) is None
    ended: list[int] = []
    members = mix_members()
    for i, member in enumerate(members):
        member.on_end = lambda run, i=i: ended.append(i)
    runs = train_population(setup, members, EPOCHS, lr_threshold=LR_THRESHOLD)
    sequential = [alone(setup, m, lr_threshold=LR_THRESHOLD) for m in members]
    val_size = len(setup.bundle.val)
    for population_run, sequential_run in zip(runs, sequential, strict=True):
        assert_same_run(population_run, sequential_run, val_size)
    statuses = [run.status for run in runs]
    assert statuses == ["pruned", "lr_threshold", *["completed"] * 4, "diverged"]
    assert sorted(ended) == list(range(len(members)))  # each told once, when it ended
    assert ended[0] == len(members) - 1  # the diverged member left first, in epoch 1


@pytest.mark.parametrize("optimizer", [{"name": "adam"}, {"name": "adamw", "weight_decay": 0.01}])
def test_adam_populations_match_runs_alone(optimizer: dict) -> None:
    setup = make_setup(MODELS["mlp with dropout"], optimizer)
    members = [Member(parse_schedule(s), lr / 50) for s, lr in MIX[:4]]
    runs = train_population(setup, members, 2)
    for member, run in zip(members, runs, strict=True):
        sequential = train(setup, member.schedule, member.base_lr, 2)
        assert_same_run(run, sequential, len(setup.bundle.val))


def test_a_stop_mid_population_resumes_every_member_exactly(tmp_path: Path) -> None:
    setup = make_setup(MODELS["mlp with dropout"])
    uninterrupted = train_population(setup, mix_members(), EPOCHS)

    def stop_after_epoch_1(epoch: int, record: dict[str, float]) -> None:
        if epoch == 0:
            request_stop()  # as SIGTERM does: the population stops before epoch 2

    members = mix_members(tmp_path)
    members[2].on_epoch = stop_after_epoch_1
    try:
        with pytest.raises(StopRequested):
            train_population(setup, members, EPOCHS)
    finally:
        clear_stop_request()
    saved = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert saved == [f"member{i}.pt" for i in range(len(MIX) - 1)]  # not the diverged one
    copies = tmp_path / "copies"
    copies.mkdir()
    for path in tmp_path.glob("*.pt"):
        (copies / path.name).write_bytes(path.read_bytes())

    resumed = train_population(setup, mix_members(tmp_path), EPOCHS)
    alone_members = mix_members(copies)
    for i, (run, expected) in enumerate(zip(resumed, uninterrupted, strict=True)):
        assert_same_run(run, expected, len(setup.bundle.val))
        assert run.resumed_from == (1 if i < len(MIX) - 1 else None)
        assert_same_run(alone(setup, alone_members[i]), expected, len(setup.bundle.val))


def test_members_resuming_from_different_epochs_train_in_groups(tmp_path: Path) -> None:
    setup = make_setup(MODELS["mlp with dropout"])
    members = [Member(parse_schedule(s), lr) for s, lr in MIX[1:5]]
    expected = [train(setup, m.schedule, m.base_lr, EPOCHS) for m in members]
    members[0].checkpoint = tmp_path / "a.pt"  # one epoch done
    members[1].checkpoint = tmp_path / "b.pt"  # two epochs done
    train(setup, members[0].schedule, members[0].base_lr, 1, checkpoint=members[0].checkpoint)
    train(setup, members[1].schedule, members[1].base_lr, 2, checkpoint=members[1].checkpoint)
    runs = train_population(setup, members, EPOCHS)
    assert [run.resumed_from for run in runs] == [1, 2, None, None]
    for run, sequential in zip(runs, expected, strict=True):
        assert_same_run(run, sequential, len(setup.bundle.val))


def test_a_stop_reason_mid_epoch_prunes_every_member_where_a_run_alone_stops() -> None:
    setup = make_setup(MODELS["mlp with dropout"])

    def cancelled_after(batches: int):
        looks = iter(range(10**6))
        return lambda: "job cancelled" if next(looks) >= batches else None

    members = [Member(parse_schedule(s), lr) for s, lr in MIX[:3]]
    runs = train_population(
        setup, members, EPOCHS, stop_reason=cancelled_after(15), stop_check_s=0.0
    )
    for member, run in zip(members, runs, strict=True):
        sequential = train(
            setup,
            member.schedule,
            member.base_lr,
            EPOCHS,
            stop_reason=cancelled_after(15),
            stop_check_s=0.0,
        )
        assert (run.status, run.reason) == ("pruned", "job cancelled")
        assert_same_run(run, sequential, len(setup.bundle.val))
        assert len(run.lr_steps) == 15


def test_an_error_in_a_hook_ends_the_population_after_its_checkpoints(tmp_path: Path) -> None:
    setup = make_setup(MODELS["mlp with dropout"])
    members = mix_members(tmp_path)[1:4]

    def broken(epoch: int, record: dict[str, float]) -> None:
        raise RuntimeError("the trial's storage is down")

    members[0].on_epoch = broken
    with pytest.raises(RuntimeError, match="storage is down"):
        train_population(setup, members, EPOCHS)
    for member in members:
        assert torch.load(member.checkpoint, weights_only=True)["epoch"] == 0


# --- jobs that cannot be stacked ---------------------------------------------------------------


def test_a_user_task_trains_one_run_at_a_time_and_says_why_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task = Blobs(hidden=8)
    setup = TrainingSetup.from_spec(task_job(task, device="cpu"), task=task)
    reason = population_refusal(setup)
    assert reason is not None and "user code" in reason
    members = [Member(parse_schedule(s), lr) for s, lr in MIX[:3]]
    with caplog.at_level(logging.INFO, logger="lrtune.population"):
        runs = train_population(setup, members, 2)
    assert [r.getMessage() for r in caplog.records if r.name == "lrtune.population"] == [
        f"training 3 runs one at a time: {reason}"
    ]
    for member, run in zip(members, runs, strict=True):
        assert run == train(setup, member.schedule, member.base_lr, 2)


@pytest.mark.parametrize(
    ("optimizer", "lr_free", "expected"),
    [
        ({"name": "rmsprop"}, None, "optimizer RMSprop has no functional population form"),
        (None, "prodigy", "learning-rate-free optimizer prodigy"),
    ],
)
def test_refusals_name_what_cannot_be_stacked(optimizer, lr_free, expected: str) -> None:
    setup = make_setup(MODELS["mlp with dropout"], optimizer)
    assert expected in population_refusal(setup, lr_free=lr_free)


def test_population_size_is_the_cap_on_the_cpu() -> None:
    assert population_size(make_setup(MODELS["mlp with dropout"]), 8) == 8


def sequential_model(*layers: dict) -> dict:
    return {"name": "sequential", "params": {"layers": list(layers)}}


def test_a_layer_without_a_fused_form_runs_per_member_under_vmap() -> None:
    model = sequential_model(
        {"type": "linear", "out_features": 32},
        {"type": "layernorm"},  # no fused form: vmapped on its own
        {"type": "relu"},
        {"type": "dropout", "p": 0.2},
        {"type": "linear", "out_features": 10},
    )
    setup = make_setup(model)
    assert population_refusal(setup) is None
    members = [Member(parse_schedule(s), lr) for s, lr in MIX[:3]]
    for member, run in zip(members, train_population(setup, members, 2), strict=True):
        assert_same_run(
            run, train(setup, member.schedule, member.base_lr, 2), len(setup.bundle.val)
        )


def test_dropout_inside_a_vmapped_layer_is_refused_and_trains_one_at_a_time() -> None:
    model = sequential_model(
        {"type": "reshape", "shape": [8, 8]},
        {"type": "transformer_encoder_layer", "nhead": 2, "dim_feedforward": 16, "dropout": 0.1},
        {"type": "sequence_pool", "mode": "mean"},
        {"type": "linear", "out_features": 10},
    )
    setup = make_setup(model)
    assert "TransformerEncoderLayer has dropout inside" in population_refusal(setup)
    members = [Member(parse_schedule(s), lr) for s, lr in MIX[:2]]
    for member, run in zip(members, train_population(setup, members, 1), strict=True):
        assert run == train(setup, member.schedule, member.base_lr, 1)
