"""Confirmation: finalists and baselines retrained on fresh seeds decide the recommendation."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from small_jobs import small_job
from torch import nn

from lrtune.optuna_storage import open_storage
from lrtune.recommendation import (
    Recommendation,
    SeedValue,
    TrainedSchedule,
    paired_comparison,
    pick_recommended,
)
from lrtune.registry import register_model
from lrtune.schedules import parse_schedule
from lrtune.spec import JobSpec
from lrtune.training import TrainingRun, TrainingSetup, train
from lrtune.tuner import (
    confirmation_records,
    confirmation_seeds,
    open_study,
    prepare_study,
    run_confirmation,
    run_trials,
    search_records,
    tune,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


job = small_job


# --- the rule, on constructed values --------------------------------------------------------


def test_consistent_improvement_beats_the_baseline() -> None:
    result = paired_comparison(
        "constant", {1: 0.90, 2: 0.91, 3: 0.93}, {1: 0.88, 2: 0.90, 3: 0.90}, "maximize"
    )
    assert result.verdict == "beats" and result.wins == 3 and result.seeds == 3
    assert result.mean_improvement == pytest.approx(0.02)
    assert result.standard_error == pytest.approx(0.01 / math.sqrt(3))
    assert result.describe("accuracy") == "beats constant on 3/3 seeds, +2 +/- 0.58 points"


def test_a_mean_within_one_standard_error_is_inside_the_seed_noise() -> None:
    # improvements +0.03, -0.02, +0.00: mean 0.0033, se 0.0145
    result = paired_comparison(
        "default", {1: 0.93, 2: 0.88, 3: 0.9}, {1: 0.9, 2: 0.9, 3: 0.9}, "maximize"
    )
    assert result.verdict == "inside the seed noise"
    assert abs(result.mean_improvement) <= result.standard_error
    assert result.wins == 1
    assert result.describe("accuracy") == (
        "inside the seed noise of default (better on 1/3 seeds, +0.333 +/- 1.5 points)"
    )


def test_consistently_worse_does_not_beat_and_minimize_flips_the_sign() -> None:
    # val_loss: lower is better, ours is higher on every seed
    result = paired_comparison("constant", {1: 0.5, 2: 0.6}, {1: 0.4, 2: 0.45}, "minimize")
    assert result.verdict == "does not beat" and result.wins == 0
    assert result.mean_improvement == pytest.approx(-0.125)
    assert (
        paired_comparison("c", {1: 0.4, 2: 0.45}, {1: 0.5, 2: 0.6}, "minimize").verdict == "beats"
    )


def test_one_seed_leaves_the_noise_unmeasured() -> None:
    result = paired_comparison("constant", {1: 0.3}, {1: 0.4}, "minimize")
    assert result.verdict == "beats" and not result.noise_measured
    assert result.describe("val_loss") == (
        "beats constant on 1/1 seed, +0.1 val_loss (one seed: noise unmeasured)"
    )


def test_identical_values_on_every_seed_tie() -> None:
    result = paired_comparison("constant", {1: 0.9, 2: 0.8}, {1: 0.9, 2: 0.8}, "maximize")
    assert result.verdict == "ties" and result.wins == 0
    assert result.describe("accuracy") == "ties constant on every seed (2)"


def test_a_diverged_baseline_seed_counts_as_a_win_and_stays_out_of_the_mean() -> None:
    result = paired_comparison(
        "default", {1: 0.9, 2: 0.9, 3: 0.9}, {1: math.nan, 2: 0.8, 3: 0.85}, "maximize"
    )
    assert result.wins == 3 and result.seeds == 3
    assert result.mean_improvement == pytest.approx(0.075)
    assert result.verdict == "beats"


def test_only_shared_seeds_are_compared() -> None:
    result = paired_comparison("c", {1: 0.9, 2: 0.9, 7: 0.1}, {1: 0.8, 2: 0.85, 8: 1.0}, "maximize")
    assert result.seeds == 2 and result.wins == 2


def trained(name: str, search_value: float, seeds: dict[int, float]) -> TrainedSchedule:
    run = TrainingRun(epochs=[{"epoch": 0, "accuracy": search_value, "val_loss": 1.0}])
    return TrainedSchedule(
        name=name,
        role="finalist",
        schedule={"family": "constant"},
        base_lr=0.1,
        run=run,
        seed_values=[
            SeedValue(seed=s, value=v, status="completed", epochs=1) for s, v in seeds.items()
        ],
    )


def test_the_recommendation_is_the_best_mean_over_confirmation_seeds_only() -> None:
    lucky = trained("lucky", 0.99, {1: 0.80, 2: 0.82, 3: 0.81})  # best on the search seed
    steady = trained("steady", 0.90, {1: 0.86, 2: 0.85, 3: 0.87})
    diverged = trained("diverged", 0.95, {1: 0.99, 2: math.nan, 3: 0.99})
    assert pick_recommended([lucky, steady, diverged], "maximize") == 1
    assert pick_recommended([lucky, steady], "minimize") == 0
    unconfirmed = [trained("a", 0.99, {}), trained("b", 0.5, {})]
    assert pick_recommended(unconfirmed, "maximize", metric="accuracy") == 0
    assert pick_recommended([], "maximize") is None


def test_a_diverged_confirmation_seed_is_reported_not_a_crash() -> None:
    diverged = trained("diverged", 0.95, {1: 0.99, 2: math.nan, 3: 0.99})
    assert math.isnan(diverged.mean) and math.isnan(diverged.std)
    data = json.loads(diverged.model_dump_json())  # strict JSON: NaN is null
    assert data["mean"] is None and data["seed_values"][1]["value"] is None
    assert TrainedSchedule.model_validate(data).confirmed_values()[1] == 0.99


# --- end to end, with real training ----------------------------------------------------------


def test_tune_confirms_finalists_and_baselines_on_fresh_seeds() -> None:
    spec = job(n_trials=6, epochs=3, pruner="none", finalists=2, confirm_seeds=2, metric="accuracy")
    rec = tune(spec, progress=False)
    seeds = confirmation_seeds(spec.search, spec.seed)
    assert seeds == [1, 2] and rec.confirm_seeds == seeds and rec.search_seed == 0
    assert rec.confirmed
    assert len(rec.finalists) == 2
    assert [b.name for b in rec.baselines] == ["constant at suggestion", "sgd default lr"]
    setup = TrainingSetup.from_spec(spec)
    for candidate in [*rec.finalists, *rec.baselines]:
        assert [s.seed for s in candidate.seed_values] == seeds
        for seed_value in candidate.seed_values:  # each is a real run on that seed
            again = train(
                setup,
                parse_schedule(candidate.schedule),
                candidate.base_lr,
                spec.search.epochs,
                seed=seed_value.seed,
            )
            assert seed_value.value == again.final("accuracy")
    # the pick is among finalists and baselines, and nothing it was compared with beats it
    best_mean = max(c.mean for c in [*rec.finalists, *rec.baselines])
    assert rec.value == rec.best.mean
    assert rec.best.mean == best_mean or any(
        p.verdict in ("inside the seed noise", "ties") for p in rec.paired_comparisons
    )
    assert all(p.verdict != "does not beat" for p in rec.paired_comparisons)
    # the finalists are the search's best distinct trials, best first
    complete = [r for r in rec.history if r.kind == "search" and r.state == "COMPLETE"]
    top = max(r.value for r in complete)
    assert rec.finalists[0].value("accuracy") == top
    # the verdict is the paired rule's, against every other candidate
    paired = rec.paired_comparisons
    others = [c.name for c in rec.candidates()[1:] if not c.same_run(rec.best)]
    assert [p.baseline for p in paired] == others
    for p in paired:
        assert p.describe("accuracy") in rec.verdict
    assert "(recommended)" in rec.table() and "seed 2" in rec.table()
    data = json.loads(rec.model_dump_json())
    assert [p["baseline"] for p in data["paired_comparisons"]] == others
    assert json.loads(Recommendation.model_validate(data).model_dump_json()) == data


def test_confirmation_runs_stay_out_of_the_search() -> None:
    spec = job(n_trials=4, epochs=2, finalists=2, confirm_seeds=2, baselines=False)
    study = prepare_study(spec, None, progress=False)
    setup = TrainingSetup.from_spec(spec)
    run_trials(study, setup, progress=False)
    assert run_confirmation(study, setup, progress=False)
    trials = search_records(study)
    assert len(study.get_trials()) == len(trials) == 4
    assert study.best_trial.number in {r.number for r in trials}
    runs = confirmation_records(study)
    assert len(runs) == 4 and {r.seed for r in runs} == {1, 2}
    assert {r.candidate for r in runs} == {"finalist 1", "finalist 2"}
    # every confirmation run is labelled as such in the history, after the search's trials
    from lrtune.tuner import recommend

    history = recommend(study, setup).history
    assert [h.kind for h in history] == ["search"] * 4 + ["confirmation"] * 4
    assert [h.seed for h in history[4:]] == [1, 2, 1, 2]


def test_without_confirmation_seeds_the_recommendation_says_it_is_unconfirmed() -> None:
    spec = job(n_trials=3, epochs=2, confirm_seeds=0)
    rec = tune(spec, progress=False)
    assert not rec.confirmed and rec.paired_comparisons == []
    assert [len(b.seed_values) for b in rec.baselines] == [0, 0]
    assert all(len(b.run.epochs) == 2 for b in rec.baselines)  # trained on the search seed
    assert "unconfirmed" in rec.verdict
    assert rec.value == rec.best.value(rec.metric)


def test_a_finalist_equal_to_a_baseline_is_not_trained_twice() -> None:
    # One family, no warm-up: the constant warm start at the suggestion is the baseline itself.
    spec = job(
        n_trials=1, epochs=2, families=["constant"], warmup=False, finalists=1, confirm_seeds=2
    )
    rec = tune(spec, progress=False)
    constant, finalist = rec.baselines[0], rec.finalists[0]
    assert finalist.same_run(constant) and finalist.seed_values == constant.seed_values
    assert rec.best is not finalist  # the baseline stands for it
    skipped = [r for r in rec.history if r.kind == "confirmation" and r.state == "PRUNED"]
    assert len(skipped) == 2 and all("stand in" in r.stop_reason for r in skipped)


# --- suggested LR in one unit (defect 14) ----------------------------------------------------


def test_suggested_lr_is_the_base_lr_of_a_multiplier_one_parameter() -> None:
    # Every parameter matches a prefix, so group 0 trains at 10x the base LR.
    spec = job(
        n_trials=1,
        epochs=1,
        families=["constant"],
        confirm_seeds=0,
        extra={"param_groups": [{"prefix": "1.", "lr_mult": 10.0}]},
    )
    rec = tune(spec, progress=False)
    # The sweep ran group 0 from start_lr; reported, like everything else, for multiplier 1.
    range_test = rec.range_test
    assert range_test.lr_reference == "a parameter with lr_mult 1"
    assert range_test.lrs[0] == pytest.approx(spec.range_test.start_lr / 10.0)
    assert range_test.group_lr_ratios == pytest.approx([10.0])
    assert rec.suggested_lr == range_test.suggestion == rec.bounds.suggestion
    assert rec.baselines[0].base_lr == rec.suggested_lr
    assert range_test.suggestions["minimum"].lr <= range_test.lrs[-1]


# --- failed trials say why (defect 8) --------------------------------------------------------


@pytest.fixture
def scratch_registrations(monkeypatch: pytest.MonkeyPatch) -> None:
    from lrtune import registry

    monkeypatch.setattr(registry._models, "_registered", dict(registry._models._registered))


class FailsToEvaluate(nn.Module):
    """Trains (so the range test runs) but raises when evaluated: every trial fails."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x):  # type: ignore[no-untyped-def]
        if not self.training:
            raise RuntimeError("this model cannot be evaluated")
        return self.linear(x)


@pytest.mark.usefixtures("scratch_registrations")
def test_a_failed_trial_reports_the_error_that_failed_it() -> None:
    @register_model("fails_to_evaluate")
    def factory(input_shape: tuple[int, ...], output_dim: int, **params: object) -> nn.Module:
        return FailsToEvaluate(math.prod(input_shape), output_dim)

    spec = job(
        n_trials=2, epochs=2, confirm_seeds=0, extra={"model": {"name": "fails_to_evaluate"}}
    )
    rec = tune(spec, progress=False)
    assert rec.n_trials["fail"] == 2 and rec.best is None
    failed = [r for r in rec.history if r.state == "FAIL"]
    assert len(failed) == 4  # two search trials, two baseline runs
    for entry in failed:
        assert entry.stop_reason == "RuntimeError: this model cannot be evaluated"


# --- shared and resumed across processes ----------------------------------------------------


def worker_script(study_name: str, url: str, artifacts: Path, wait: bool) -> str:
    return textwrap.dedent(
        f"""
        import optuna
        from lrtune.optuna_storage import open_storage
        from lrtune.tuner import run_worker
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage({url!r}, heartbeat_interval=1, grace_period=2)
        run_worker({study_name!r}, storage, artifact_dir={str(artifacts)!r}, wait_for_others={wait})
        """
    )


def start_worker(study_name: str, url: str, artifacts: Path, wait: bool) -> subprocess.Popen:
    env = {**os.environ, "LRTUNE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", worker_script(study_name, url, artifacts, wait)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def digits_job(**search: Any) -> JobSpec:
    return job(extra={"model": {"name": "mlp"}, "dataset": {"name": "digits"}}, **search)


@pytest.mark.slow
def test_two_processes_share_the_confirmation_units_exactly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lrtune.db'}"
    spec = digits_job(n_trials=4, epochs=3, pruner="none", finalists=2, confirm_seeds=3)
    study = prepare_study(spec, url, progress=False)
    run_trials(study, TrainingSetup.from_spec(spec), progress=False)  # the search is done
    workers = [start_worker(spec.study_name(), url, tmp_path, wait=True) for _ in range(2)]
    for proc in workers:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    runs = confirmation_records(study)
    # 2 finalists x 3 seeds, and 2 baselines x (search seed + 3 seeds): each exactly once
    assert len(runs) == 14
    assert all(r.state in ("COMPLETE", "PRUNED") for r in runs), [r.state for r in runs]
    keys = [(r.candidate, r.seed) for r in runs]
    assert len(set(keys)) == 14
    # both processes worked on them: some runs overlap in time, which one process cannot do
    spans = sorted((r.started, r.finished) for r in runs)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans)), spans


@pytest.mark.slow
def test_an_interrupted_confirmation_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lrtune.db'}"
    spec = job(
        extra={"model": {"name": "mlp"}, "dataset": {"name": "digits"}, "batch_size": 16},
        families=["cosine"],
        n_trials=1,
        epochs=12,
        pruner="none",
        finalists=1,
        confirm_seeds=1,
        baselines=False,
    )
    study = prepare_study(spec, url, progress=False)
    setup = TrainingSetup.from_spec(spec)
    run_trials(study, setup, progress=False)
    worker = start_worker(spec.study_name(), url, tmp_path, wait=False)
    checkpoint = tmp_path / spec.study_name() / "confirm-0.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.poll() is None and checkpoint.exists(), worker.stderr.read()
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    storage = open_storage(url, heartbeat_interval=1, grace_period=2)
    resumed_study = open_study(spec, storage)
    assert run_confirmation(resumed_study, setup, artifact_dir=tmp_path, progress=False)
    killed, retried = confirmation_records(resumed_study)
    assert [killed.state, retried.state] == ["FAIL", "COMPLETE"]
    assert retried.root_trial == killed.number and retried.seed == 1
    assert retried.run.resumed_from >= 1
    uninterrupted = train(
        setup, parse_schedule(retried.schedule), retried.base_lr, spec.search.epochs, seed=1
    )
    assert retried.run.epochs == uninterrupted.epochs
    assert not checkpoint.exists()
