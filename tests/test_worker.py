"""``lrtune worker`` processes on a real job store: jobs submitted through the CLI are found,
searched, confirmed and recommended, by one worker or several. (SIGTERM, concurrency and the
workers table: tests/test_worker_runtime.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
import yaml
from optuna.trial import TrialState

from lrtune._optuna import ATTR_BOUNDS, ATTR_FAIL_REASON, ATTR_SLOT, ATTR_STOP_REASON
from lrtune.cli import main
from lrtune.jobs import JobRecord, JobStatus, JobStore, tables, upgrade
from lrtune.jobs.db import get_engine
from lrtune.jobs.records import StoredRecommendation
from lrtune.optuna_storage import open_storage
from lrtune.spec import JobSpec
from lrtune.tuner import open_study, prepare_study
from lrtune.workers.loop import Worker

REPO = Path(__file__).resolve().parents[1]
N_TRIALS = 3
CONFIRM_SEEDS = 2
FINALISTS = 2
JOB = {
    "model": {"name": "logreg"},
    "dataset": {"name": "wine"},
    "batch_size": 32,
    "range_test": {"seeds": 2, "num_iter": 30},
    "search": {
        "n_trials": N_TRIALS,
        "epochs": 2,
        "confirm_seeds": CONFIRM_SEEDS,
        "finalists": FINALISTS,
        "families": ["constant", "cosine"],
        # the two constant baselines and no adaptive seeds: a fixed count of confirmation runs
        "baselines": ["constant_at_suggestion", "optimizer_default"],
        "max_confirm_seeds": 0,
    },
}
# Finalists on each confirmation seed; two baselines on the search seed and each confirmation seed.
PLANNED_CONFIRMATION_RUNS = FINALISTS * CONFIRM_SEEDS + 2 * (1 + CONFIRM_SEEDS)
FINISHED = ("complete", "pruned")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    return url


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "LRTUNE_TORCH_THREADS": "1"}


def _lrtune(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lrtune.cli", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _start_worker(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lrtune.cli", "worker", "--database", url, "--lease-s", "6", *args],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _submit_with_the_cli(url: str, tmp_path: Path) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(JOB))
    submitted = _lrtune("submit", str(path), "--database", url)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip()


def _submit(url: str, n: int, job: dict[str, Any] | None = None) -> list[str]:
    """``n`` jobs through the store's Python API (faster than a process each)."""
    store = JobStore(url)
    return [store.submit(JobSpec.model_validate(job or JOB)).id for _ in range(n)]


def _trial_counts(url: str, study_name: str) -> dict[str, int]:
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    return {state: states.count(state) for state in ("complete", "pruned", "fail", "waiting")}


def _range_tests_run(store: JobStore, job: JobRecord) -> int:
    """How many times the job left ``finding`` for ``searching`` (its range test completed)."""
    events = store.events(job.id, limit=500)
    return sum(
        e.kind == "status" and (e.payload["from"], e.payload["to"]) == ("finding", "searching")
        for e in events
    )


def _check_finished_exactly(
    store: JobStore, url: str, job_id: str, confirmations: int = PLANNED_CONFIRMATION_RUNS
) -> None:
    job = store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.holder_worker_id is None
    assert _range_tests_run(store, job) == 1
    counts = _trial_counts(url, job.study_name)
    assert counts["complete"] + counts["pruned"] == N_TRIALS
    assert counts["waiting"] == 0
    confirm = _trial_counts(url, job.study_name + ":confirm")
    assert confirm["complete"] + confirm["pruned"] == confirmations


@pytest.mark.slow
def test_one_worker_runs_two_submitted_jobs_to_recommendations(
    jobs_url: str, tmp_path: Path
) -> None:
    first = _submit_with_the_cli(jobs_url, tmp_path)
    (second,) = _submit(jobs_url, 1)

    done = _lrtune("worker", "--database", jobs_url, "--once", timeout=120)

    assert done.returncode == 0, done.stderr
    assert "torch threads: 1" in done.stderr
    assert "working on 2 jobs" in done.stdout
    store = JobStore(jobs_url)
    for job_id in (first, second):
        _check_finished_exactly(store, jobs_url, job_id)
    status = _lrtune("status", "--database", jobs_url)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("succeeded") == 2
    assert f"{N_TRIALS}/{N_TRIALS}" in status.stdout
    stored = store.latest_recommendation(store.get(first).fingerprint)
    assert stored is not None and stored.job_id in (first, second)
    recommendation = stored.recommendation
    assert sum(recommendation.n_trials[s] for s in FINISHED) == N_TRIALS
    assert sum(recommendation.n_confirmation[s] for s in FINISHED) == PLANNED_CONFIRMATION_RUNS
    assert recommendation.n_trials["fail"] == recommendation.n_confirmation["fail"] == 0
    assert recommendation.confirmed
    assert stored.provenance.device == "cpu"
    assert stored.provenance.search == store.get(first).spec.search
    # what the job wrote, printed by lrtune recommend (as text, and as JSON that reads back)
    printed = _lrtune("recommend", first, "--database", jobs_url)
    assert printed.returncode == 0, printed.stderr
    assert (
        "recommended:" in printed.stdout and "# paste into your training script:" in printed.stdout
    )
    as_json = _lrtune("recommend", first, "--database", jobs_url, "--json")
    mine = StoredRecommendation.model_validate_json(as_json.stdout)
    assert mine.job_id == first and mine.recommendation.verdict in printed.stdout


def test_recommend_for_a_job_without_one_is_a_one_line_error(sqlite_url: str) -> None:
    (queued,) = _submit(sqlite_url, 1)
    for job_id, says in ((queued, "has no recommendation: it is queued"), ("nope", "no job")):
        done = _lrtune("recommend", job_id, "--database", sqlite_url)
        assert done.returncode == 2 and says in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.slow
def test_two_workers_share_three_jobs_and_run_each_range_test_once(
    sqlite_url: str, tmp_path: Path
) -> None:
    job_ids = _submit(sqlite_url, 3)

    workers = [_start_worker(sqlite_url, "--once") for _ in range(2)]
    outputs = [w.communicate(timeout=120) for w in workers]

    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr
        assert "database is locked" not in stderr
    store = JobStore(sqlite_url)
    for job_id in job_ids:
        _check_finished_exactly(store, sqlite_url, job_id)
        claims = [e for e in store.events(job_id, limit=500) if e.kind == "claimed"]
        assert all(not e.payload["took_over"] for e in claims)  # no lease ever expired


# Long enough (seconds, even with warm caches) to outlive SHORT_LEASE_S several times.
LONG_RANGE_TEST = {**JOB, "range_test": {"seeds": 2, "num_iter": 2000, "diverge_threshold": 1e9}}
SHORT_LEASE_S = 1.0


def _run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, kwargs={"once": True}, daemon=True)
    thread.start()
    return thread


def _wait_for_status(store: JobStore, job_id: str, status: JobStatus) -> None:
    deadline = time.monotonic() + 30
    while store.get(job_id).status is not status:
        assert time.monotonic() < deadline, f"job never became {status.value}"
        time.sleep(0.02)


def test_the_heartbeat_renews_the_lease_through_a_range_test_longer_than_the_lease(
    sqlite_url: str,
) -> None:
    (job_id,) = _submit(sqlite_url, 1, LONG_RANGE_TEST)
    store = JobStore(sqlite_url)
    thread = _run_in_thread(Worker(store, device="cpu", lease_s=SHORT_LEASE_S, worker_id="w1"))
    _wait_for_status(store, job_id, JobStatus.FINDING)

    stolen, started = [], time.monotonic()
    while store.get(job_id).status is JobStatus.FINDING:
        stolen.append(store.claim("thief", lease_s=30))
        time.sleep(SHORT_LEASE_S / 4)
    held_s = time.monotonic() - started
    thread.join(timeout=60)

    assert held_s > 1.5 * SHORT_LEASE_S and not any(stolen)  # it outlived its lease
    _check_finished_exactly(store, sqlite_url, job_id)


def test_a_worker_that_loses_its_lease_stops_the_range_test_and_writes_nothing(
    sqlite_url: str,
) -> None:
    (job_id,) = _submit(sqlite_url, 1, LONG_RANGE_TEST)
    store = JobStore(sqlite_url)
    thread = _run_in_thread(Worker(store, device="cpu", lease_s=SHORT_LEASE_S, worker_id="w1"))
    _wait_for_status(store, job_id, JobStatus.FINDING)

    store.cancel(job_id)  # the token moves on: the worker's next renewal meets LeaseLost
    thread.join(timeout=30)

    assert not thread.is_alive()
    job = store.get(job_id)
    assert job.status is JobStatus.CANCELLED
    try:
        study = optuna.load_study(study_name=job.study_name, storage=open_storage(sqlite_url))
    except KeyError:  # cancelled before the study was created
        return
    assert ATTR_BOUNDS not in study.user_attrs  # the range test stopped before storing
    assert not study.get_trials()


def test_a_job_whose_range_test_raises_fails_with_the_reason(sqlite_url: str) -> None:
    (job_id,) = _submit(sqlite_url, 1)
    store = JobStore(sqlite_url)
    broken = JobSpec.model_validate(JOB).model_dump(mode="json")
    broken["model"] = {"name": "logreg", "params": {"depth": 3}}  # logreg has no depth
    with get_engine(sqlite_url).begin() as conn:  # as stored before admission refused it
        conn.execute(sa.update(tables.Job).where(tables.Job.id == job_id).values(spec=broken))

    worked_on = Worker(store, device="cpu", worker_id="w1").run(once=True)

    assert worked_on == 1
    job = store.get(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and "depth" in job.error
    assert job.holder_worker_id is None


def test_a_cancelled_job_stops_its_running_trial_within_an_epoch(sqlite_url: str) -> None:
    epochs = 200  # trials of several seconds, epochs of tens of milliseconds
    search = {**JOB["search"], "n_trials": 40, "epochs": epochs, "pruner": "none"}
    many_trials = {**JOB, "model": {"name": "mlp"}, "dataset": {"name": "digits"}}
    many_trials |= {"batch_size": 8, "search": search}
    (job_id,) = _submit(sqlite_url, 1, many_trials)
    store = JobStore(sqlite_url)
    thread = _run_in_thread(Worker(store, device="cpu", worker_id="w1"))
    _wait_for_status(store, job_id, JobStatus.SEARCHING)
    study = optuna.load_study(
        study_name=store.get(job_id).study_name, storage=open_storage(sqlite_url)
    )
    while not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        time.sleep(0.02)
    time.sleep(0.5)  # into the trial, past the worker's first read of the job

    store.cancel(job_id)
    cancelled_at = time.monotonic()
    thread.join(timeout=30)

    assert not thread.is_alive()
    assert time.monotonic() - cancelled_at < 10  # not the rest of 40 trials of 400 epochs
    assert store.get(job_id).status is JobStatus.CANCELLED
    stopped = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if "cancelled" in str(t.user_attrs.get(ATTR_STOP_REASON, ""))
    ]
    assert len(stopped) == 1  # the running trial, stopped mid-way with the reason
    assert len(stopped[0].intermediate_values) < epochs
    counts = _trial_counts(sqlite_url, study.study_name)
    assert counts["waiting"] > 30  # the rest of the queue was left, its results readable


def test_workers_stopped_at_once_queue_each_interrupted_unit_once(jobs_url: str) -> None:
    # A SIGTERM reaches every child of a worker at once, and each child queues again what the
    # interruption left FAILED: two that read a slot as unqueued at the same time would both
    # queue it, and the job would train that unit twice. The race is a few milliseconds wide:
    # several rounds of four workers make it likely to show if the requeue were not locked.
    store = JobStore(jobs_url)
    (job_id,) = _submit(jobs_url, 1)
    job = store.get(job_id)
    workers = [Worker(JobStore(jobs_url), device="cpu") for _ in range(4)]
    storage = workers[0]._optuna_storage()
    study = prepare_study(job.spec, storage, study_name=job.study_name, progress=False)

    def stopped(worker: Worker, start: threading.Barrier) -> None:
        start.wait()
        worker._requeue(job)

    for _ in range(6):
        for _ in range(2):  # two units stopped mid-trial
            trial = study.ask()
            trial.set_user_attr(ATTR_FAIL_REASON, "interrupted (StopRequested)")
            study.tell(trial, state=TrialState.FAIL)
        start = threading.Barrier(len(workers))
        threads = [threading.Thread(target=stopped, args=(w, start)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        trials = open_study(job.spec, storage, job.study_name).get_trials(deepcopy=False)
        waiting = [t.user_attrs[ATTR_SLOT] for t in trials if t.state is TrialState.WAITING]
        assert sorted(waiting) == list(range(N_TRIALS))  # each slot queued once


def test_max_jobs_bounds_the_jobs_a_worker_takes_part_in(sqlite_url: str) -> None:
    first, second, third = _submit(sqlite_url, 3)
    store = JobStore(sqlite_url)

    worked_on = Worker(store, device="cpu", worker_id="w1").run(max_jobs=2)

    assert worked_on == 2
    for job_id in (first, second):
        _check_finished_exactly(store, sqlite_url, job_id)
    assert store.get(third).status is JobStatus.QUEUED


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--max-jobs", "0"], "--max-jobs must be >= 1"),
        (["--lease-s", "0"], "--lease-s must be"),
        (["--concurrency", "0"], "--concurrency must be >= 1"),
        (["--population", "0"], "--population must be >= 1"),
    ],
)
def test_worker_options_out_of_range_are_one_line_errors(
    sqlite_url: str, option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--database", sqlite_url, *option])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
