from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lrtune import schedules
from lrtune.schedules import (
    FAMILIES,
    LinearWarmup,
    ScheduleDriver,
    ScheduleSpec,
    build,
    drive,
    parse_schedule,
    preview,
    to_code,
)

STEPS_PER_EPOCH = 3
EPOCHS = 8
BASE_LRS = (0.1, 0.3)
METRICS = (1.0, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8, 0.8)

EXAMPLES: dict[str, dict[str, Any]] = {
    "constant": {"family": "constant"},
    "step": {"family": "step", "step_size": 2, "gamma": 0.5},
    "multistep": {"family": "multistep", "milestones": [2, 5], "gamma": 0.3},
    "exponential": {"family": "exponential", "gamma": 0.8},
    "time_decay": {"family": "time_decay", "decay": 0.5},
    "cosine": {"family": "cosine", "T_max": 6, "eta_min": 0.001},
    "cosine_warm_restarts": {"family": "cosine_warm_restarts", "T_0": 2, "T_mult": 2},
    "onecycle": {"family": "onecycle", "max_lr": 0.5, "three_phase": True},
    "cyclic": {"family": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2},
    "plateau": {"family": "plateau", "patience": 1, "factor": 0.5, "min_lr": 0.02},
}
WARMUP = {"steps": 3, "start_factor": 0.2}
# Every family, and every family with a warm-up (onecycle rejects one).
VARIANTS: dict[str, dict[str, Any]] = {
    **EXAMPLES,
    **{
        f"{family}+warmup": {**data, "warmup": WARMUP}
        for family, data in EXAMPLES.items()
        if family != "onecycle"
    },
}


def _spec(data: dict[str, Any]) -> ScheduleSpec:
    return parse_schedule(data)


def _metrics_for(spec: ScheduleSpec, epochs: int = EPOCHS) -> list[float] | None:
    return list(METRICS[:epochs]) if spec.family == "plateau" else None


def _make_optimizer(base_lrs: Sequence[float] = BASE_LRS) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.ones(2))], "lr": lr} for lr in base_lrs]
    optimizer = torch.optim.SGD(groups, lr=base_lrs[0], momentum=0.9)
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = torch.full_like(param, 0.5)
    return optimizer


def _train_loader(steps_per_epoch: int) -> torch.utils.data.DataLoader:
    """A real loader with ``steps_per_epoch`` batches, for a snippet's ``len(train_loader)``."""
    data = torch.utils.data.TensorDataset(torch.zeros(2 * steps_per_epoch, 1))
    return torch.utils.data.DataLoader(data, batch_size=2)


def _group_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [float(group["lr"]) for group in optimizer.param_groups]


def _checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _run(spec: ScheduleSpec, interrupt_after_event: int | None = None) -> np.ndarray:
    """Drive a real optimizer; optionally checkpoint and resume into fresh objects."""
    optimizer = _make_optimizer()
    driver = drive(spec, optimizer, STEPS_PER_EPOCH, EPOCHS)
    metrics = METRICS
    lrs: list[list[float]] = []
    events = 0

    def maybe_resume() -> None:
        nonlocal optimizer, driver, events
        events += 1
        if events != interrupt_after_event:
            return
        saved = _checkpoint({"optimizer": optimizer.state_dict(), "schedule": driver.state_dict()})
        optimizer = _make_optimizer()
        driver = drive(spec, optimizer, STEPS_PER_EPOCH, EPOCHS)
        optimizer.load_state_dict(saved["optimizer"])
        driver.load_state_dict(saved["schedule"])

    for epoch in range(EPOCHS):
        for _ in range(STEPS_PER_EPOCH):
            lrs.append([float(lr) for lr in driver.scheduler.get_last_lr()])
            assert lrs[-1] == _group_lrs(optimizer)
            optimizer.step()
            driver.after_batch()
            maybe_resume()
        driver.after_epoch(metrics[epoch])
        maybe_resume()
    return np.array(lrs)


def _lr(spec_data: dict[str, Any], lr: float, epochs: int, **kwargs: Any) -> np.ndarray:
    spec = _spec(spec_data)
    steps_per_epoch = kwargs.pop("steps_per_epoch", 1)
    return preview(spec, [lr], steps_per_epoch, epochs, **kwargs)[:, 0]


# --- closed forms -------------------------------------------------------------------------


def test_step_lr_closed_form() -> None:
    lrs = _lr({"family": "step", "step_size": 30, "gamma": 0.1}, 0.05, 90)
    np.testing.assert_allclose(lrs[:30], 0.05)
    np.testing.assert_allclose(lrs[30:60], 0.005)
    np.testing.assert_allclose(lrs[60:90], 0.0005)


def test_multistep_closed_form() -> None:
    lrs = _lr({"family": "multistep", "milestones": [3, 7], "gamma": 0.5}, 0.2, 10)
    expected = [0.2] * 3 + [0.1] * 4 + [0.05] * 3
    np.testing.assert_allclose(lrs, expected)


def test_exponential_closed_form() -> None:
    lrs = _lr({"family": "exponential", "gamma": 0.9}, 0.1, 20)
    np.testing.assert_allclose(lrs, 0.1 * 0.9 ** np.arange(20), rtol=1e-12)


def test_time_decay_closed_form() -> None:
    lrs = _lr({"family": "time_decay", "decay": 0.25}, 0.1, 20)
    np.testing.assert_allclose(lrs, 0.1 / (1 + 0.25 * np.arange(20)), rtol=1e-12)


def test_constant_keeps_the_optimizer_lr() -> None:
    np.testing.assert_allclose(_lr({"family": "constant"}, 0.03, 12), 0.03)


def test_cosine_closed_form() -> None:
    lr, eta_min, t_max = 0.1, 0.001, 10
    lrs = _lr({"family": "cosine", "T_max": t_max, "eta_min": eta_min}, lr, t_max + 1)
    t = np.arange(t_max + 1)
    expected = eta_min + (lr - eta_min) * (1 + np.cos(np.pi * t / t_max)) / 2
    np.testing.assert_allclose(lrs, expected, rtol=1e-9, atol=1e-15)


def test_warm_restarts_restart_at_t0_and_t0_times_1_plus_tmult() -> None:
    t_0, t_mult, lr = 4, 2, 0.1
    spec = {"family": "cosine_warm_restarts", "T_0": t_0, "T_mult": t_mult}
    lrs = _lr(spec, lr, 30)
    first, second = t_0, t_0 * (1 + t_mult)
    assert lrs[first] == pytest.approx(lr)
    assert lrs[second] == pytest.approx(lr)
    assert lrs[first - 1] < lr and lrs[second - 1] < lr
    cycle = np.arange(t_0 * t_mult)
    expected = lr * (1 + np.cos(np.pi * cycle / (t_0 * t_mult))) / 2
    np.testing.assert_allclose(lrs[first:second], expected, rtol=1e-12, atol=1e-15)


def test_onecycle_starts_peaks_and_ends_as_configured() -> None:
    max_lr, div, final_div, pct = 0.5, 25.0, 1e4, 0.3
    spec = {
        "family": "onecycle",
        "max_lr": max_lr,
        "pct_start": pct,
        "div_factor": div,
        "final_div_factor": final_div,
    }
    lrs = _lr(spec, 0.01, 10, steps_per_epoch=10)
    total = 100
    assert lrs[0] == pytest.approx(max_lr / div)
    assert lrs.max() == pytest.approx(max_lr)
    assert abs(int(np.argmax(lrs)) - pct * total) <= 1
    assert lrs[-1] == pytest.approx(max_lr / div / final_div)
    assert np.all(np.diff(lrs[: int(pct * total)]) > 0)
    assert np.all(np.diff(lrs[int(pct * total) :]) < 0)


def test_cyclic_triangular_goes_up_then_down() -> None:
    spec = {"family": "cyclic", "base_lr": 0.01, "max_lr": 0.05, "step_size_up": 4}
    lrs = _lr(spec, 0.5, 2, steps_per_epoch=8)
    up = 0.01 + 0.01 * np.arange(5)
    down = 0.05 - 0.01 * np.arange(1, 4)
    np.testing.assert_allclose(lrs[:8], np.concatenate([up, down]), rtol=1e-12)
    np.testing.assert_allclose(lrs[8:], lrs[:8], rtol=1e-12)


def test_plateau_reduces_after_patience_plus_one_bad_epochs_down_to_min_lr() -> None:
    patience = 2
    spec = {"family": "plateau", "patience": patience, "factor": 0.5, "min_lr": 0.03}
    metrics = [1.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    lrs = _lr(spec, 0.1, len(metrics), metrics=metrics)
    # Best is epoch 1; epochs 2, 3, 4 do not improve, so epoch 5 runs at half the lr.
    np.testing.assert_allclose(lrs[:5], 0.1)
    np.testing.assert_allclose(lrs[5:8], 0.05)
    np.testing.assert_allclose(lrs[8:], 0.03)


def test_plateau_max_mode_watches_increases() -> None:
    spec = {"family": "plateau", "mode": "max", "patience": 0, "factor": 0.1}
    lrs = _lr(spec, 1.0, 4, metrics=[0.5, 0.6, 0.6, 0.7])
    np.testing.assert_allclose(lrs, [1.0, 1.0, 1.0, 0.1])


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("onecycle", "cyclic")])
def test_warmup_ramps_linearly_then_main_schedule_starts(family: str) -> None:
    steps, start_factor, lr = 4, 0.1, 0.2
    data = {**EXAMPLES[family], "warmup": {"steps": steps, "start_factor": start_factor}}
    spec = _spec(data)
    epochs = 12
    metrics = [1.0, 0.9, 0.9, 0.9, 0.8, 0.7, 0.7, 0.7, 0.7, 0.6, 0.6, 0.6]
    with_warmup = preview(spec, [lr], 1, epochs, metrics=metrics if family == "plateau" else None)
    ramp = lr * (start_factor + (1 - start_factor) * np.arange(steps) / steps)
    np.testing.assert_allclose(with_warmup[:steps, 0], ramp, rtol=1e-12)
    main = _spec(EXAMPLES[family])
    plain = preview(
        main, [lr], 1, epochs - steps, metrics=metrics[steps:] if family == "plateau" else None
    )
    np.testing.assert_allclose(with_warmup[steps:, 0], plain[:, 0], rtol=1e-12)


def test_cyclic_warmup_ramps_in_batches_to_base_lr() -> None:
    data = {**EXAMPLES["cyclic"], "warmup": {"steps": 5, "start_factor": 0.2}}
    lrs = _lr(data, 0.5, 4, steps_per_epoch=5)
    np.testing.assert_allclose(lrs[:5], 0.01 * (0.2 + 0.8 * np.arange(5) / 5), rtol=1e-12)
    np.testing.assert_allclose(lrs[5:], _lr(EXAMPLES["cyclic"], 0.5, 3, steps_per_epoch=5))


@pytest.mark.parametrize(
    ("warmup", "expected"),
    [(None, [0.01, 0.055, 0.1, 0.055]), ({"steps": 2, "start_factor": 0.5}, [0.005, 0.0075, 0.01])],
)
def test_cyclic_starts_at_base_lr_on_an_optimizer_scheduled_before(
    warmup: dict[str, Any] | None, expected: list[float]
) -> None:
    spec = _spec({**EXAMPLES["cyclic"], "warmup": warmup})
    for use_snippet in (False, True):
        optimizer = _make_optimizer([0.5])
        build(_spec(EXAMPLES["constant"]), optimizer, 1, 1)  # leaves initial_lr = 0.5 behind
        namespace: dict[str, Any] = {"optimizer": optimizer}
        if use_snippet:
            exec(to_code(spec), namespace)
            step = namespace["scheduler"].step
        else:
            step = drive(spec, optimizer, len(expected), 1).after_batch
        lrs = []
        for _ in expected:
            lrs.append(_group_lrs(optimizer)[0])
            optimizer.step()
            step()
        np.testing.assert_allclose(lrs, expected, rtol=1e-12)


def test_epoch_interval_repeats_each_epoch_lr_per_batch() -> None:
    spec = _spec({"family": "exponential", "gamma": 0.5})
    per_batch = preview(spec, [0.1], steps_per_epoch=5, epochs=4)
    per_epoch = preview(spec, [0.1], steps_per_epoch=1, epochs=4)
    assert per_batch.shape == (20, 1)
    np.testing.assert_array_equal(per_batch, np.repeat(per_epoch, 5, axis=0))


def test_interval_per_family() -> None:
    for family, data in EXAMPLES.items():
        expected = "batch" if family in ("onecycle", "cyclic") else "epoch"
        assert _spec(data).interval == expected


# --- every family: preview, drive, checkpoint ---------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_preview_matches_get_last_lr_of_a_driven_scheduler(name: str) -> None:
    spec = _spec(VARIANTS[name])
    expected = preview(spec, BASE_LRS, STEPS_PER_EPOCH, EPOCHS, metrics=_metrics_for(spec))
    np.testing.assert_array_equal(_run(spec), expected)


@pytest.mark.parametrize("interrupt_after_event", [5, 12, 22])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_resume_from_state_dict_continues_identically(
    name: str, interrupt_after_event: int
) -> None:
    spec = _spec(VARIANTS[name])
    np.testing.assert_array_equal(_run(spec, interrupt_after_event), _run(spec))


def test_examples_cover_every_family_in_order() -> None:
    assert tuple(EXAMPLES) == FAMILIES
    assert FAMILIES == (
        "constant",
        "step",
        "multistep",
        "exponential",
        "time_decay",
        "cosine",
        "cosine_warm_restarts",
        "onecycle",
        "cyclic",
        "plateau",
    )


@pytest.mark.parametrize("family", ["onecycle", "cyclic", "step"])
def test_param_groups_keep_their_lr_ratio(family: str) -> None:
    lrs = preview(_spec(EXAMPLES[family]), [1e-3, 1e-2], 4, 6)
    np.testing.assert_allclose(lrs[:, 1] / lrs[:, 0], 10.0, rtol=1e-9)


# One LR for every family: the LR of a parameter at multiplier 1 (eta_min 0: torch's cosine
# eta_min is one scalar for every group).
SHAPE_VARIANTS = {
    name: {**data, "eta_min": 0.0} if "eta_min" in data else data for name, data in VARIANTS.items()
}
MULTIPLIERS = (0.1, 3.0, 1.0)  # group 0 is not at multiplier 1


@pytest.mark.parametrize("name", list(SHAPE_VARIANTS))
def test_group_i_runs_at_the_schedule_times_its_multiplier(name: str) -> None:
    spec, lr = _spec(SHAPE_VARIANTS[name]), 0.05
    metrics = _metrics_for(spec)
    shape = preview(spec, [lr], STEPS_PER_EPOCH, EPOCHS, metrics, group_multipliers=[1.0])[:, 0]
    lrs = preview(
        spec,
        [lr * m for m in MULTIPLIERS],
        STEPS_PER_EPOCH,
        EPOCHS,
        metrics,
        group_multipliers=MULTIPLIERS,
    )
    np.testing.assert_allclose(lrs, shape[:, None] * np.array(MULTIPLIERS), rtol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_without_a_default_group_runs_every_group_at_lr_times_its_multiplier(
    family: str,
) -> None:
    from lrtune.spec import JobSpec
    from lrtune.training import TrainingSetup, train

    torch.set_num_threads(1)
    job = JobSpec.model_validate(
        {
            "model": {"name": "mlp", "params": {"hidden": [8]}},
            "dataset": {"name": "wine"},
            "batch_size": 32,
            # mlp parameters are 1.* and 3.*: every one matches a prefix
            "param_groups": [{"prefix": "1.", "lr_mult": 0.1}, {"prefix": "3.", "lr_mult": 2.0}],
        }
    )
    setup = TrainingSetup.from_spec(job, device="cpu")
    assert setup.group_multipliers == [0.1, 2.0]
    spec, lr, epochs = _spec(SHAPE_VARIANTS[family]), 0.05, 4
    run = train(setup, spec, base_lr=lr, epochs=epochs)
    metrics = [e["val_loss"] for e in run.epochs] if family == "plateau" else None
    shape = preview(spec, [lr], setup.steps_per_epoch, epochs, metrics)[:, 0]
    expected = shape[:, None] * np.array([0.1, 2.0])
    np.testing.assert_allclose(np.array(run.lr_steps), expected, rtol=1e-12)


def test_lr_multipliers_must_match_the_param_groups() -> None:
    with pytest.raises(ValueError, match="one value per param group"):
        build(_spec(EXAMPLES["onecycle"]), _make_optimizer(), 4, 4, group_multipliers=[1.0])


@pytest.mark.parametrize("family", ["onecycle", "cyclic", "plateau", "cosine"])
@pytest.mark.parametrize("groups", [1, 3])
def test_to_code_works_wherever_build_works_at_lr_zero(family: str, groups: int) -> None:
    spec = _spec(EXAMPLES[family])  # plateau with min_lr > 0
    base_lrs = [0.0] * groups
    expected = preview(spec, base_lrs, STEPS_PER_EPOCH, EPOCHS, metrics=_metrics_for(spec))
    optimizer = _make_optimizer(base_lrs)
    namespace: dict[str, Any] = {
        "optimizer": optimizer,
        "train_loader": _train_loader(STEPS_PER_EPOCH),
    }
    exec(to_code(spec, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH), namespace)
    lrs = []
    for epoch in range(EPOCHS):
        for _ in range(STEPS_PER_EPOCH):
            lrs.append(_group_lrs(optimizer))
            optimizer.step()
            if spec.interval == "batch":
                namespace["scheduler"].step()
        if family == "plateau":
            namespace["scheduler"].step(METRICS[epoch])
        elif spec.interval == "epoch":
            namespace["scheduler"].step()
    np.testing.assert_array_equal(np.array(lrs), expected)


def test_a_zero_group_0_beside_a_non_zero_group_has_no_ratio() -> None:
    with pytest.raises(ValueError, match="group 0 has lr 0"):
        build(_spec(EXAMPLES["onecycle"]), _make_optimizer([0.0, 0.1]), 4, 4)
    build(_spec(EXAMPLES["onecycle"]), _make_optimizer([0.0, 0.1]), 4, 4, group_multipliers=[1, 2])


def test_plateau_min_lr_is_scaled_per_group() -> None:
    spec = _spec({"family": "plateau", "patience": 0, "factor": 0.1, "min_lr": 0.01})
    lrs = preview(spec, [0.1, 1.0], 1, 5, metrics=[1.0] * 5)
    np.testing.assert_allclose(lrs[-1], [0.01, 0.1])


def test_cosine_eta_min_is_not_scaled_per_group() -> None:
    spec = _spec({"family": "cosine", "T_max": 4, "eta_min": 0.001})
    lrs = preview(spec, [0.1, 1.0], 1, 5)
    np.testing.assert_allclose(lrs[4], [0.001, 0.001])


def test_onecycle_on_sgd_without_momentum_leaves_momentum_off() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    driver = drive(_spec(EXAMPLES["onecycle"]), optimizer, 4, 2)
    for _ in range(8):
        optimizer.step()
        driver.after_batch()
    assert optimizer.param_groups[0]["momentum"] == 0


def test_onecycle_cycles_adam_beta1_like_torch() -> None:
    optimizer = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    driver = drive(_spec(EXAMPLES["onecycle"]), optimizer, 4, 2)
    betas = []
    for _ in range(8):
        betas.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        driver.after_batch()
    assert betas[0] == pytest.approx(0.95)
    assert min(betas) < 0.9


def test_cyclic_on_adam_leaves_betas_alone_and_cycles_sgd_momentum() -> None:
    adam = torch.optim.Adam(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)
    spec = _spec(EXAMPLES["cyclic"])
    adam_driver, sgd_driver = drive(spec, adam, 4, 2), drive(spec, sgd, 4, 2)
    momenta = []
    for _ in range(4):
        adam.step()
        sgd.step()
        adam_driver.after_batch()
        sgd_driver.after_batch()
        momenta.append(sgd.param_groups[0]["momentum"])
        assert adam.param_groups[0]["betas"] == (0.9, 0.999)
    assert min(momenta) < 0.9


def test_onecycle_too_short_to_ramp_up_is_a_clear_error() -> None:
    optimizer = _make_optimizer()
    with pytest.raises(ValueError, match="pct_start"):
        build(_spec({"family": "onecycle", "max_lr": 0.1, "pct_start": 0.25}), optimizer, 2, 2)


def test_driver_needs_a_metric_for_plateau() -> None:
    for data in (EXAMPLES["plateau"], VARIANTS["plateau+warmup"]):
        driver = drive(_spec(data), _make_optimizer(), 1, 5)
        with pytest.raises(ValueError, match="metric"):
            driver.after_epoch()


def test_driver_steps_only_in_its_interval() -> None:
    optimizer = _make_optimizer()
    epoch_driver = drive(_spec(EXAMPLES["exponential"]), optimizer, 10, 2)
    for _ in range(10):
        optimizer.step()
        epoch_driver.after_batch()
    assert epoch_driver.last_lrs() == pytest.approx(list(BASE_LRS))
    epoch_driver.after_epoch(metric=1.0)
    assert epoch_driver.last_lrs() == pytest.approx([0.08, 0.24])

    optimizer = _make_optimizer()
    batch_driver = drive(_spec(EXAMPLES["cyclic"]), optimizer, 10, 2)
    before = batch_driver.last_lrs()
    batch_driver.after_epoch(metric=1.0)
    assert batch_driver.last_lrs() == before


def test_driver_rejects_a_state_dict_of_another_family() -> None:
    state = drive(_spec(EXAMPLES["step"]), _make_optimizer(), 1, 5).state_dict()
    driver = drive(_spec(EXAMPLES["exponential"]), _make_optimizer(), 1, 5)
    with pytest.raises(ValueError, match="'step'"):
        driver.load_state_dict(state)
    assert isinstance(driver, ScheduleDriver) and driver.spec.family == "exponential"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"epochs": 0}, "epochs"),
        ({"base_lrs": []}, "base_lrs"),
        ({"metrics": [1.0]}, "metrics"),
    ],
)
def test_preview_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"base_lrs": [0.1], "steps_per_epoch": 2, "epochs": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        preview(_spec(EXAMPLES["step"]), **arguments)


def test_preview_of_plateau_needs_one_metric_per_epoch() -> None:
    spec = _spec(EXAMPLES["plateau"])
    with pytest.raises(ValueError, match="metrics"):
        preview(spec, [0.1], 1, 3)
    with pytest.raises(ValueError, match="metrics"):
        preview(spec, [0.1], 1, 3, metrics=[1.0, 2.0])


# --- to_code ------------------------------------------------------------------------------


def _run_snippet(
    spec: ScheduleSpec,
    code: str,
    optimizer_name: str,
    epochs: int = EPOCHS,
    steps_per_epoch: int = STEPS_PER_EPOCH,
    metrics: Sequence[float] = METRICS,
) -> np.ndarray:
    """Exec ``code`` with a ``train_loader`` of ``steps_per_epoch`` batches (and the run's
    variables already bound, for a snippet that only refers to them); step it for ``epochs``
    (``plateau`` with ``metrics``, one per epoch)."""
    optimizer = _make_optimizer()
    namespace: dict[str, Any] = {
        optimizer_name: optimizer,
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "train_loader": _train_loader(steps_per_epoch),
    }
    exec(code, namespace)
    lrs = []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            lrs.append(_group_lrs(optimizer))
            optimizer.step()
            if "per batch" in code:
                namespace["scheduler"].step()
        if spec.family == "plateau" and spec.warmup is not None:
            if epoch < spec.warmup.steps:
                namespace["warmup"].step()
            else:
                namespace["plateau"].step(metrics[epoch])
        elif spec.family == "plateau":
            namespace["scheduler"].step(metrics[epoch])
        elif "per epoch" in code:
            namespace["scheduler"].step()
    return np.array(lrs)


@pytest.mark.parametrize("sizes_given", [False, True])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_to_code_builds_the_same_schedule(name: str, sizes_given: bool) -> None:
    spec = _spec(VARIANTS[name])
    sizes = {"epochs": EPOCHS, "steps_per_epoch": STEPS_PER_EPOCH} if sizes_given else {}
    code = to_code(spec, optimizer_name="opt", **sizes)
    assert code.startswith("from torch.optim import lr_scheduler\n")
    assert ("per batch" in code) == (spec.interval == "batch")
    expected = preview(spec, BASE_LRS, STEPS_PER_EPOCH, EPOCHS, metrics=_metrics_for(spec))
    np.testing.assert_allclose(_run_snippet(spec, code, "opt"), expected, rtol=1e-12)


def test_to_code_refers_to_epochs_and_steps_per_epoch_when_not_given() -> None:
    spec = _spec(EXAMPLES["onecycle"])
    assert "total_steps=epochs * steps_per_epoch" in to_code(spec)
    assert "epochs =" not in to_code(spec) and "steps_per_epoch =" not in to_code(spec)
    assert "steps_per_epoch" not in to_code(_spec(EXAMPLES["step"]))


def test_to_code_for_a_run_declares_it_and_writes_each_length_as_a_fraction_of_it() -> None:
    onecycle = to_code(_spec(EXAMPLES["onecycle"]), epochs=10, steps_per_epoch=7)
    assert onecycle.startswith(
        "from torch.optim import lr_scheduler\n\n"
        "epochs = 10  # written for 10 epochs of 7 steps; set your own\n"
        "steps_per_epoch = len(train_loader)  # 7 then\n\n"
    )
    assert "total_steps=epochs * steps_per_epoch" in onecycle
    cosine = _spec({"family": "cosine", "T_max": 4, "warmup": {"steps": 2}})
    code = to_code(cosine, epochs=6, steps_per_epoch=5, tuned=True)
    assert "\nepochs = 6  # tuned for 6 epochs of 5 steps; set your own\n" in code
    assert "steps_per_epoch" not in code  # stepped per epoch: its lengths are in epochs
    assert "T_max=max(1, round(4 / 6 * epochs))" in code
    assert "warmup_steps = max(1, round(2 / 6 * epochs))" in code
    longer = to_code(cosine, epochs=6, steps_per_epoch=5, tuned=True, run_epochs=9)
    assert "\nepochs = 9  # tuned for 6 epochs of 5 steps; set your own\n" in longer
    fixed = to_code(
        _spec(EXAMPLES["cyclic"]), epochs=6, steps_per_epoch=5, tuned=True, run_steps_per_epoch=8
    )
    assert "\nsteps_per_epoch = 8  # len(train_loader); 5 when tuned\n" in fixed


# Lengths that are no simple fraction of the runs below, for every family, with and without
# a warm-up (in epochs, or in batches for cyclic).
AWKWARD: dict[str, dict[str, Any]] = {
    "constant": {"family": "constant"},
    "step": {"family": "step", "step_size": 3, "gamma": 0.5},
    "multistep": {"family": "multistep", "milestones": [1, 4, 6], "gamma": 0.5},
    "exponential": {"family": "exponential", "gamma": 0.7},
    "time_decay": {"family": "time_decay", "decay": 0.3},
    "cosine": {"family": "cosine", "T_max": 5, "eta_min": 0.001},
    "cosine_warm_restarts": {"family": "cosine_warm_restarts", "T_0": 3, "T_mult": 2},
    "onecycle": {"family": "onecycle", "max_lr": 0.5, "pct_start": 0.37},
    "cyclic": {
        "family": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4, "step_size_down": 7
    },
    "plateau": {"family": "plateau", "patience": 1, "factor": 0.5},
}  # fmt: skip
AWKWARD_VARIANTS = {
    **AWKWARD,
    **{
        f"{family}+warmup": {**data, "warmup": {"steps": 5 if family == "cyclic" else 2}}
        for family, data in AWKWARD.items()
        if family != "onecycle"
    },
}


@pytest.mark.parametrize(("epochs", "steps_per_epoch"), [(7, 3), (13, 1), (3, 11)])
@pytest.mark.parametrize("name", list(AWKWARD_VARIANTS))
def test_rescaled_lengths_are_exactly_the_specs_at_the_run_it_was_made_for(
    name: str, epochs: int, steps_per_epoch: int
) -> None:
    """Every ``max(1, round(k / n * epochs))`` is ``k`` at ``epochs = n``: the curve is the
    spec's, step for step."""
    spec = _spec(AWKWARD_VARIANTS[name])
    code = to_code(spec, epochs=epochs, steps_per_epoch=steps_per_epoch, optimizer_name="opt")
    metrics = [1.0 / (1 + epoch // 3) for epoch in range(epochs)]  # improves every 3 epochs
    expected = preview(
        spec,
        BASE_LRS,
        steps_per_epoch,
        epochs,
        metrics=metrics if spec.family == "plateau" else None,
    )
    actual = _run_snippet(spec, code, "opt", epochs, steps_per_epoch, metrics)
    np.testing.assert_allclose(actual, expected, rtol=1e-12)


@pytest.mark.parametrize("name", list(AWKWARD_VARIANTS))
def test_a_snippet_run_for_twice_the_epochs_has_the_same_shape(name: str) -> None:
    """Rendered for 12 epochs instead of 6, each epoch-k LR of the tuned run is the LR of
    epoch 2k of the longer one (plateau's: its warm-up, its reductions follow the metric)."""
    spec = _spec(AWKWARD_VARIANTS[name])
    flat = [1.0] * 12  # no improvement: plateau reduces once its patience is out
    tuned_code = to_code(spec, epochs=6, steps_per_epoch=4, optimizer_name="opt")
    tuned = _run_snippet(spec, tuned_code, "opt", 6, 4, flat)
    longer_code = to_code(spec, epochs=6, steps_per_epoch=4, optimizer_name="opt", run_epochs=12)
    longer = _run_snippet(spec, longer_code, "opt", 12, 4, flat)
    if spec.family == "plateau":  # the warm-up rescales; the reductions wait for the metric
        tuned, longer = tuned[:8], longer[:16]
    if spec.family == "onecycle":  # torch ends each phase a step (here 1/24 of the run) early
        np.testing.assert_allclose(longer[::2], tuned, atol=0.06 * tuned.max())
        assert abs(longer.argmax(0) / len(longer) - tuned.argmax(0) / len(tuned)).max() < 1 / 24
    else:
        np.testing.assert_allclose(longer[::8], tuned[::4], rtol=1e-12)


def test_to_code_rejects_a_bad_optimizer_name() -> None:
    with pytest.raises(ValueError, match="optimizer_name"):
        to_code(_spec(EXAMPLES["step"]), optimizer_name="my optimizer")


# --- specs: validation and serialisation -------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"family": "step", "step_size": 0}, "step_size"),
        ({"family": "step", "step_size": 3, "gamma": 0.0}, "gamma"),
        ({"family": "step", "step_size": 3, "gamma": 1.5}, "gamma"),
        ({"family": "multistep", "milestones": [5, 3]}, "milestones"),
        ({"family": "multistep", "milestones": [3, 3]}, "milestones"),
        ({"family": "multistep", "milestones": [0, 3]}, "milestones"),
        ({"family": "multistep", "milestones": []}, "milestones"),
        ({"family": "multistep", "milestones": [3], "gamma": -0.1}, "gamma"),
        ({"family": "exponential", "gamma": 0.0}, "gamma"),
        ({"family": "exponential", "gamma": 1.01}, "gamma"),
        ({"family": "exponential"}, "gamma"),
        ({"family": "time_decay", "decay": 0.0}, "decay"),
        ({"family": "cosine", "T_max": 0}, "T_max"),
        ({"family": "cosine", "T_max": 5, "eta_min": -1e-3}, "eta_min"),
        ({"family": "cosine_warm_restarts", "T_0": 0}, "T_0"),
        ({"family": "cosine_warm_restarts", "T_0": 5, "T_mult": 0}, "T_mult"),
        ({"family": "cosine_warm_restarts", "T_0": 5, "T_mult": 1.5}, "T_mult"),
        ({"family": "cosine_warm_restarts", "T_0": 5, "eta_min": -1.0}, "eta_min"),
        ({"family": "onecycle", "max_lr": 0.0}, "max_lr"),
        ({"family": "onecycle", "max_lr": 0.1, "pct_start": 0.0}, "pct_start"),
        ({"family": "onecycle", "max_lr": 0.1, "pct_start": 1.0}, "pct_start"),
        ({"family": "onecycle", "max_lr": 0.1, "anneal_strategy": "exp"}, "anneal_strategy"),
        ({"family": "onecycle", "max_lr": 0.1, "div_factor": 0.5}, "div_factor"),
        ({"family": "onecycle", "max_lr": 0.1, "final_div_factor": 0.0}, "final_div_factor"),
        (
            {"family": "onecycle", "max_lr": 0.1, "pct_start": 0.6, "three_phase": True},
            "three_phase",
        ),
        ({"family": "onecycle", "max_lr": 0.1, "warmup": {"steps": 5}}, "warmup"),
        ({"family": "cyclic", "base_lr": 0.0, "max_lr": 0.1, "step_size_up": 4}, "base_lr"),
        ({"family": "cyclic", "base_lr": 0.1, "max_lr": 0.1, "step_size_up": 4}, "max_lr"),
        ({"family": "cyclic", "base_lr": 0.1, "max_lr": 0.05, "step_size_up": 4}, "max_lr"),
        ({"family": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 0}, "step_size_up"),
        (
            {"family": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2, "mode": "sine"},
            "mode",
        ),
        (
            {"family": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2, "gamma": 0.0},
            "gamma",
        ),
        ({"family": "plateau", "factor": 0.0}, "factor"),
        ({"family": "plateau", "factor": 1.0}, "factor"),
        ({"family": "plateau", "patience": -1}, "patience"),
        ({"family": "plateau", "cooldown": -1}, "cooldown"),
        ({"family": "plateau", "threshold": -0.1}, "threshold"),
        ({"family": "plateau", "min_lr": -0.1}, "min_lr"),
        ({"family": "plateau", "mode": "mean"}, "mode"),
        # Every float field must be finite (NaN and inf would preview NaN LRs).
        (
            {"family": "cyclic", "base_lr": 0.01, "max_lr": float("nan"), "step_size_up": 2},
            "max_lr",
        ),
        (
            {"family": "cyclic", "base_lr": 0.01, "max_lr": float("inf"), "step_size_up": 2},
            "max_lr",
        ),
        ({"family": "onecycle", "max_lr": float("inf")}, "max_lr"),
        ({"family": "onecycle", "max_lr": 0.1, "div_factor": float("inf")}, "div_factor"),
        (
            {"family": "onecycle", "max_lr": 0.1, "final_div_factor": float("inf")},
            "final_div_factor",
        ),
        ({"family": "time_decay", "decay": float("inf")}, "decay"),
        ({"family": "time_decay", "decay": float("nan")}, "decay"),
        ({"family": "cosine", "T_max": 5, "eta_min": float("inf")}, "eta_min"),
        ({"family": "cosine_warm_restarts", "T_0": 5, "eta_min": float("inf")}, "eta_min"),
        ({"family": "plateau", "threshold": float("inf")}, "threshold"),
        ({"family": "plateau", "min_lr": float("inf")}, "min_lr"),
        ({"family": "plateau", "min_lr": float("nan")}, "min_lr"),
        ({"family": "cosine", "T_max": 5, "warmup": {"steps": 0}}, "steps"),
        (
            {"family": "cosine", "T_max": 5, "warmup": {"steps": 2, "start_factor": 0.0}},
            "start_factor",
        ),
        (
            {"family": "cosine", "T_max": 5, "warmup": {"steps": 2, "start_factor": 1.5}},
            "start_factor",
        ),
        ({"family": "cosine", "T_max": 5, "warmup": {"steps": 2, "start": 0.1}}, "start"),
        ({"family": "step", "step_size": 3, "gama": 0.5}, "gama"),
        ({"family": "linear_decay"}, "family"),
        ({"step_size": 3}, "family"),
    ],
)
def test_invalid_specs_name_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        parse_schedule(data)
    assert field in str(excinfo.value)
    locations = [loc for error in excinfo.value.errors() for loc in error["loc"]]
    assert field in locations or field == "family"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_field_of_every_spec_must_be_finite(value: float) -> None:
    for data in [*VARIANTS.values(), {**EXAMPLES["cyclic"], "step_size_down": 2}]:
        spec = _spec(data)
        floats = [name for name, v in spec.model_dump().items() if isinstance(v, float)]
        for name in floats:
            with pytest.raises(ValidationError) as excinfo:
                parse_schedule({**spec.model_dump(), name: value})
            assert any(error["loc"][-1] == name for error in excinfo.value.errors()), name
        if spec.warmup is not None:
            warmup = {**spec.warmup.model_dump(), "start_factor": value}
            with pytest.raises(ValidationError, match="start_factor"):
                parse_schedule({**spec.model_dump(), "warmup": warmup})


def test_importing_the_module_and_validating_a_spec_does_not_import_torch() -> None:
    # Loads lrtune.schedules without running lrtune/__init__ (which imports the trainer).
    package_dir = Path(schedules.__file__).parent
    code = f"""
import sys, types
package = types.ModuleType("lrtune")
package.__path__ = [{str(package_dir)!r}]
sys.modules["lrtune"] = package
import lrtune.schedules
lrtune.schedules.parse_schedule({{"family": "cyclic", "base_lr": 0.01, "max_lr": 0.1,
                                  "step_size_up": 2, "warmup": {{"steps": 2}}}})
assert lrtune.schedules.FAMILIES
assert "torch" not in sys.modules, "torch was imported"
assert "numpy" not in sys.modules, "numpy was imported"
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_import_lrtune_schedules_does_not_import_torch() -> None:
    code = (
        "import sys, lrtune.schedules\n"
        "lrtune.schedules.parse_schedule({'family': 'cosine', 'T_max': 3})\n"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_specs_round_trip_through_json(name: str) -> None:
    spec = _spec(VARIANTS[name])
    data = json.loads(json.dumps(spec.model_dump()))
    assert parse_schedule(data) == spec
    assert "interval" not in data


def test_defaults_follow_torch() -> None:
    plateau = _spec({"family": "plateau"})
    assert (plateau.factor, plateau.patience, plateau.threshold, plateau.cooldown) == (
        0.1,
        10,
        1e-4,
        0,
    )
    onecycle = _spec({"family": "onecycle", "max_lr": 0.1})
    assert (onecycle.pct_start, onecycle.div_factor, onecycle.final_div_factor) == (
        0.3,
        25.0,
        1e4,
    )
    assert _spec({"family": "step", "step_size": 2}).gamma == 0.1
    assert _spec({"family": "cosine_warm_restarts", "T_0": 3}).T_mult == 1
    assert LinearWarmup(steps=2).start_factor == 0.1


def test_time_decay_scheduler_state_dict_records_decay() -> None:
    scheduler = build(_spec(EXAMPLES["time_decay"]), _make_optimizer(), 1, 5)
    assert scheduler.state_dict()["lr_lambdas"] == [{"decay": 0.5}] * len(BASE_LRS)


def test_module_docstring_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert schedules.__doc__ is not None
    example = schedules.__doc__.split(".. code-block:: python", 1)[1]
    exec(textwrap.dedent(example), {})
    assert "0.1" in capsys.readouterr().out
