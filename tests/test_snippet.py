"""The paste-ready snippet, exec'd on a fresh model, reproduces training's LR of every parameter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lrtune.recommendation import Recommendation
from lrtune.schedules import FAMILIES, ScheduleSpec, parse_schedule
from lrtune.snippet import job_code
from lrtune.spec import JobSpec
from lrtune.training import TrainingRun, TrainingSetup, train

EPOCHS = 4  # wine at batch size 32: 5 steps per epoch, 20 in all
LR = 0.012345678901234567  # a snippet writes it with 4 significant digits: 0.01235
SHOWN = 1e-3  # the relative difference those 4 digits may make to an LR

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


def train_loader(setup: TrainingSetup) -> torch.utils.data.DataLoader:
    """The job's own train loader: what a user's ``len(train_loader)`` counts."""
    return setup.task.train_loader(torch.Generator().manual_seed(0))


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


def assert_same_lrs(actual: list[dict[str, float]], expected: list[dict[str, float]]) -> None:
    """The same parameters' LRs at the same steps, up to the snippet's 4 significant digits."""
    assert [set(step) for step in actual] == [set(step) for step in expected]
    names = list(expected[0])
    table = [[[step[name] for name in names] for step in lrs] for lrs in (actual, expected)]
    np.testing.assert_allclose(*table, rtol=SHOWN)


def snippet_lrs_by_parameter(
    code: str,
    setup: TrainingSetup,
    schedule: ScheduleSpec,
    metrics: list[float],
    epochs: int = EPOCHS,
) -> list[dict[str, float]]:
    """Exec ``code`` on a fresh model and the job's train loader; step it as its closing
    comment says."""
    model = setup.build_model()
    namespace: dict[str, Any] = {"model": model, "train_loader": train_loader(setup)}
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
    assert_same_lrs(snippet_lrs_by_parameter(code, setup, schedule, metrics), trained)


def test_the_grouped_example_job_starts_the_head_at_its_own_lr() -> None:
    """The 10x bug: the head (4., 7.) must not run at 10x the LR training gave it."""
    job = JobSpec.from_file("examples/wine_adamw_groups.yaml")
    setup = TrainingSetup.from_spec(job, device="cpu")
    schedule = parse_schedule({"family": "onecycle", "max_lr": LR})
    code = job_code(job, schedule, LR, steps_per_epoch=setup.steps_per_epoch)
    model = setup.build_model()
    namespace: dict[str, Any] = {"model": model, "train_loader": train_loader(setup)}
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
    assert by_name["7.weight"] == pytest.approx(LR, rel=SHOWN)
    assert by_name["1.weight"] == pytest.approx(0.1 * LR, rel=SHOWN)


def test_lrs_are_written_with_4_significant_digits() -> None:
    setup = make_setup("one group, sgd")
    code = job_code(setup.spec, parse_schedule(SCHEDULES["cosine"]), LR, steps_per_epoch=5)
    assert "lr=0.01235," in code and "eta_min=0.0001" in code and repr(LR) not in code
    onecycle = job_code(setup.spec, parse_schedule(SCHEDULES["onecycle"]), LR, steps_per_epoch=5)
    assert "max_lr=0.02346," in onecycle


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
    scheduler = code.split("\n\n", 3)[3]  # after the imports, the run and the optimizer
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
        exec(code, {"model": setup.build_model(), "train_loader": train_loader(setup)})


def test_a_onecycle_snippet_tuned_for_6_epochs_trains_for_8_with_the_same_shape() -> None:
    """The issue's case: ``total_steps=6 * 15`` raised at step 91 of an 8-epoch run. Now the
    user sets ``epochs = 8``, trains on a real loader, and the cycle stretches over the run."""
    torch.set_num_threads(1)
    job = JobSpec.model_validate(
        {
            "model": {"name": "mlp", "params": {"hidden": [16]}},
            "dataset": {"name": "wine"},
            "batch_size": 16,
            "search": {"epochs": 6},
        }
    )
    setup = TrainingSetup.from_spec(job, device="cpu")
    steps = setup.steps_per_epoch
    onecycle = parse_schedule({"family": "onecycle", "max_lr": LR, "pct_start": 0.25})
    code = job_code(job, onecycle, LR, steps_per_epoch=steps)
    assert f"\nepochs = 6  # tuned for 6 epochs of {steps} steps; set your own\n" in code
    assert f"\nsteps_per_epoch = len(train_loader)  # {steps} when tuned\n" in code

    def train_with(snippet: str) -> list[float]:
        """Exec ``snippet`` and train as a user's script does, for its ``epochs``."""
        model, loader = setup.build_model(), train_loader(setup)
        namespace: dict[str, Any] = {"model": model, "train_loader": loader}
        exec(snippet, namespace)
        optimizer, scheduler = namespace["optimizer"], namespace["scheduler"]
        criterion, lrs = setup.bundle.loss_fn(), []
        for _ in range(namespace["epochs"]):
            for inputs, targets in loader:
                lrs.append(optimizer.param_groups[0]["lr"])
                optimizer.zero_grad()
                criterion(model(inputs), targets).backward()
                optimizer.step()
                scheduler.step()
        return lrs

    tuned = train_with(code)
    longer = train_with(code.replace("\nepochs = 6  #", "\nepochs = 8  #"))
    assert len(tuned) == 6 * steps and len(longer) == 8 * steps  # no step past total_steps
    peak = [lrs.index(max(lrs)) / len(lrs) for lrs in (tuned, longer)]
    assert peak[0] == pytest.approx(0.25, abs=1 / len(tuned))
    assert peak[1] == pytest.approx(peak[0], abs=1 / len(tuned))  # the same fraction of the run
    assert max(longer) == pytest.approx(max(tuned), rel=1e-3)
    assert longer[0] == tuned[0] and longer[-1] == pytest.approx(tuned[-1], rel=1e-6)
    halfway = [lrs[len(lrs) // 2] for lrs in (tuned, longer)]
    assert halfway[1] == pytest.approx(halfway[0], rel=0.05)


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
    assert_same_lrs(replayed, by_parameter(setup, winner))  # every parameter, every step
