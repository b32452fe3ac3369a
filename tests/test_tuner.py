from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from small_jobs import small_job

from lrtune.exceptions import ConflictError
from lrtune.optuna_storage import open_storage
from lrtune.schedules import FAMILIES, parse_schedule
from lrtune.search import UnitObjective, UnitOptions
from lrtune.space import LRBounds
from lrtune.spec import JobSpec
from lrtune.training import TrainingSetup, train
from lrtune.tuner import (
    TrialRecord,
    open_study,
    prepare_study,
    run_trials,
    search_records,
    stored_bounds,
    stored_range_test,
    tune,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def job(extra: dict[str, Any] | None = None, **search: Any) -> JobSpec:
    """A small job without baselines or confirmation, unless ``search`` asks for them."""
    return small_job(extra, **{"baselines": False, "confirm_seeds": 0, **search})


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_sampled_and_trained(family: str) -> None:
    spec = job(families=[family], n_trials=2, epochs=4, pruner="none")
    study = prepare_study(spec, None, progress=False)
    run_trials(study, TrainingSetup.from_spec(spec), progress=False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    bounds = stored_bounds(study)
    for trial in trials:
        record = TrialRecord.read(trial)
        assert parse_schedule(record.schedule).family == family
        assert bounds.low <= record.base_lr <= bounds.high
        assert record.run.status == "completed" and len(record.run.epochs) == 4
        assert trial.intermediate_values.keys() == {0, 1, 2, 3}


def test_the_search_starts_from_the_obvious_answers() -> None:
    spec = job(n_trials=4, epochs=2)
    study = prepare_study(spec, None, progress=False)
    run_trials(study, TrainingSetup.from_spec(spec), progress=False)
    suggestion = stored_bounds(study).suggestion
    first = study.get_trials()[:3]
    assert [t.params["family"] for t in first] == ["onecycle", "cosine", "constant"]
    assert all(t.params["lr"] == pytest.approx(suggestion) for t in first)


def test_hyperband_prunes_poor_trials_early() -> None:
    spec = job(
        n_trials=16,
        epochs=6,
        extra={"model": {"name": "mlp"}, "dataset": {"name": "digits"}, "batch_size": 64},
    )
    rec = tune(spec, progress=False)
    assert rec.n_trials["complete"] + rec.n_trials["pruned"] == 16
    assert rec.n_trials["pruned"] > 0
    pruned = [t for t in rec.history if t.state == "PRUNED"]
    # 1-based, out of the spec's epochs, as the dashboard's Epochs column counts them
    counted = [re.match(r"pruned after epoch (\d+) of 6 \(", t.stop_reason) for t in pruned]
    reasons = [t.stop_reason for t in pruned]
    assert all(counted) and all(1 <= int(m[1]) <= 6 for m in counted), reasons
    assert rec.best is not None and rec.best.run.status == "completed"


def test_a_diverging_trial_is_pruned_with_its_reason() -> None:
    spec = job(
        families=["constant"], extra={"model": {"name": "mlp"}, "dataset": {"name": "diabetes"}}
    )
    setup = TrainingSetup.from_spec(spec)
    absurd = LRBounds(low=1e4, high=1e5, suggestion=1e4, divergence_lr=None)
    study = optuna.create_study()
    study.optimize(UnitObjective("trial", setup, study, absurd, UnitOptions()), n_trials=1)
    record = TrialRecord.read(study.trials[0])
    assert record.state == "PRUNED"
    assert "non-finite" in record.stop_reason
    assert record.run.status == "diverged"


def test_lr_threshold_ends_trials_early() -> None:
    spec = job(families=["exponential"], n_trials=2, epochs=6, pruner="none", lr_threshold=10.0)
    rec = tune(spec, progress=False)
    assert [t.state for t in rec.history] == ["COMPLETE", "COMPLETE"]
    assert rec.best.run.status == "lr_threshold"
    assert len(rec.best.run.epochs) == 1


def test_same_spec_and_seed_give_the_same_trials_and_recommendation() -> None:
    spec = job(n_trials=8, epochs=3, extra={"seed": 7})
    first = tune(spec, progress=False).model_dump(mode="json")
    second = tune(spec, progress=False).model_dump(mode="json")
    assert first["history"] == second["history"]
    assert first == second


def test_recommendation_compares_against_baselines_and_serialises() -> None:
    spec = JobSpec.model_validate(
        {**job(n_trials=4, epochs=3).model_dump(), "search": {"n_trials": 4, "epochs": 3}}
    )
    rec = tune(spec, progress=False)
    rows = rec.comparison
    assert rows[0].role == "recommended" and rows[0].name == rec.best.name
    names = ["constant at suggestion", "sgd default lr", "prodigy", "schedule-free sgd"]
    assert [b.name for b in rec.baselines] == names  # the default baselines, in order
    assert [r.name for r in rows if r.role == "baseline"] == [n for n in names if n != rows[0].name]
    assert {r.role for r in rows[1:]} <= {"finalist", "baseline"}
    assert all(len(b.run.epochs) == 3 for b in rec.baselines)
    assert all(p.verdict != "does not beat" for p in rec.paired_comparisons)
    assert len(rec.lr_curve) == 3 * TrainingSetup.from_spec(spec).steps_per_epoch
    data = json.loads(rec.model_dump_json())
    assert json.loads(type(rec).model_validate(data).model_dump_json()) == data
    namespace: dict[str, Any] = {}
    import torch

    namespace["model"] = torch.nn.Linear(13, 3)
    namespace["train_loader"] = TrainingSetup.from_spec(spec).task.train_loader(torch.Generator())
    exec(rec.to_code(), namespace)  # its LRs have 4 significant digits
    assert namespace["optimizer"].param_groups[0]["lr"] == pytest.approx(rec.base_lr, rel=1e-3)


# --- shared storage: several processes, crashes ----------------------------------------------


def start_worker(
    study_name: str, url: str, artifacts: Path, heartbeat: int = 1
) -> subprocess.Popen:
    script = textwrap.dedent(
        f"""
        import optuna
        from lrtune.optuna_storage import open_storage
        from lrtune.tuner import run_worker
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage({url!r}, heartbeat_interval={heartbeat}, grace_period=2)
        run_worker({study_name!r}, storage, artifact_dir={str(artifacts)!r})
        """
    )
    env = {**os.environ, "LRTUNE_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True
    )


def wait_ok(proc: subprocess.Popen, timeout: float = 240) -> None:
    _, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, stderr


def test_two_processes_share_one_study_and_finish_exactly_the_budget(storage_url, tmp_path) -> None:
    spec = job(
        n_trials=10, epochs=3, extra={"model": {"name": "mlp"}, "dataset": {"name": "digits"}}
    )
    prepare_study(spec, storage_url, progress=False)
    workers = [start_worker(spec.study_name(), storage_url, tmp_path) for _ in range(2)]
    for proc in workers:
        wait_ok(proc)
    study = optuna.load_study(study_name=spec.study_name(), storage=open_storage(storage_url))
    states = [t.state for t in study.get_trials()]
    assert len(states) == 10
    assert all(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states), states
    assert sorted(r.slot for r in search_records(study)) == list(range(10))


def slow_cosine_job(n_trials: int) -> JobSpec:
    """Trials long enough (12 epochs of 90 steps) to be interrupted after their first epoch."""
    return job(
        families=["cosine"],
        n_trials=n_trials,
        epochs=12,
        pruner="none",
        extra={"model": {"name": "mlp"}, "dataset": {"name": "digits"}, "batch_size": 16},
    )


def wait_for_checkpoint(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the process finished before it could be interrupted"
    assert path.exists(), "no checkpoint appeared"


def test_a_killed_trial_is_retried_and_resumes_from_its_checkpoint(storage_url, tmp_path) -> None:
    spec = slow_cosine_job(n_trials=1)
    prepare_study(spec, storage_url, progress=False)
    checkpoint = tmp_path / spec.study_name() / "trial-0.pt"
    worker = start_worker(spec.study_name(), storage_url, tmp_path)
    wait_for_checkpoint(checkpoint, worker)
    worker.send_signal(signal.SIGKILL)  # a real crash: no cleanup, no final state written
    worker.wait()

    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=2)
    study = open_study(spec, storage)
    setup = TrainingSetup.from_spec(spec)
    run_trials(study, setup, artifact_dir=tmp_path, progress=False)

    killed, retried = search_records(study)
    assert [killed.state, retried.state] == ["FAIL", "COMPLETE"]
    assert retried.root_trial == killed.number
    assert "heartbeat" in killed.stop_reason  # no reason could be written: the process died
    run = retried.run
    assert run.resumed_from is not None and run.resumed_from >= 1
    uninterrupted = train(
        setup, parse_schedule(retried.schedule), retried.base_lr, spec.search.epochs
    )
    assert run.epochs == uninterrupted.epochs
    assert retried.value == uninterrupted.final(spec.search.metric)
    assert not checkpoint.exists()  # cleaned up once the trial finished


def test_preparing_twice_keeps_one_range_test_and_one_budget(storage_url) -> None:
    spec = job(n_trials=5, epochs=2)
    first = prepare_study(spec, storage_url, progress=False)
    range_test = stored_range_test(first).model_dump(mode="json")
    again = prepare_study(spec, storage_url, progress=False)
    assert stored_range_test(again).model_dump(mode="json") == range_test
    assert len(again.get_trials(states=(TrialState.WAITING,))) == 5
    other = JobSpec.model_validate({**spec.model_dump(), "batch_size": 16})
    with pytest.raises(ConflictError, match="different job spec"):
        prepare_study(other, storage_url, progress=False)


def _sigint_as_in_a_terminal() -> None:
    """In the child, before it starts: SIGINT's default disposition, so that Python turns it
    into KeyboardInterrupt. A test run started as a background job of a script (``cmd &``)
    inherits SIGINT ignored, and the child would not notice the test's Ctrl-C at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_an_interrupted_cli_run_resumes_its_trial_when_run_again(tmp_path) -> None:
    spec = slow_cosine_job(n_trials=2)
    job_file = tmp_path / "job.json"
    job_file.write_text(spec.model_dump_json())
    url = f"sqlite:///{tmp_path / 'study.db'}"
    command = [
        sys.executable,
        "-m",
        "lrtune.cli",
        "tune",
        str(job_file),
        "--storage",
        url,
        "--artifacts",
        str(tmp_path),
        "--quiet",
        "--json",
        "--threads",
        "1",
    ]
    first = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_as_in_a_terminal,
    )
    checkpoint = tmp_path / spec.study_name() / "trial-0.pt"
    wait_for_checkpoint(checkpoint, first)
    first.send_signal(signal.SIGINT)  # Ctrl-C: Optuna records the running trial as FAIL
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr

    again = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    rec = json.loads(again.stdout)
    assert rec["n_trials"]["complete"] == 2 and rec["n_trials"]["fail"] == 1
    failed = [t for t in rec["history"] if t["state"] == "FAIL"]
    assert [t["stop_reason"] for t in failed] == ["interrupted (KeyboardInterrupt)"]
    study = optuna.load_study(study_name=spec.study_name(), storage=open_storage(url))
    resumed = [r for r in search_records(study) if r.state == "COMPLETE" and r.root_trial == 0]
    assert len(resumed) == 1
    assert resumed[0].run.resumed_from >= 1


@pytest.mark.parametrize(
    "storage", ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_time_budget_stops_starting_trials_and_still_recommends(
    storage: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # With a heartbeat (an RDB storage), confirmation once waited forever for the queued trials
    # the timeout left behind.
    url = {
        "memory": lambda: None,
        "sqlite": lambda: f"sqlite:///{tmp_path / 'lrtune.db'}",
        "postgres": lambda: request.getfixturevalue("postgres_url"),
    }[storage]()
    spec = job(
        n_trials=300,
        epochs=3,
        timeout_s=1.5,
        confirm_seeds=2,
        extra={"model": {"name": "mlp"}, "dataset": {"name": "digits"}},
    )
    started = time.monotonic()
    rec = tune(spec, storage=url, progress=False)
    assert time.monotonic() - started < 60
    done = rec.n_trials["complete"] + rec.n_trials["pruned"]
    assert 0 < done < 300
    assert rec.n_trials["waiting"] == 300 - done  # left queued for a later run
    assert rec.best is not None and not rec.confirmed  # a search cut short is not confirmed
    assert "unconfirmed" in rec.verdict


@pytest.mark.slow
def test_concurrent_workers_never_claim_the_same_queued_trial(storage_url) -> None:
    # Instant trials make four processes race for the queue as hard as they can.
    spec = job(n_trials=80)
    study = open_study(spec, open_storage(storage_url))
    for _ in range(80):
        study.enqueue_trial({})
    script = textwrap.dedent(
        f"""
        import optuna
        from lrtune.spec import JobSpec
        from lrtune.optuna_storage import open_storage
        from lrtune._optuna import QueueEmpty
        from lrtune.tuner import open_study
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        spec = JobSpec.model_validate_json({spec.model_dump_json()!r})
        study = open_study(spec, open_storage({storage_url!r}))
        try:
            study.optimize(lambda trial: float(trial.number))
        except QueueEmpty:
            pass
        """
    )
    racers = [
        subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for proc in racers:
        wait_ok(proc)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.COMPLETE] * 80


class StorageDownAfterFirstReport(optuna.storages.InMemoryStorage):
    """An Optuna storage whose database goes away once training has started."""

    def set_trial_intermediate_value(self, trial_id: int, step: int, value: float) -> None:
        raise RuntimeError("database is down")


def test_a_storage_outage_stops_the_search_instead_of_failing_its_trials() -> None:
    spec = job(n_trials=3, epochs=2, pruner="none")
    storage = StorageDownAfterFirstReport()
    study = prepare_study(spec, storage, progress=False)
    with pytest.raises(RuntimeError, match="database is down"):
        run_trials(study, TrainingSetup.from_spec(spec), progress=False)
    records = search_records(study)
    assert [r.state for r in records].count("WAITING") == 2  # the budget is not burnt
    assert all(r.stop_reason is None or "database" not in r.stop_reason for r in records)
