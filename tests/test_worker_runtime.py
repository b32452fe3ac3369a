"""A worker's process structure, with real ``lrtune worker`` processes: its row in the workers
table (registered, beating, stopped; ``lrtune workers``; the plugins it serves),
``--concurrency`` child processes (exact counts, a killed child replaced), and SIGTERM at an
epoch boundary (the interrupted trial resumed by another worker from its checkpoint)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState
from test_worker import JOB, _range_tests_run, _submit
from test_worker import _check_finished_exactly as check_finished_exactly

from lrtune._optuna import ATTR_FAIL_REASON, ATTR_ROOT, ATTR_RUN, ATTR_STOP_REASON
from lrtune.exceptions import NotFoundError
from lrtune.jobs import JobStatus, JobStore, PluginRegistry, WorkerActivity, WorkerRegistration
from lrtune.optuna_storage import open_storage
from lrtune.registry import model_names
from lrtune.result import TrainingRun
from lrtune.spec import JobSpec
from lrtune.training import TrainingSetup
from lrtune.workers.presence import Presence
from lrtune.workers.threads import available_cores, threads_per_unit

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIST = Path(__file__).parent / "plugin_dist"
HEARTBEAT_S = 0.3
TRIAL_HEARTBEAT_S = 1  # Optuna's
TRIAL_GRACE_S = 3  # a dead child's trial goes stale 3 s after its last beat (default: 60)

# Epochs of about a second on one thread (digits, 1797 samples, batches of 8), so "stopped at
# the next epoch boundary" is measurably sooner than the trial's end.
SLOW_EPOCHS = {
    **JOB,
    "model": {"name": "mlp", "params": {"hidden": [256]}},
    "dataset": {"name": "digits"},
    "batch_size": 8,
    # no trial ends early: no pruner, and cosine only (a constant LR at the suggestion diverges
    # on this MLP)
    "search": {
        **JOB["search"],
        "epochs": 10,
        "confirm_seeds": 0,
        "families": ["cosine"],
        "pruner": "none",
        "baselines": False,  # nothing to confirm: the tests are about the search's trials
    },
}
SLOW_CONFIRMATION_RUNS = 0  # no confirmation seeds and no baselines

# One trial of two epochs far longer than a worker's looks within them (LRTUNE_UNIT_CHECK_S):
# about 12,000 tiny batches, over 10 s an epoch on one thread.
LONG_EPOCHS = {
    **SLOW_EPOCHS,
    "model": {"name": "mlp", "params": {"hidden": [16]}},
    "dataset": {"name": "synthetic", "params": {"n_samples": 30_000}},
    "batch_size": 2,
    "search": {**SLOW_EPOCHS["search"], "n_trials": 1, "epochs": 2},
}
UNIT_CHECK_S = 1.0
STOP_MARGIN_S = 4.0  # Optuna's write, the requeue and the worker's exit after the look


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "LRTUNE_TORCH_THREADS": "1",
        "LRTUNE_WORKER_HEARTBEAT_S": str(HEARTBEAT_S),
        "LRTUNE_TRIAL_HEARTBEAT_S": str(TRIAL_HEARTBEAT_S),
        "LRTUNE_TRIAL_GRACE_S": str(TRIAL_GRACE_S),
        **extra,
    }


def _lrtune(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lrtune.cli", *args],
        cwd=REPO,
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _start_worker(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lrtune.cli", "worker", "--database", url, "--lease-s", "6", *args],
        cwd=REPO,
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until(what: str, check: Callable[[], Any], timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _listed_workers(url: str, *options: str) -> list[dict[str, Any]]:
    done = _lrtune("workers", "--database", url, "--json", *options)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["data"]


def _running_trial(url: str, store: JobStore, job_id: str) -> optuna.trial.FrozenTrial | None:
    """The job's running search trial once it has finished an epoch (its checkpoint exists)."""
    job = store.get(job_id)
    if job.status is not JobStatus.SEARCHING:
        return None
    study = optuna.load_study(study_name=job.study_name, storage=open_storage(url))
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return next((t for t in running if t.intermediate_values), None)


def _check_finished_exactly(store: JobStore, url: str, job_id: str) -> None:
    """As tests/test_worker.py's, for SLOW_EPOCHS' confirmation plan."""
    check_finished_exactly(store, url, job_id, confirmations=SLOW_CONFIRMATION_RUNS)


def _children(pid: int) -> list[int]:
    """The ids of the unit processes of worker ``pid`` (Linux /proc), not multiprocessing's
    resource tracker."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_text()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == pid and "spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def test_a_worker_is_listed_live_with_what_it_holds_and_the_plugins_it_serves(
    jobs_url: str,
) -> None:
    (job_id,) = _submit(jobs_url, 1, SLOW_EPOCHS)
    store = JobStore(jobs_url)
    with_plugin = _env(PYTHONPATH=os.pathsep.join([str(PLUGIN_DIST), str(REPO)]))
    worker = _start_worker(jobs_url, env=with_plugin)
    try:
        # while it trains a search trial, it is live, beating, and says which job it works on
        unit = WorkerActivity(job_id=job_id, phase=JobStatus.SEARCHING, lease=False)
        (listed,) = _wait_until(
            "the worker to report a search trial",
            lambda: [
                w for w in store.list_workers().data if w.pid == worker.pid and unit in w.activity
            ],
        )
        assert listed.live and listed.heartbeat_age_s < 10 * HEARTBEAT_S
        assert listed.device == "cpu" and listed.concurrency == 1 and listed.threads == 1
        _wait_until(
            "a later heartbeat",
            lambda: store.list_workers().data[0].last_heartbeat > listed.last_heartbeat,
        )
        (shown,) = _listed_workers(jobs_url)  # what lrtune workers --json prints
        assert shown["id"] == listed.id and shown["live"]
        assert {"job_id": job_id, "phase": "searching", "lease": False} in shown["activity"]
        # the plugin only the worker's environment has is known through it
        assert "plugin_mlp" not in model_names()
        known = store.known_registry()
        assert {"plugin_mlp", "logreg"} <= set(known.models)
        assert "plugin_blobs" in known.datasets
        assert known.models["plugin_mlp"] is None  # a plugin's params: its factory checks them
        assert known.models["mlp"]["properties"]["hidden"]  # a built-in's JSON schema
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)

    assert worker.returncode == 0, stderr
    assert store.list_workers().data == []  # stopped: no longer live
    (stopped,) = store.list_workers(live_only=False).data
    assert stopped.stopped_at is not None and not stopped.live and stopped.activity == []
    assert store.known_registry().models == {}
    everything = _lrtune("workers", "--database", jobs_url, "--all")
    assert everything.returncode == 0, everything.stderr
    assert listed.id in everything.stdout and "(stopped)" in everything.stdout


def _registration(
    worker_id: str, heartbeat_s: float, registry: PluginRegistry | None = None
) -> WorkerRegistration:
    """A worker's registration with placeholder host, pid and version."""
    return WorkerRegistration(
        id=worker_id,
        host="h",
        device="cpu",
        pid=1,
        version="0",
        heartbeat_s=heartbeat_s,
        plugin_registry=registry or PluginRegistry(),
    )


def test_a_silent_worker_drops_out_of_the_live_list_after_three_heartbeats(store: JobStore) -> None:
    registration = _registration("w-silent", 0.2, PluginRegistry(models={"only-here": None}))
    assert store.register_worker(registration).live
    assert store.known_registry().models == {"only-here": None}
    time.sleep(0.7)  # more than 3 heartbeats without one: as if killed with SIGKILL

    assert store.list_workers().data == [] and store.known_registry().models == {}
    (silent,) = store.list_workers(live_only=False).data
    assert not silent.live and silent.stopped_at is None and silent.heartbeat_age_s >= 0.6
    store.beat("w-silent", [])  # it was only slow: live again
    assert [w.id for w in store.list_workers().data] == ["w-silent"]
    store.stop_worker("w-silent")
    with pytest.raises(NotFoundError, match="register it first"):
        store.beat("w-silent", [])
    with pytest.raises(NotFoundError):
        store.stop_worker("nobody")


@contextlib.contextmanager
def _database_refusing_connections(url: str) -> Iterator[None]:
    """The database of ``url`` refuses new connections and has none open, as while its server
    restarts; it takes them again after the ``with``."""
    database = sa.engine.make_url(url).database
    admin = sa.create_engine(sa.engine.make_url(url).set(database="postgres"))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false'))
        conn.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
            {"d": database},
        )
        try:
            yield
        finally:
            conn.execute(sa.text(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true'))
    admin.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("storage_url", ["postgres"], indirect=True)
def test_a_worker_that_cannot_register_while_its_store_is_away_registers_at_its_first_beat(
    store: JobStore,
) -> None:
    registration = _registration("w-early", 0.3)
    store.list_workers()  # the pool holds a connection, which the outage then cuts
    with _database_refusing_connections(store.url):
        presence = Presence(store, registration, list).__enter__()  # does not raise
    try:
        _wait_until("the first beat to register it", lambda: store.list_workers().data, 10)
        assert [w.id for w in store.list_workers().data] == ["w-early"]
    finally:
        presence.__exit__(None, None, None)


def test_threads_per_unit_share_the_cores_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LRTUNE_TORCH_THREADS", raising=False)
    cores = available_cores()
    for concurrency in (1, 2, 64):
        threads, why = threads_per_unit(concurrency)
        assert threads == max(1, cores // concurrency)
        assert f"{cores} cores / concurrency {concurrency}" in why and "--threads" in why
    assert threads_per_unit(4, threads=3) == (3, "--threads")
    monkeypatch.setenv("LRTUNE_TORCH_THREADS", "2")
    assert threads_per_unit(4) == (2, "LRTUNE_TORCH_THREADS")


# In a fresh interpreter: start a worker (or a pool child's runner) with no work for it, then
# build a unit's optimizer and print the modules that build imported.
_FIRST_OPTIMIZER = """
import sys, torch
from lrtune.jobs import JobStore, upgrade
from lrtune.workers.loop import Worker, unit_runner
from lrtune.workers.pool import ChildConfig
url = sys.argv[1]
upgrade(url)
if sys.argv[2] == "worker":
    Worker(JobStore(url), device="cpu").run(once=True)
else:
    unit_runner(ChildConfig(url, "cpu", "w", 60.0, None, threads=1), "w/0")
before = set(sys.modules)
torch.optim.Adam([torch.zeros(1, requires_grad=True)])
print(sorted(set(sys.modules) - before))
"""


@pytest.mark.parametrize("process", ["worker", "pool child"])
def test_a_worker_has_imported_what_its_first_units_optimizer_imports_before_it_looks_for_work(
    sqlite_url: str, process: str
) -> None:
    # torch.optim's first optimizer imports torch._dynamo (1-2 s here): inside a unit, that
    # stretched a helper's first trial to 3x its next.
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_OPTIMIZER, sqlite_url, process.split()[0]],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_lrtune_workers_bad_input_is_a_one_line_error(tmp_path: Path) -> None:
    for args, says in (
        (["--database", "nope://x"], "unknown database"),
        (["--database", str(tmp_path)], ""),
        (["--bogus"], "unrecognized arguments"),
    ):
        done = _lrtune("workers", *args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("lrtune: error: ") and says in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_a_worker_waits_for_its_database_and_starts_once_it_is_there(
    empty_jobs_url: str, tmp_path: Path
) -> None:
    from lrtune.jobs import upgrade

    if empty_jobs_url.startswith("sqlite"):  # a file where its folder should be: cannot open
        folder = tmp_path / "blocked"
        folder.write_text("not a folder")
        url = f"sqlite:///{folder / 'jobs.db'}"
        make_available: Callable[[], Any] = folder.unlink
    else:  # no schema yet: the migration job has not run
        url = empty_jobs_url
        make_available = functools.partial(upgrade, url)
    worker = _start_worker(url, "--once", "--wait-for-db", "60")
    try:
        first_lines = itertools.islice(iter(worker.stderr.readline, ""), 5)
        said = next((line for line in first_lines if "event=store_unavailable" in line), None)
        assert said, "the worker did not say it waits for its database"
        make_available()
        out, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    assert "stopped after working on 0 jobs" in out


def test_a_worker_told_not_to_wait_fails_at_once_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("not a folder")
    url = f"sqlite:///{tmp_path / 'blocked' / 'jobs.db'}"
    done = _lrtune("worker", "--database", url, "--once", "--wait-for-db", "0")
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith("INFO ")]
    assert len(errors) == 1 and errors[0].startswith("lrtune: error: cannot open"), done.stderr
    assert _lrtune("worker", "--wait-for-db", "-1").returncode == 2


def test_no_workers_listed_on_a_new_store(jobs_url: str) -> None:
    done = _lrtune("workers", "--database", jobs_url)
    assert done.returncode == 0
    assert done.stdout.startswith("no live workers in the job store at "), done.stdout


@pytest.mark.slow
def test_concurrency_2_finishes_jobs_exactly_and_replaces_a_killed_child(
    jobs_url: str, tmp_path: Path
) -> None:
    # trials of several epochs: the child killed an epoch into its trial is surely still in it
    slow = {**SLOW_EPOCHS, "search": {**SLOW_EPOCHS["search"], "epochs": 8}}
    job_ids = _submit(jobs_url, 2, slow)
    store = JobStore(jobs_url)
    worker = _start_worker(
        jobs_url, "--concurrency", "2", "--artifact-dir", str(tmp_path / "artifacts")
    )
    try:
        _wait_until("two children", lambda: len(_children(worker.pid)) == 2)
        children = _children(worker.pid)
        _wait_until(  # both children busy, each an epoch into its trial
            "two trials an epoch in",
            lambda: sum(_running_trials(jobs_url, store, j) for j in job_ids) == 2,
        )
        os.kill(children[0], signal.SIGKILL)
        _wait_until(
            "the killed child replaced",
            lambda: len(_children(worker.pid)) == 2 and children[0] not in _children(worker.pid),
        )
        _wait_until(
            "both jobs to succeed",
            lambda: all(store.get(j).status is JobStatus.SUCCEEDED for j in job_ids),
            timeout_s=240,
        )
        live = _children(worker.pid)
        assert len(live) == 2
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)

    assert worker.returncode == 0, stderr
    assert "event=child_died" in stderr and stderr.count("event=child_started") == 3
    assert not any(Path(f"/proc/{pid}").exists() for pid in live)  # the children exited too
    assert "database is locked" not in stderr
    for job_id in job_ids:
        _check_finished_exactly(store, jobs_url, job_id)
    failed = {j: _trials(jobs_url, store, j, TrialState.FAIL) for j in job_ids}
    ((job_id, (dead,)),) = [(j, trials) for j, trials in failed.items() if trials]
    assert sum(map(len, failed.values())) == 1  # the killed child's trial, gone stale
    finished = _trials(jobs_url, store, job_id, TrialState.COMPLETE, TrialState.PRUNED)
    (retry,) = [t for t in finished if _root(t) == _root(dead)]
    assert retry.user_attrs[ATTR_RUN]["resumed_from"] > 0  # from the dead child's checkpoint


def _root(trial: optuna.trial.FrozenTrial) -> int:
    """The first trial of the trial's queue slot: a retry shares it, and its checkpoint."""
    return trial.user_attrs[ATTR_ROOT]


def _trials(
    url: str, store: JobStore, job_id: str, *states: TrialState
) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=store.get(job_id).study_name, storage=open_storage(url))
    return study.get_trials(deepcopy=False, states=states)


def _running_trials(url: str, store: JobStore, job_id: str) -> int:
    """How many of the job's search trials run and have finished an epoch."""
    if store.get(job_id).status is not JobStatus.SEARCHING:
        return 0
    return sum(bool(t.intermediate_values) for t in _trials(url, store, job_id, TrialState.RUNNING))


@pytest.mark.slow
def test_sigterm_during_a_range_test_hands_the_lease_back_and_exits_0(sqlite_url: str) -> None:
    long_range_test = {  # seconds of steps on the MLP
        **SLOW_EPOCHS,
        "range_test": {"seeds": 2, "num_iter": 600, "diverge_threshold": 1e9},
        "search": JOB["search"],
    }
    (job_id,) = _submit(sqlite_url, 1, long_range_test)
    store = JobStore(sqlite_url)
    worker = _start_worker(sqlite_url)
    _wait_until("the range test", lambda: store.get(job_id).status is JobStatus.FINDING)
    time.sleep(0.5)

    worker.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    _, stderr = worker.communicate(timeout=30)

    assert worker.returncode == 0, stderr
    assert time.monotonic() - stopped_at < 10
    assert "event=handed_back" in stderr
    job = store.get(job_id)
    assert job.status is JobStatus.QUEUED and job.holder_worker_id is None
    second = _lrtune("worker", "--database", sqlite_url, "--once")
    assert second.returncode == 0, second.stderr
    assert store.get(job_id).status is JobStatus.SUCCEEDED
    assert _range_tests_run(store, store.get(job_id)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [1, 2])
def test_sigterm_mid_trial_stops_at_the_epoch_boundary_and_the_next_worker_resumes_it(
    sqlite_url: str, tmp_path: Path, concurrency: int
) -> None:
    # Long trials: the children start their first units up to a few epochs apart (each loads
    # the data first), and neither may reach its end before the signal's epoch boundary.
    epochs = 30
    long_trials = {**SLOW_EPOCHS, "search": {**SLOW_EPOCHS["search"], "epochs": epochs}}
    (job_id,) = _submit(sqlite_url, 1, long_trials)
    store = JobStore(sqlite_url)
    artifacts = str(tmp_path / "artifacts")
    first = _start_worker(
        sqlite_url, "--artifact-dir", artifacts, "--concurrency", str(concurrency)
    )
    _wait_until(  # every unit an epoch into its trial
        "trials an epoch in",
        lambda: _running_trials(sqlite_url, store, job_id) == concurrency,
    )
    running = _trials(sqlite_url, store, job_id, TrialState.RUNNING)
    epoch_s = _epoch_seconds(sqlite_url, store.get(job_id).study_name, running[0].number)
    children = _children(first.pid)

    signalled = datetime.now()  # the clock Optuna's trial times are in
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=60)

    assert first.returncode == 0, stderr
    assert len(children) == (concurrency if concurrency > 1 else 0)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)  # they exited too
    interrupted = _trials(sqlite_url, store, job_id, TrialState.FAIL)
    assert sorted(t.number for t in interrupted) == sorted(t.number for t in running)
    for trial in interrupted:
        assert trial.user_attrs[ATTR_FAIL_REASON] == "interrupted (StopRequested)"
        # it stopped at the next epoch boundary, long before the trial's end
        assert trial.datetime_complete is not None
        stopped_s = (trial.datetime_complete - signalled).total_seconds()
        assert stopped_s < 2 * epoch_s + 1.5, (stopped_s, epoch_s)
        assert len(trial.intermediate_values) < epochs - 2
    assert store.get(job_id).status is JobStatus.SEARCHING

    second = _lrtune("worker", "--database", sqlite_url, "--once", "--artifact-dir", artifacts)

    assert second.returncode == 0, second.stderr
    _check_finished_exactly(store, sqlite_url, job_id)
    finished = _trials(sqlite_url, store, job_id, TrialState.COMPLETE, TrialState.PRUNED)
    for trial in interrupted:
        (retry,) = [t for t in finished if _root(t) == _root(trial)]  # its slot's retry
        assert retry.user_attrs[ATTR_RUN]["resumed_from"] > 0  # from the checkpoint


def _epoch_seconds(url: str, study_name: str, number: int) -> float:
    """How long one epoch of the running trial ``number`` takes, from one report to the next."""
    study = optuna.load_study(study_name=study_name, storage=open_storage(url))

    def reported() -> int:
        return len(study.get_trials(deepcopy=False)[number].intermediate_values)

    seen = reported()
    _wait_until("an epoch boundary", lambda: reported() > seen)
    start, seen = time.monotonic(), reported()
    _wait_until("the next epoch boundary", lambda: reported() > seen)
    return time.monotonic() - start


def _long_epochs_worker(url: str, *args: str) -> subprocess.Popen:
    """A worker that looks every UNIT_CHECK_S seconds within an epoch, on LONG_EPOCHS' trial."""
    return _start_worker(url, *args, env=_env(LRTUNE_UNIT_CHECK_S=str(UNIT_CHECK_S)))


def _trial_running(url: str, store: JobStore, job_id: str, epochs_done: int) -> bool:
    """Whether the job's search trial runs and has reported ``epochs_done`` epochs."""
    if store.get(job_id).status is not JobStatus.SEARCHING:
        return False
    running = _trials(url, store, job_id, TrialState.RUNNING)
    return any(len(t.intermediate_values) == epochs_done for t in running)


@pytest.mark.slow
def test_sigterm_mid_epoch_stops_within_the_unit_check_and_the_epoch_is_redone_on_resume(
    sqlite_url: str, tmp_path: Path
) -> None:
    (job_id,) = _submit(sqlite_url, 1, LONG_EPOCHS)
    store = JobStore(sqlite_url)
    artifacts = str(tmp_path / "artifacts")
    first = _long_epochs_worker(sqlite_url, "--artifact-dir", artifacts)
    _wait_until(  # epoch 0 checkpointed, epoch 1 begun
        "the trial an epoch in", lambda: _trial_running(sqlite_url, store, job_id, 1), 180
    )
    time.sleep(UNIT_CHECK_S)

    signalled = time.monotonic()
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=60)
    stopped_s = time.monotonic() - signalled

    assert first.returncode == 0, stderr
    assert stopped_s < UNIT_CHECK_S + STOP_MARGIN_S, stopped_s  # not at the epoch's end
    (interrupted,) = _trials(sqlite_url, store, job_id, TrialState.FAIL)
    assert interrupted.user_attrs[ATTR_FAIL_REASON] == "interrupted (StopRequested)"
    assert len(interrupted.intermediate_values) == 1  # it stopped inside epoch 1
    assert store.get(job_id).status is JobStatus.SEARCHING

    second = _lrtune("worker", "--database", sqlite_url, "--once", "--artifact-dir", artifacts)

    assert second.returncode == 0, second.stderr
    assert store.get(job_id).status is JobStatus.SUCCEEDED
    (retry,) = _trials(sqlite_url, store, job_id, TrialState.COMPLETE, TrialState.PRUNED)
    assert _root(retry) == _root(interrupted)  # the budget: one trial, finished once
    assert _trials(sqlite_url, store, job_id, TrialState.WAITING) == []
    run = TrainingRun.model_validate(retry.user_attrs[ATTR_RUN])
    assert run.resumed_from == 1 and len(run.epochs) == 2  # epoch 1 redone from its start
    steps = TrainingSetup.from_spec(JobSpec.model_validate(LONG_EPOCHS), "cpu").steps_per_epoch
    assert len(run.lr_steps) == 2 * steps  # none of the interrupted epoch's steps left over


@pytest.mark.slow
def test_a_cancel_mid_epoch_stops_the_unit_within_the_unit_check(sqlite_url: str) -> None:
    (job_id,) = _submit(sqlite_url, 1, LONG_EPOCHS)
    store = JobStore(sqlite_url)
    worker = _long_epochs_worker(sqlite_url)
    try:
        _wait_until("the trial training", lambda: _trial_running(sqlite_url, store, job_id, 0), 120)
        time.sleep(UNIT_CHECK_S)
        cancelled = time.monotonic()
        store.cancel(job_id)
        (pruned,) = _wait_until(
            "the trial stopped",
            lambda: _trials(sqlite_url, store, job_id, TrialState.PRUNED),
            timeout_s=60,
        )
        stopped_s = time.monotonic() - cancelled
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)

    assert worker.returncode == 0, stderr
    assert stopped_s < UNIT_CHECK_S + STOP_MARGIN_S, stopped_s  # not at the epoch's end
    assert pruned.user_attrs[ATTR_STOP_REASON] == "stopped: the job was cancelled"
    assert pruned.intermediate_values == {}  # inside its first epoch
    assert store.get(job_id).status is JobStatus.CANCELLED
