"""The paste-ready snippet, exec'd on a fresh model, reproduces training's LR of every parameter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from lrtune.recommendation import Recommendation
from lrtune.schedules import FAMILIES, ScheduleSpec, parse_schedule
from lrtune.snippet import job_code
from lrtune.spec import JobSpec
from lrtune.training import TrainingRun, TrainingSetup, train

EPOCHS = 4  # wine at batch size 32: 5 steps per epoch, 20 in all
LR = 0.012345678901234567  # more digits than "%.6g" keeps

SCHEDULES: dict[str, dict[str, Any]] = {
    "constant": {"family": "constant"},
    "step": {"family": "step", "step_size": 2, "gamma": 0.5},
    "multistep": {"family": "multistep", "milestones": [1, 3], "gamma": 0.3},
    "exponential": {"family": "exponential", "gamma": 0.7},
    "time_decay": {"family": "time_decay", "decay": 0.5},
    "cosine": {"family": "cosine", "T_max": 4, "eta_min": 1e-4},
    "cosine_warm_restarts": {"family": "cosine_warm_restarts", "T_0": 2, "T_mult": 1},
    "onecycle": {"family": "onecycle", "max_lr": 0.02345678901234567, "pct_start": 0.3},
    "cyclic": {"family": "cyclic", "base_lr": 0.001, "max_lr": 0.03, "step_size_up": 3},
    "plateau": {"family": "plateau", "factor": 0.5, "patience": 0, "min_lr": 0.004},
}
WARMUPS: dict[str, dict[str, Any]] = {
    f"{name}+warmup": {**data, "warmup": {"steps": 4 if name == "cyclic" else 2}}
    for name, data in SCHEDULES.items()
    if name != "onecycle"
}
# mlp parameter names: 1.weight, 1.bias, 4.weight, 4.bias, 7.weight, 7.bias
GROUPINGS: dict[str, dict[str, Any]] = {
    "one group, sgd": {"optimizer": {"name": "sgd", "momentum": 0.9}},
    # Training puts the unprefixed group (4., 7.) first, though 1. comes first in the model.
    "default group + prefix, adamw": {
        "optimizer": {"name": "adamw", "weight_decay": 0.01},
        "param_groups": [{"prefix": "1.", "lr_mult": 0.1}],
    },
    # Every parameter matches a prefix: no default group, group 0's multiplier is 0.1.
    "prefixes only, sgd without momentum": {
        "optimizer": {"name": "sgd", "momentum": 0.0},
        "param_groups": [
            {"prefix": "1.", "lr_mult": 0.1},
            {"prefix": "4.", "lr_mult": 3.0},
            {"prefix": "7", "lr_mult": 0.5},
            {"prefix": "7.b", "lr_mult": 2.0},
        ],
    },
}


def make_setup(grouping: str) -> TrainingSetup:
    spec = JobSpec.model_validate(
        {
            "model": {"name": "mlp", "params": {"hidden": [16, 8], "dropout": 0.1}},
            "dataset": {"name": "wine"},
            "batch_size": 32,
            "search": {"epochs": EPOCHS},
            **GROUPINGS[grouping],
        }
    )
    return TrainingSetup.from_spec(spec, device="cpu")


def trained_lrs_by_parameter(
    setup: TrainingSetup, schedule: ScheduleSpec
) -> tuple[TrainingRun, list[dict[str, float]]]:
    run = train(setup, schedule, base_lr=LR, epochs=EPOCHS)
    assert run.status == "completed"
    return run, by_parameter(setup, run)


def by_parameter(setup: TrainingSetup, run: TrainingRun) -> list[dict[str, float]]:
    """A run's recorded per-group LRs as the LR of each named parameter at each step."""
    model = setup.build_model()
    optimizer = setup.build_optimizer(model, LR)  # the groups train() builds
    group_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
    names = {name: group_of[id(p)] for name, p in model.named_parameters()}
    return [{name: step[i] for name, i in names.items()} for step in run.lr_steps]


def snippet_lrs_by_parameter(
    code: str,
    setup: TrainingSetup,
    schedule: ScheduleSpec,
    metrics: list[float],
    epochs: int = EPOCHS,
) -> list[dict[str, float]]:
    """Exec ``code`` on a fresh model and step it as its closing comment says."""
    model = setup.build_model()
    namespace: dict[str, Any] = {"model": model}
    exec(code, namespace)
    optimizer = namespace["optimizer"]
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    lrs = []
    for epoch in range(epochs):
        for _ in range(setup.steps_per_epoch):
            lrs.append({name: group_of[id(p)]["lr"] for name, p in model.named_parameters()})
            optimizer.step()
            if "# Step per batch: scheduler.step()" in code:
                namespace["scheduler"].step()
        if "call warmup.step()" in code:  # plateau with a warm-up
            assert schedule.warmup is not None
            if epoch < schedule.warmup.steps:
                namespace["warmup"].step()
            else:
                namespace["plateau"].step(metrics[epoch])
        elif "scheduler.step(val_loss)" in code:
            namespace["scheduler"].step(metrics[epoch])
        elif "# Step per epoch: scheduler.step()" in code:
            namespace["scheduler"].step()
    return lrs


@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("name", [*SCHEDULES, *WARMUPS])
def test_snippet_reproduces_every_parameters_lr_at_every_step(name: str, grouping: str) -> None:
    torch.set_num_threads(1)
    setup = make_setup(grouping)
    schedule = parse_schedule({**SCHEDULES, **WARMUPS}[name])
    run, trained = trained_lrs_by_parameter(setup, schedule)
    code = job_code(setup.spec, schedule, LR, steps_per_epoch=setup.steps_per_epoch)
    metrics = [epoch["val_loss"] for epoch in run.epochs]
    assert snippet_lrs_by_parameter(code, setup, schedule, metrics) == trained  # exactly


def test_the_grouped_example_job_starts_the_head_at_its_own_lr() -> None:
    """The 10x bug: the head (4., 7.) must not run at 10x the LR training gave it."""
    job = JobSpec.from_file("examples/wine_adamw_groups.yaml")
    setup = TrainingSetup.from_spec(job, device="cpu")
    schedule = parse_schedule({"family": "onecycle", "max_lr": LR})
    code = job_code(job, schedule, LR, steps_per_epoch=setup.steps_per_epoch)
    model = setup.build_model()
    namespace: dict[str, Any] = {"model": model}
    exec(code, namespace)
    optimizer, scheduler = namespace["optimizer"], namespace["scheduler"]
    peak: dict[int, float] = {}
    for _ in range(job.search.epochs * setup.steps_per_epoch):
        for group in optimizer.param_groups:
            for p in group["params"]:
                peak[id(p)] = max(peak.get(id(p), 0.0), group["lr"])
        optimizer.step()
        scheduler.step()
    by_name = {name: peak[id(p)] for name, p in model.named_parameters()}
    assert by_name["7.weight"] == pytest.approx(LR, rel=1e-9)
    assert by_name["1.weight"] == pytest.approx(0.1 * LR, rel=1e-9)


def test_the_lr_is_written_exactly() -> None:
    setup = make_setup("one group, sgd")
    code = job_code(setup.spec, parse_schedule(SCHEDULES["cosine"]), LR, steps_per_epoch=5)
    assert f"lr={LR!r}" in code


@pytest.mark.parametrize("family", FAMILIES)
def test_a_single_group_snippet_writes_the_numbers_without_group_machinery(family: str) -> None:
    setup = make_setup("one group, sgd")
    code = job_code(setup.spec, parse_schedule(SCHEDULES[family]), LR, steps_per_epoch=5)
    for machinery in ("group_lrs", "lr_ratios", "group_mults", "cycle_momentum =", "initial_lr"):
        assert machinery not in code
    assert "SequentialLR" not in code and "ConstantLR" not in code


def test_a_single_group_cyclic_snippet_is_one_scheduler_call_with_the_numbers() -> None:
    setup = make_setup("one group, sgd")
    code = job_code(setup.spec, parse_schedule(SCHEDULES["cyclic"]), LR, steps_per_epoch=5)
    scheduler = code.split("\n\n", 2)[2]
    assert scheduler.startswith("scheduler = lr_scheduler.CyclicLR(")
    assert "base_lr=0.001," in scheduler and "max_lr=0.03," in scheduler
    assert "cycle_momentum=True," in scheduler
    statements = [
        line for line in scheduler.splitlines() if not line.startswith(("    ", "#", ")"))
    ]
    assert statements == ["scheduler = lr_scheduler.CyclicLR("]


def test_a_constant_schedule_has_no_scheduler_and_its_warmup_is_one_linear_lr() -> None:
    setup = make_setup("one group, sgd")
    plain = job_code(setup.spec, parse_schedule(SCHEDULES["constant"]), LR, steps_per_epoch=5)
    assert "lr_scheduler" not in plain
    warm = job_code(setup.spec, parse_schedule(WARMUPS["constant+warmup"]), LR, steps_per_epoch=5)
    assert warm.count("lr_scheduler.") == 1 and "lr_scheduler.LinearLR(" in warm


def test_a_snippet_at_lr_zero_runs() -> None:
    setup = make_setup("one group, sgd")
    for family in ("onecycle", "cyclic", "plateau"):
        code = job_code(setup.spec, parse_schedule(SCHEDULES[family]), 0.0, steps_per_epoch=5)
        exec(code, {"model": setup.build_model()})


@pytest.mark.slow
def test_lrtune_tune_on_the_grouped_example_prints_a_snippet_that_replays_the_winner() -> None:
    """The issue's acceptance check, end to end through the CLI and its JSON."""
    job = Path("examples/wine_adamw_groups.yaml")
    done = subprocess.run(
        [sys.executable, "-m", "lrtune.cli", "tune", str(job), "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "LRTUNE_TORCH_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    rec = Recommendation.model_validate_json(done.stdout)
    setup = TrainingSetup.from_spec(JobSpec.from_file(job), device="cpu")
    winner = rec.best.run
    assert winner.status == "completed" and rec.code == rec.to_code()
    metrics = [epoch["val_loss"] for epoch in winner.epochs]
    replayed = snippet_lrs_by_parameter(
        rec.code, setup, rec.best.schedule, metrics, epochs=len(winner.epochs)
    )
    assert replayed == by_parameter(setup, winner)  # exactly, every parameter, every step
