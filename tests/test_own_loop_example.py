"""examples/own_loop.py: a task that owns its training loop keeps lrtune's contract."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrtune.schedules import parse_schedule
from lrtune.task import check_task, task_job
from lrtune.training import TrainingSetup, train

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_loop.py"


def load_example():
    spec = importlib.util.spec_from_file_location("own_loop_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup() -> TrainingSetup:
    task = load_example().DigitsOwnLoop()
    check_task(task)
    spec = task_job(task, search={"epochs": 2})
    return TrainingSetup.from_spec(spec, device="cpu", task=task)


class Crash(Exception):
    """Stands in for the process dying after an epoch's checkpoint was written."""


def test_the_task_states_its_metric_its_lr_as_written_and_its_group_ratio(setup) -> None:
    assert (setup.spec.search.metric, setup.spec.search.direction) == ("accuracy", "maximize")
    assert setup.spec.task.lrs == [1e-3, 2e-3]
    assert setup.group_multipliers == [1.0, 2.0]
    assert setup.steps_per_epoch == len(setup.task.train_batches(0, 0)) == 23


def test_one_lr_per_optimizer_step_and_the_groups_keep_their_ratio(setup) -> None:
    run = train(setup, parse_schedule({"family": "cosine", "T_max": 1}), 0.01, epochs=1)
    assert run.status == "completed"
    assert len(run.lr_steps) == setup.steps_per_epoch
    assert all(lrs[1] == pytest.approx(2 * lrs[0]) for lrs in run.lr_steps)
    assert run.lr_steps[0][0] == pytest.approx(0.01)
    assert set(run.epochs[0]) >= {"epoch", "train_loss", "val_loss", "accuracy"}

    per_batch = train(setup, parse_schedule({"family": "onecycle", "max_lr": 0.01}), 0.01, 1)
    lrs = [step[0] for step in per_batch.lr_steps]
    assert len(lrs) == setup.steps_per_epoch and len(set(lrs)) == len(lrs)  # moved every step
    assert all(step[1] == pytest.approx(2 * step[0]) for step in per_batch.lr_steps)


def test_a_resumed_run_ends_exactly_as_an_uninterrupted_one(setup, tmp_path) -> None:
    schedule = parse_schedule({"family": "onecycle", "max_lr": 0.01, "pct_start": 0.3})
    uninterrupted = train(setup, schedule, 0.01, epochs=2)

    def crash_after_epoch_1(epoch: int, record: dict) -> None:
        if epoch == 0:
            raise Crash

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Crash):
        train(setup, schedule, 0.01, epochs=2, on_epoch=crash_after_epoch_1, checkpoint=checkpoint)
    torch.manual_seed(999)  # the resumed run must not depend on the global RNG it finds
    resumed = train(setup, schedule, 0.01, epochs=2, checkpoint=checkpoint)
    assert resumed.resumed_from == 1
    assert resumed.epochs == uninterrupted.epochs  # the final accuracy included, exactly
    assert resumed.lr_steps == uninterrupted.lr_steps


@pytest.mark.slow
def test_the_example_prints_a_recommendation_as_json() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=EXAMPLE.parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rec = json.loads(done.stdout)
    assert rec["metric"] == "accuracy" and rec["direction"] == "maximize"
    assert rec["spec"]["task"]["name"] == "DigitsOwnLoop"
    assert rec["group_multipliers"] == [1.0, 2.0]
    assert rec["schedule"]["family"] in {"constant", "cosine"}
    assert rec["base_lr"] > 0 and 0 <= rec["value"] <= 1
    assert "optimizer.param_groups" in rec["code"]  # the snippet sets the task's own groups
