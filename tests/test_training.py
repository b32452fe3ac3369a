from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from lrtune._pydantic import run_length_decode, run_length_encode
from lrtune.schedules import FAMILIES, parse_schedule, preview
from lrtune.spec import UNIT_CHECK_S, JobSpec
from lrtune.training import (
    StopRequested,
    TrainingSetup,
    clear_stop_request,
    request_stop,
    train,
)

EXAMPLE_SCHEDULES = {
    "constant": {},
    "step": {"step_size": 2, "gamma": 0.5},
    "multistep": {"milestones": [1, 3], "gamma": 0.3},
    "exponential": {"gamma": 0.7},
    "time_decay": {"decay": 0.5},
    "cosine": {"T_max": 4, "eta_min": 1e-4},
    "cosine_warm_restarts": {"T_0": 2, "T_mult": 1},
    "onecycle": {"max_lr": 0.2, "pct_start": 0.3},
    "cyclic": {"base_lr": 0.01, "max_lr": 0.2, "step_size_up": 3},
    "plateau": {"factor": 0.5, "patience": 0},
}


def make_setup(model: str = "logreg", dataset: str = "wine", **extra) -> TrainingSetup:
    spec = JobSpec.model_validate(
        {
            "model": {"name": model, **extra.pop("model_extra", {})},
            "dataset": {"name": dataset},
            "batch_size": 32,
            **extra,
        }
    )
    return TrainingSetup.from_spec(spec, device="cpu")


def test_every_family_has_an_example() -> None:
    assert set(EXAMPLE_SCHEDULES) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("warmup", [False, True])
def test_training_steps_the_scheduler_as_its_preview_says(family: str, warmup: bool) -> None:
    if warmup and family == "onecycle":
        pytest.skip("one-cycle has its own warm-up")
    setup = make_setup()
    params = dict(EXAMPLE_SCHEDULES[family])
    if warmup:
        params["warmup"] = {"steps": 1 if family != "cyclic" else 4, "start_factor": 0.2}
    schedule = parse_schedule({"family": family, **params})
    run = train(setup, schedule, base_lr=0.05, epochs=5)
    assert run.status == "completed" and len(run.epochs) == 5
    metrics = [e["val_loss"] for e in run.epochs]
    expected = preview(schedule, [0.05], setup.steps_per_epoch, 5, metrics=metrics)
    assert np.allclose(np.array(run.lr_steps), expected, rtol=1e-12, atol=0)


def test_lr_threshold_stops_once_every_group_is_below_it() -> None:
    setup = make_setup()
    schedule = parse_schedule({"family": "exponential", "gamma": 0.1})
    run = train(setup, schedule, base_lr=0.1, epochs=10, lr_threshold=5e-4)
    # LR after epoch e (from 1) is 0.1 * 0.1**e: 1e-2, 1e-3, 1e-4 < 5e-4 -> stop after epoch 3.
    assert run.status == "lr_threshold"
    assert len(run.epochs) == 3
    assert run.reason.endswith("after epoch 3")  # counted from 1, as the dashboard counts
    assert "5e-04" in run.reason or "0.0005" in run.reason


def test_non_finite_loss_ends_the_run_as_diverged() -> None:
    setup = make_setup(model="mlp", dataset="diabetes")  # MSE overflows; cross-entropy saturates
    run = train(setup, parse_schedule({"family": "constant"}), base_lr=1e4, epochs=5)
    assert run.status == "diverged"
    assert "non-finite" in run.reason
    assert len(run.epochs) < 5


def test_param_group_multipliers_scale_the_lr_by_prefix() -> None:
    setup = make_setup(model="mlp", param_groups=[{"prefix": "1.", "lr_mult": 0.1}])
    run = train(setup, parse_schedule({"family": "cosine", "T_max": 3}), base_lr=0.05, epochs=3)
    lrs = np.array(run.lr_steps)
    assert lrs.shape[1] == 2
    assert np.allclose(lrs[:, 1] / lrs[:, 0], 0.1)
    with pytest.raises(ValueError, match="no parameter name starts with"):
        make_setup(
            model="mlp", param_groups=[{"prefix": "encoder.", "lr_mult": 0.1}]
        ).build_optimizer(make_setup(model="mlp").build_model(), 0.1)


class Crash(Exception):
    """Stands in for the process dying after an epoch's checkpoint was written."""


@pytest.mark.parametrize("family", ["onecycle", "plateau", "cosine_warm_restarts", "cyclic"])
def test_a_run_resumed_from_its_checkpoint_ends_exactly_as_an_uninterrupted_one(
    tmp_path, family: str
) -> None:
    setup = make_setup(
        model="mlp", dataset="digits", model_extra={"params": {"hidden": [32], "dropout": 0.2}}
    )
    schedule = parse_schedule({"family": family, **EXAMPLE_SCHEDULES[family]})
    uninterrupted = train(setup, schedule, base_lr=0.05, epochs=6)

    def crash_after_epoch_2(epoch: int, record: dict) -> None:
        if epoch == 2:
            raise Crash

    checkpoint = tmp_path / "trial.pt"
    with pytest.raises(Crash):
        train(
            setup,
            schedule,
            base_lr=0.05,
            epochs=6,
            on_epoch=crash_after_epoch_2,
            checkpoint=checkpoint,
        )
    assert checkpoint.exists()
    torch.manual_seed(999)  # the resumed run must not depend on the global RNG it finds
    resumed = train(setup, schedule, base_lr=0.05, epochs=6, checkpoint=checkpoint)
    assert resumed.resumed_from == 3
    assert resumed.epochs == uninterrupted.epochs
    assert resumed.lr_steps == uninterrupted.lr_steps


def test_a_run_stopped_mid_epoch_redoes_that_epoch_and_ends_exactly_as_an_uninterrupted_one(
    tmp_path,
) -> None:
    setup = make_setup(
        model="mlp", dataset="digits", model_extra={"params": {"hidden": [32], "dropout": 0.2}}
    )
    schedule = parse_schedule({"family": "onecycle", **EXAMPLE_SCHEDULES["onecycle"]})
    uninterrupted = train(setup, schedule, base_lr=0.05, epochs=4)
    looks: list[int] = []

    def signal_in_the_third_epoch() -> None:  # a SIGTERM mid-epoch, as a worker's handler does
        looks.append(1)
        if len(looks) == 2 * setup.steps_per_epoch + 10:
            request_stop()

    checkpoint = tmp_path / "trial.pt"
    try:
        with pytest.raises(StopRequested, match="in epoch 3,"):  # messages count from 1
            train(
                setup,
                schedule,
                base_lr=0.05,
                epochs=4,
                checkpoint=checkpoint,
                stop_reason=signal_in_the_third_epoch,
                stop_check_s=0,  # look before every batch
            )
    finally:
        clear_stop_request()
    assert len(looks) == 2 * setup.steps_per_epoch + 10  # stopped at the next look, batch 11
    resumed = train(setup, schedule, base_lr=0.05, epochs=4, checkpoint=checkpoint)
    assert resumed.resumed_from == 2
    assert resumed.epochs == uninterrupted.epochs
    assert resumed.lr_steps == uninterrupted.lr_steps


def test_a_stop_reason_given_mid_epoch_ends_the_run_there_as_pruned() -> None:
    setup = make_setup()
    looks: list[int] = []

    def cancelled_in_epoch_1() -> str | None:
        looks.append(1)
        return "stopped: the job was cancelled" if len(looks) > setup.steps_per_epoch + 1 else None

    run = train(
        setup,
        parse_schedule({"family": "constant"}),
        base_lr=0.05,
        epochs=3,
        stop_reason=cancelled_in_epoch_1,
        stop_check_s=0,
    )
    assert (run.status, run.reason) == ("pruned", "stopped: the job was cancelled")
    assert len(run.epochs) == 1 and len(run.lr_steps) == setup.steps_per_epoch + 1
    # looks are timed: with the default interval (seconds) this short run never asks
    looks.clear()
    quiet = train(
        setup, parse_schedule({"family": "constant"}), 0.05, 3, stop_reason=cancelled_in_epoch_1
    )
    assert quiet.status == "completed" and looks == []


def test_checkpoints_load_with_weights_only(tmp_path) -> None:
    setup = make_setup()
    checkpoint = tmp_path / "c.pt"
    train(setup, parse_schedule({"family": "plateau"}), 0.05, 2, checkpoint=checkpoint)
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 1


def test_run_length_encoding_round_trips() -> None:
    rows = [[0.1, 0.01]] * 3 + [[0.05, 0.005]] + [[0.1, 0.01]] * 2
    packed = run_length_encode(rows)
    assert packed == [[[0.1, 0.01], 3], [[0.05, 0.005], 1], [[0.1, 0.01], 2]]
    assert run_length_decode(packed) == rows


def test_a_workers_default_look_interval_is_the_librarys() -> None:
    """``LRTUNE_UNIT_CHECK_S`` unset, a worker's units look as often as ``train()``'s do."""
    from lrtune.jobs import StoreSettings

    default = inspect.signature(train).parameters["stop_check_s"].default
    assert StoreSettings().unit_check_s == default == UNIT_CHECK_S
