"""Search trials run as populations (``tune(population=K)``, ``lrtune worker --population K``):
each member is still a trial of its own, trained exactly as it would be alone, and a job's
budget adds up as with trials run one at a time. (The population's training itself, member by
member against sequential runs: tests/test_population.py.)"""

from __future__ import annotations

import logging
import math

import optuna
import pytest
from optuna.trial import TrialState

from lrtune.jobs import JobStatus, JobStore
from lrtune.schedules import parse_schedule
from lrtune.search import JobSearch, TrialRecord, UnitOptions
from lrtune.search import tune as tune_spec
from lrtune.spec import JobSpec
from lrtune.training import TrainingSetup, train
from lrtune.workers.loop import Worker
from tests import task_fixtures
from tests.small_jobs import small_job

optuna.logging.set_verbosity(optuna.logging.WARNING)

N_TRIALS = 6
EPOCHS = 3


def _mlp_job(**search: object) -> JobSpec:
    search = {"n_trials": N_TRIALS, "epochs": EPOCHS, "confirm_seeds": 1, **search}
    model = {"name": "mlp", "params": {"hidden": [16]}}
    # LRs up to 0.3: above ~1 a run is chaotic, and float rounding (a batched matmul's is not
    # a single one's) grows into different results, alone or together
    range_test = {"seeds": 2, "num_iter": 40, "end_lr": 0.3}
    extra = {"model": model, "dataset": {"name": "digits"}, "range_test": range_test}
    return small_job(extra, **search)


def _search_records(search: JobSearch) -> list[TrialRecord]:
    return [TrialRecord.read(t) for t in search.study.get_trials(deepcopy=False)]


def test_a_population_trains_each_trial_as_it_would_train_alone() -> None:
    spec = _mlp_job(families=["constant", "cosine", "step", "onecycle"], pruner="none")
    setup = TrainingSetup.from_spec(spec)
    search = JobSearch.prepare(spec, setup=setup, progress=False)

    search.run_units("search", setup, UnitOptions(progress=False, population=4))

    records = _search_records(search)
    assert [r.state for r in records] == ["COMPLETE"] * N_TRIALS  # two populations: 4, then 2
    for record in records:
        assert record.schedule is not None and record.run is not None
        alone = train(
            setup, parse_schedule(record.schedule), record.base_lr, EPOCHS, seed=spec.seed
        )
        assert len(record.run.epochs) == len(alone.epochs) == EPOCHS
        flat = [lr for step in record.run.lr_steps for lr in step]
        assert flat == pytest.approx([lr for step in alone.lr_steps for lr in step], rel=1e-6)
        together, apart = record.run.final(setup.metric), alone.final(setup.metric)
        assert math.isclose(together, apart, rel_tol=1e-4, abs_tol=1e-5), record.number


def test_tune_with_a_population_spends_the_budget_exactly_and_recommends() -> None:
    spec = _mlp_job(families=["constant", "cosine", "exponential"])

    rec = tune_spec(spec, progress=False, population=4)

    assert rec.n_trials["complete"] + rec.n_trials["pruned"] == N_TRIALS
    assert rec.best is not None and rec.confirmed


def test_a_task_that_cannot_be_stacked_runs_one_at_a_time_and_says_why_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import lrtune

    caplog.set_level(logging.INFO, logger="lrtune.population")
    search = {**task_fixtures.SEARCH, "confirm_seeds": 0, "baselines": []}
    for _ in range(2):
        rec = lrtune.tune(
            task_fixtures.Blobs(),
            search=search,
            range_test=task_fixtures.RANGE_TEST,
            progress=False,
            population=4,
        )
        assert rec.n_trials["complete"] + rec.n_trials["pruned"] == search["n_trials"]
    said = [r.getMessage() for r in caplog.records if "one at a time" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith("Blobs: search trials run one at a time: ")


def test_a_worker_with_a_population_runs_a_job_to_its_recommendation(jobs_url: str) -> None:
    store = JobStore(jobs_url)
    job_id = store.submit(_mlp_job(families=["constant", "cosine"])).id

    Worker(store, device="cpu", population=4).run(once=True)

    job = store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.progress.trials_done == N_TRIALS
    study = optuna.load_study(study_name=job.study_name, storage=Worker(store)._optuna_storage())
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == N_TRIALS
    assert store.recommendation(job_id).recommendation.best is not None
