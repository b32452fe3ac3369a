"""Agents: the user's machine serves its task's jobs over HTTP (``lrtune agent``), against a
real service (uvicorn on loopback) on SQLite and PostgreSQL: the notebook's answer, a stale
agent refused, kill -9 and SIGTERM mid-unit with the budget counted once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest
import task_fixtures
from live_api import serve
from optuna.trial import TrialState
from task_fixtures import RANGE_TEST, SEARCH, trained_units

import lrtune
from lrtune.agent import Agent
from lrtune.agent_protocol import AgentWork, UnitWork
from lrtune.api.config import ApiSettings
from lrtune.api.main import create_app
from lrtune.client import Client
from lrtune.exceptions import ConflictError
from lrtune.jobs import JobStatus, JobStore, StoreSettings
from lrtune.workers.tasks import load_named

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def service(jobs_url: str) -> Iterator[tuple[str, JobStore]]:
    """The service with no worker (``lrtune serve --no-worker``), trial heartbeats every
    second and a unit silent for 3 s retaken."""
    settings = StoreSettings(database_url=jobs_url, trial_heartbeat_s=1, trial_grace_s=3)
    store = JobStore(jobs_url, settings=settings)
    with serve(create_app(ApiSettings(database_url=jobs_url), store=store)) as url:
        yield url, store


def agent(url: str, *paths: str, **options: object) -> Agent:
    return Agent(Client(url), load_named(paths or ("task_fixtures:blobs",)), device="cpu",
                 **options)  # fmt: skip


def submit(url: str, name: str = "Blobs", **search: object) -> str:
    body = {"task": {"name": name}, "range_test": RANGE_TEST, "search": SEARCH | search}
    return Client(url).submit(body, reuse=False).id


def test_a_task_tuned_by_an_agent_gets_the_notebooks_recommendation(
    service: tuple[str, JobStore],
) -> None:
    url, store = service
    serving = agent(url, once=True)
    with serving.registered():  # published: the service admits the job
        job_id = submit(url)
        listed = Client(url).list_workers().data
    assert [w.plugin_registry.tasks["Blobs"].metric for w in listed] == ["accuracy"]

    units = serving.run()

    job = store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    on_agent = store.recommendation(job_id).recommendation
    in_notebook = lrtune.tune(
        task_fixtures.Blobs(), search=SEARCH, range_test=RANGE_TEST, progress=False
    )
    assert on_agent.best.schedule == in_notebook.best.schedule
    assert on_agent.base_lr == in_notebook.base_lr
    assert job.progress.trials_done == 3
    assert units == 1 + trained_units(store, job_id)  # the range test, then each unit once


def test_an_agents_report_on_a_unit_retaken_from_it_is_refused(
    service: tuple[str, JobStore],
) -> None:
    url, store = service
    serving = agent(url, max_units=1)
    with serving.registered():
        job_id = submit(url)
        serving.run()  # the range test
        work = AgentWork.validate_python(serving._call("POST", "/work", json={"job_id": job_id}))
        assert isinstance(work, UnitWork) and work.queue == "search"
        # the agent goes silent past the grace period; the next request for work (another
        # agent's) finds its trial stale: failed, and queued again for whoever asks. The grace
        # period is 3 s; SQLite's now() has whole seconds, so a beat can read up to 1 s older
        time.sleep(4.5)
        other = agent(url, agent_id="agent-other")
        with other.registered():
            retaken = other._call("POST", "/work", json={"job_id": job_id})
        assert retaken["kind"] == "unit" and retaken["trial_id"] != work.trial_id
        report = {"epoch": 0, "record": {"epoch": 0, "accuracy": 0.5}}
        with pytest.raises(ConflictError, match="not yours any more"):
            serving._call("POST", f"/units/{job_id}/{work.trial_id}/reports", json=report)
    study = optuna.load_study(study_name=store.get(job_id).study_name, storage=jobs_storage(store))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.RUNNING) == 1


def jobs_storage(store: JobStore) -> optuna.storages.BaseStorage:
    from lrtune.optuna_storage import open_storage

    return open_storage(store.url, heartbeat_interval=1, grace_period=3)


def start_agent(url: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "LRTUNE_URL": url}
    command = [sys.executable, "-m", "lrtune.cli", "agent", "--device", "cpu", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip


def wait_for(condition, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("storage_url", ["postgres"], indirect=True)  # a fleet's store
def test_kill_9_of_an_agent_mid_unit_loses_nothing_and_counts_each_unit_once(
    service: tuple[str, JobStore],
) -> None:
    url, store = service
    first = start_agent(url, "--task", "task_fixtures:Slow")
    wait_for(lambda: Client(url).list_workers().data, 60, "the first agent to register")
    job_id = submit(url, "Slow", n_trials=4)
    wait_for(lambda: store.get(job_id).status is JobStatus.SEARCHING, 120, "the range test")
    second = start_agent(url, "--task", "task_fixtures:Slow")
    wait_for(lambda: store.get(job_id).progress.trials_done >= 1, 120, "a finished trial")
    first.send_signal(signal.SIGKILL)  # mid-unit: it takes about a second
    first.wait(timeout=30)
    wait_for(lambda: store.get(job_id).status.finished, 300, "the job to finish")
    second.send_signal(signal.SIGTERM)
    out, _ = second.communicate(timeout=60)

    job = store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED, (job.error, out)
    rec = store.recommendation(job_id).recommendation
    assert rec.n_trials["complete"] + rec.n_trials["pruned"] == 4  # the budget, once each
    assert second.returncode == 0 and "stopped after" in out


@pytest.mark.slow
@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)  # the handback is the agent's
def test_sigterm_hands_the_agents_unit_back_within_an_epoch(
    service: tuple[str, JobStore],
) -> None:
    url, store = service
    running = start_agent(url, "--task", "task_fixtures:Slow")
    wait_for(lambda: Client(url).list_workers().data, 60, "the agent to register")
    job_id = submit(url, "Slow", n_trials=2, epochs=4)
    wait_for(lambda: store.get(job_id).status is JobStatus.SEARCHING, 120, "the range test")
    time.sleep(1.0)  # inside a unit's first epochs (0.5 s each)
    stopped_at = time.monotonic()
    running.send_signal(signal.SIGTERM)
    out, _ = running.communicate(timeout=60)
    took = time.monotonic() - stopped_at

    assert running.returncode == 0, out
    assert took < 5, (took, out)  # an epoch is 0.5 s; the rest is the exit
    study = optuna.load_study(study_name=store.get(job_id).study_name, storage=jobs_storage(store))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert TrialState.RUNNING not in states and states.count(TrialState.WAITING) >= 1, states


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Raises", "ValueError: the validation set is not mounted"),
        ("NoMetric", "Raises.evaluate() in epoch 1 returned no 'accuracy'"),
        ("NanMetric", "returned accuracy = nan"),
    ],
)
def test_an_agents_broken_task_fails_its_job_with_one_line_logged_and_the_agent_goes_on(
    service: tuple[str, JobStore], caplog: pytest.LogCaptureFixture, name: str, reason: str
) -> None:
    url, store = service
    serving = agent(url, f"task_fixtures:{name}", "task_fixtures:blobs", once=True)
    with serving.registered():
        broken, fine = submit(url, name), submit(url)
    with caplog.at_level("WARNING", logger="lrtune.agent"):
        serving.run()

    failed = store.get(broken)
    expected = reason.replace("Raises", name)
    assert failed.status is JobStatus.FAILED
    assert expected in failed.error and "\n" not in failed.error, failed.error
    said = [r.getMessage() for r in caplog.records if f"job={broken}" in r.getMessage()]
    assert said and all(expected in line and "\n" not in line for line in said), said
    assert store.get(fine).status is JobStatus.SUCCEEDED  # the agent kept serving


def test_lrtune_agent_with_a_task_that_does_not_import_exits_2_with_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lrtune.cli", "agent", "--url", "http://127.0.0.1:9", "--task",
         "no_such_module:task"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "failed to import: ModuleNotFoundError" in lines[0]


def test_the_agent_routes_refuse_a_request_without_the_token(jobs_url: str) -> None:
    app = create_app(ApiSettings(database_url=jobs_url, api_token="s3cret-token-1234567890"))
    with serve(app) as url:
        answer = httpx.post(f"{url}/v1/agents/a1/work", json={})
    assert answer.status_code == 401
