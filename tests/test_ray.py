"""A fleet of agents on Ray (:mod:`lrtune.integrations.ray`): two actors on a local Ray serve a
real service's job (uvicorn on loopback, SQLite), each unit counted once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_api import serve
from task_fixtures import RANGE_TEST, SEARCH, trained_units

from lrtune.agent import Agent
from lrtune.api.config import ApiSettings
from lrtune.api.main import create_app
from lrtune.client import Client
from lrtune.jobs import JobStatus, JobStore
from lrtune.workers.tasks import load_named

ray = pytest.importorskip("ray")

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def local_ray() -> Iterator[dict[str, str]]:
    """A local Ray of 2 CPUs (no dashboard); the actors' runtime_env, which finds the tests'
    task module."""
    pythonpath = os.pathsep.join(p for p in [str(TESTS), os.environ.get("PYTHONPATH")] if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield {"env_vars": {"PYTHONPATH": pythonpath}}
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("storage_url", ["sqlite"], indirect=True)
def test_two_ray_agents_serve_a_job_and_count_each_unit_once(
    jobs_url: str, store: JobStore, local_ray: dict[str, str]
) -> None:
    from lrtune.integrations.ray import launch_agents

    with serve(create_app(ApiSettings(database_url=jobs_url), store=store)) as url:
        publisher = Agent(Client(url), load_named(["task_fixtures:blobs"]), device="cpu")
        with publisher.registered():  # a job naming a task needs one published to be admitted
            body = {"task": {"name": "Blobs"}, "range_test": RANGE_TEST, "search": SEARCH}
            job_id = Client(url).submit(body, reuse=False).id

        units = launch_agents(
            url,
            ["task_fixtures:blobs"],
            agents=2,
            gpus_per_agent=0,
            once=True,
            runtime_env=local_ray,
        )
        workers = Client(url).list_workers(live_only=False).data

    job = store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.progress.trials_done == 3
    rec = store.recommendation(job_id).recommendation
    assert rec.n_trials["complete"] + rec.n_trials["pruned"] == 3  # the budget, once each
    assert len(units) == 2
    assert sum(units) == 1 + trained_units(store, job.id), units  # each unit once
    on_ray = sorted(w.id for w in workers if w.id.startswith("agent-ray"))
    assert len(on_ray) == 2, [w.id for w in workers]
    assert {w.device for w in workers if w.id in on_ray} == {"cpu"}
