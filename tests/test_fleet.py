"""Fleets of real ``lrtune worker`` processes, and the failures they must survive: a worker
killed with SIGKILL mid range test and mid trial, PostgreSQL restarted under running workers.

Every job must still succeed with exactly its budget: one completed range test, ``n_trials``
finished trials, its confirmation runs, no slot trained twice, and no FAIL trial but the ones
a kill explains. Leases, Optuna's trial heartbeat and the retry backoff are shortened through
the workers' settings (``LRTUNE_*``), so that a dead worker's work is taken over in seconds.

The restart test restarts the cluster serving ``LRTUNE_TEST_POSTGRES_URL``:
``pg_ctlcluster --skip-systemctl-redirect <version> main restart``, or the shell command in
``LRTUNE_TEST_POSTGRES_RESTART`` (e.g. for a scratch cluster of one's own while developing).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from lrtune._optuna import ATTR_SLOT, ATTR_SPEC
from lrtune.exceptions import StorageUnavailableError
from lrtune.jobs import JobStatus, JobStore, StoreSettings, upgrade
from lrtune.optuna_storage import open_storage
from lrtune.search import TrialRecord, open_confirmation
from lrtune.search.answer import NO_FAIL_REASON
from lrtune.spec import JobSpec
from tests.test_worker import JOB, LONG_RANGE_TEST, REPO, _check_finished_exactly, _submit

optuna.logging.set_verbosity(optuna.logging.WARNING)

LEASE_S = 6
WORKER_SETTINGS = {
    "LRTUNE_TRIAL_HEARTBEAT_S": "1",
    "LRTUNE_TRIAL_GRACE_S": "5",  # a dead worker's trial is retried 5 s after its last beat
    "LRTUNE_RETRY_INITIAL_S": "0.2",
    "LRTUNE_RETRY_MAX_S": "2",
}
WAIT_S = 240  # for a fleet to finish its jobs on a loaded two-core machine


class Fleet:
    """Worker processes on one database, each logging to its own file."""

    def __init__(self, url: str, logs: Path, *args: str) -> None:
        self.url = url
        self.logs = logs
        self.args = args
        self.workers: list[subprocess.Popen[bytes]] = []
        logs.mkdir(exist_ok=True)

    def start(self, n: int = 1, *args: str) -> list[subprocess.Popen[bytes]]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", **WORKER_SETTINGS}
        started = []
        for _ in range(n):
            log = open(self.logs / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115
            command = [sys.executable, "-m", "lrtune.cli", "worker", "--database", self.url]
            command += ["--lease-s", str(LEASE_S), "--threads", "1", *self.args, *args]
            worker = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)
            log.close()
            self.workers.append(worker)
            started.append(worker)
        return started

    def log_text(self) -> str:
        return "".join(path.read_text() for path in sorted(self.logs.glob("*.log")))

    def wait(self) -> list[int]:
        """Wait for ``--once`` workers to exit by themselves; their exit codes."""
        return [worker.wait(timeout=WAIT_S) for worker in self.workers]

    def stop(self) -> list[int | None]:
        """SIGTERM the workers still running; their exit codes."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        codes = []
        for worker in self.workers:
            try:
                codes.append(worker.wait(timeout=60))
            except subprocess.TimeoutExpired:
                worker.kill()
                codes.append(None)
        return codes


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Any:
    fleets: list[Fleet] = []

    def make(url: str, *args: str) -> Fleet:
        fleets.append(Fleet(url, tmp_path / f"logs-{len(fleets)}", *args))
        return fleets[-1]

    yield make
    for fleet in fleets:  # a failed test must not leave workers behind
        for worker in fleet.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _until(
    condition: Callable[[], Any],
    what: str,
    timeout: float = WAIT_S,
    context: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something true (a database outage is retried);
    ``context`` says what to show when it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = condition()
        except (StorageUnavailableError, sa.exc.SQLAlchemyError, optuna.exceptions.OptunaError):
            found = None  # the database is restarting
        if found:
            return found
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}" + (f"\n{context()}" if context else ""))


def _fleet_state(store: JobStore, job_ids: list[str], fleet: Fleet) -> str:
    statuses = [store.get(job_id).status.value for job_id in job_ids]
    return f"jobs: {statuses}\nworkers' logs (end):\n{fleet.log_text()[-3000:]}"


def _all_finished(store: JobStore, job_ids: list[str]) -> bool:
    return all(store.get(job_id).status.finished for job_id in job_ids)


def _check_no_duplicate_or_unexplained_fail(url: str, study_name: str) -> list[TrialRecord]:
    """Each queue slot of the job's two studies has exactly one finished trial; a FAIL trial
    must be one whose worker died (no reason of its own) and whose slot was retried. Returns
    the FAIL records of the search and the confirmation."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    spec = JobSpec.model_validate(study.user_attrs[ATTR_SPEC])
    confirm = open_confirmation(study, spec.search, spec.seed)
    failed = []
    for kind, queue in (("search", study), ("confirmation", confirm)):
        records = [TrialRecord.read(t, kind) for t in queue.get_trials(deepcopy=False)]
        done = [r.slot for r in records if r.state in ("COMPLETE", "PRUNED")]
        finished = collections.Counter(done)
        assert set(finished.values()) == {1}, (kind, finished)  # nothing trained twice
        for record in records:
            if record.state == "FAIL":
                assert record.stop_reason == NO_FAIL_REASON, record.stop_reason
                assert finished[record.slot] == 1  # and its slot was finished by a retry
                failed.append(record)
    return failed


def _check_held_by_one_worker_at_a_time(store: JobStore, job_id: str) -> list[dict[str, Any]]:
    """Replay the job's events: a claim while another worker holds the lease must be a
    take-over of an expired lease. Returns the claims."""
    holder = None
    claims = []
    for event in store.events(job_id, limit=500):
        if event.kind == "claimed":
            took_over = event.payload["took_over"]
            assert holder is None or took_over == holder, (holder, event.payload)
            holder = event.payload["worker_id"]
            claims.append(event.payload)
        elif event.kind == "released" or (
            event.kind == "status" and event.payload["to"] != JobStatus.FINDING.value
        ):
            holder = None
    return claims


def _check_fleet_run(store: JobStore, url: str, job_ids: list[str]) -> None:
    for job_id in job_ids:
        _check_finished_exactly(store, url, job_id)
        claims = _check_held_by_one_worker_at_a_time(store, job_id)
        assert all(claim["took_over"] is None for claim in claims)  # no lease ever expired
        assert _check_no_duplicate_or_unexplained_fail(url, store.get(job_id).study_name) == []


def _connections(admin_url: str, application_name: str) -> int:
    engine = sa.create_engine(admin_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %(name)s",
                {"name": application_name},
            ).scalar()
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_four_workers_run_twelve_jobs_on_postgres_within_their_connection_budget(
    postgres_url: str, fleet_factory: Any
) -> None:
    name = f"lrtune-fleet-{uuid.uuid4().hex[:8]}"  # counts this fleet's connections only
    url = sa.engine.make_url(postgres_url).update_query_dict({"application_name": name})
    url = url.render_as_string(hide_password=False)
    _fresh_schema(postgres_url)
    job_ids = _submit(url, 12)
    store = JobStore(url)  # the one more process: this test, reading as the API would
    fleet = fleet_factory(url, "--once")
    fleet.start(4)

    peak = 0
    while not _all_finished(store, job_ids):
        peak = max(peak, _connections(postgres_url, name))
        store.list_jobs(limit=20)
        assert any(w.poll() is None for w in fleet.workers), fleet.log_text()[-3000:]
        time.sleep(0.2)

    assert fleet.wait() == [0, 0, 0, 0], fleet.log_text()[-3000:]
    settings = StoreSettings()
    per_process = settings.db_pool_size + settings.db_max_overflow
    print(f"peak connections of 4 workers and this process: {peak}")
    # 4 workers and this process, each one pool, and each worker's listening connection
    assert 1 <= peak <= 5 * per_process + 4 < 100
    _check_fleet_run(store, url, job_ids)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_workers_run_six_jobs_on_sqlite_without_database_is_locked(
    tmp_path: Path, fleet_factory: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    job_ids = _submit(url, 6)
    store = JobStore(url)
    fleet = fleet_factory(url, "--once")
    fleet.start(2)

    codes = fleet.wait()

    logs = fleet.log_text()
    assert codes == [0, 0], logs[-3000:]
    assert "database is locked" not in logs
    _check_fleet_run(store, url, job_ids)


def _fresh_schema(postgres_url: str) -> None:
    """The scratch database without lrtune's or Optuna's tables, then upgraded."""
    from lrtune.jobs import tables
    from lrtune.jobs.db import get_engine

    optuna_tables = ["trial_heartbeats", "trial_intermediate_values", "trial_params"]
    optuna_tables += ["trial_system_attributes", "trial_user_attributes", "trial_values"]
    optuna_tables += ["trials", "study_directions", "study_system_attributes"]
    optuna_tables += ["study_user_attributes", "studies", "version_info", "alembic_version"]
    with get_engine(postgres_url).begin() as conn:
        for table in [*tables.Base.metadata.tables, tables.VERSION_TABLE, *optuna_tables]:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
    upgrade(postgres_url)


def _trial_with_epochs_done(
    reader: optuna.storages.BaseStorage, study_name: str, epochs: int
) -> bool:
    return _running_with_epochs_done(reader, study_name, epochs) > 0


def _running_with_epochs_done(
    reader: optuna.storages.BaseStorage, study_name: str, epochs: int
) -> int:
    """How many running trials of the study have reported ``epochs`` epochs. ``reader``: one
    storage for the whole test (a new one replays the whole journal: too slow to poll with)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=reader)
    except KeyError:  # not created yet
        return 0
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return sum(len(t.intermediate_values) >= epochs for t in running)


# A range test of seconds (killed midway), then trials of many epochs (killed after two).
KILLED_JOB = {**LONG_RANGE_TEST, "search": {**JOB["search"], "epochs": 60}}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_job_survives_workers_killed_mid_range_test_and_mid_trial(
    jobs_url: str, tmp_path: Path, fleet_factory: Any
) -> None:
    (job_id,) = _submit(jobs_url, 1, KILLED_JOB)
    store = JobStore(jobs_url)
    fleet = fleet_factory(jobs_url, "--artifact-dir", str(tmp_path / "artifacts"))
    (first,) = fleet.start()
    _until(lambda: store.get(job_id).status is JobStatus.FINDING, "the range test to start")
    time.sleep(1.0)  # into the range test

    first.send_signal(signal.SIGKILL)
    first.wait()
    (second,) = fleet.start()  # takes the job over once the dead worker's lease expires
    study_name = store.get(job_id).study_name
    _until(lambda: store.get(job_id).status is JobStatus.SEARCHING, "the range test's re-run")
    reader = open_storage(jobs_url, heartbeat_interval=None)
    _until(lambda: _trial_with_epochs_done(reader, study_name, 2), "a trial two epochs in")
    second.send_signal(signal.SIGKILL)
    second.wait()
    fleet.start()  # retries the dead trial once its heartbeat is stale, from its checkpoint
    _until(lambda: store.get(job_id).status.finished, "the job to finish")

    assert fleet.stop()[-1] == 0, fleet.log_text()[-3000:]
    assert "database is locked" not in fleet.log_text()
    _check_finished_exactly(store, jobs_url, job_id)  # one completed range test, full counts
    claims = _check_held_by_one_worker_at_a_time(store, job_id)
    assert claims[1]["took_over"] == claims[0]["worker_id"]  # the killed range test's lease
    (killed,) = _check_no_duplicate_or_unexplained_fail(jobs_url, study_name)
    study = optuna.load_study(study_name=study_name, storage=open_storage(jobs_url))
    (retry,) = [
        TrialRecord.read(t)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.user_attrs.get(ATTR_SLOT) == killed.slot
    ]
    assert retry.root_trial == killed.number
    assert retry.run is not None and retry.run.resumed_from is not None
    assert retry.run.resumed_from > 0  # resumed from the killed trial's checkpoint


# Trials of many epochs, all three trained as one population (killed two epochs in).
POPULATION_JOB = {**JOB, "search": {**JOB["search"], "epochs": 60, "pruner": "none"}}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_population_killed_mid_trial_resumes_every_member_from_its_checkpoint(
    jobs_url: str, tmp_path: Path, fleet_factory: Any
) -> None:
    (job_id,) = _submit(jobs_url, 1, POPULATION_JOB)
    store = JobStore(jobs_url)
    fleet = fleet_factory(jobs_url, "--artifact-dir", str(tmp_path / "artifacts"))
    (first,) = fleet.start(1, "--population", "3")
    _until(lambda: store.get(job_id).status is JobStatus.SEARCHING, "the search to start")
    study_name = store.get(job_id).study_name
    reader = open_storage(jobs_url, heartbeat_interval=None)
    _until(lambda: _running_with_epochs_done(reader, study_name, 2) == 3, "3 members 2 in")

    first.send_signal(signal.SIGKILL)
    first.wait()
    fleet.start(1, "--population", "3")  # retries the dead members once they go stale
    _until(lambda: store.get(job_id).status.finished, "the job to finish")

    assert fleet.stop()[-1] == 0, fleet.log_text()[-3000:]
    _check_finished_exactly(store, jobs_url, job_id)
    killed = _check_no_duplicate_or_unexplained_fail(jobs_url, study_name)
    assert len(killed) == 3  # the whole population, each retried once
    study = optuna.load_study(study_name=study_name, storage=open_storage(jobs_url))
    retries = [
        TrialRecord.read(t)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get(ATTR_SLOT) in {k.slot for k in killed}
    ]
    assert sorted(r.root_trial for r in retries) == sorted(k.number for k in killed)
    for retry in retries:
        assert retry.run is not None and retry.run.resumed_from is not None
        assert retry.run.resumed_from >= 2  # from the killed member's own checkpoint
        assert len(retry.run.epochs) == 60


def _restart_postgres(postgres_url: str) -> None:
    command = os.environ.get("LRTUNE_TEST_POSTGRES_RESTART")
    if not command:
        engine = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            version = int(conn.exec_driver_sql("SHOW server_version_num").scalar()) // 10000
        engine.dispose()
        command = f"pg_ctlcluster --skip-systemctl-redirect {version} main restart"
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.serial  # the restarts would cut every other test's connections
@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_jobs_survive_postgres_restarted_under_running_workers(
    postgres_url: str, tmp_path: Path, fleet_factory: Any
) -> None:
    _fresh_schema(postgres_url)
    slower = {**JOB, "range_test": {"seeds": 2, "num_iter": 600}}
    # trials of 200 epochs (about a second each) and any job's trial will do: the restart
    # below must find one running even when a loaded machine polls slowly
    slower["search"] = {**JOB["search"], "epochs": 200, "pruner": "none"}
    job_ids = _submit(postgres_url, 3, slower)
    store = JobStore(postgres_url)
    fleet = fleet_factory(postgres_url, "--artifact-dir", str(tmp_path / "artifacts"))
    fleet.start(2)
    _until(lambda: fleet.log_text().count("event=started") == 2, "the workers to start")

    _until(lambda: store.get(job_ids[0]).status is JobStatus.FINDING, "a range test")
    _restart_postgres(postgres_url)  # during a range test (and its lease's renewals)
    study_names = [store.get(job_id).study_name for job_id in job_ids]
    reader = open_storage(postgres_url, heartbeat_interval=None)
    _until(
        lambda: any(_trial_with_epochs_done(reader, name, 1) for name in study_names),
        "a running trial",
        context=lambda: _fleet_state(store, job_ids, fleet),
    )
    _restart_postgres(postgres_url)  # during trials
    _until(lambda: _all_finished(store, job_ids), "the jobs to finish")

    assert all(w.poll() is None for w in fleet.workers), fleet.log_text()[-3000:]
    assert fleet.stop() == [0, 0], fleet.log_text()[-3000:]
    for job_id in job_ids:
        _check_finished_exactly(store, postgres_url, job_id)
        _check_held_by_one_worker_at_a_time(store, job_id)
        _check_no_duplicate_or_unexplained_fail(postgres_url, store.get(job_id).study_name)
