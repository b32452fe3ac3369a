"""``GET /metrics`` over real HTTP, on real SQLite and PostgreSQL stores: it parses as
Prometheus text and its numbers are the store's."""

from __future__ import annotations

import time

import httpx
import pytest
from live_api import serve
from prometheus_client.parser import text_string_to_metric_families
from small_jobs import small_job

from lrtune.api import ApiSettings, create_app
from lrtune.api.routes.metrics import TrialRate
from lrtune.jobs import JobProgress, JobStore


def scrape(url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_count_the_stores_jobs(store: JobStore, jobs_url: str) -> None:
    jobs = [store.submit(small_job()) for _ in range(4)]
    lease = store.claim("metrics-worker", lease_s=60, job_id=jobs[0].id)
    assert lease is not None
    store.advance(lease, progress=JobProgress(trials_done=5, confirmations_done=2))
    store.cancel(jobs[1].id)
    with serve(create_app(ApiSettings(database_url=jobs_url))) as url:
        time.sleep(0.05)  # the oldest queued job has waited a measurable time
        metrics = scrape(url)
    state = {
        labels[0][1]: value for (name, labels), value in metrics.items() if name == "lrtune_jobs"
    }
    assert state == {
        "queued": 2,
        "finding": 1,
        "searching": 0,
        "confirming": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 1,
    }
    assert metrics["lrtune_units_finished_total", (("kind", "trial"),)] == 5
    assert metrics["lrtune_units_finished_total", (("kind", "confirmation"),)] == 2
    assert metrics["lrtune_workers_holding_lease", ()] == 1
    assert metrics["lrtune_trials_finished_per_minute", ()] == 0  # one scrape: no rate yet
    age = time.time() - jobs[2].created_at.timestamp()  # jobs[2] is the oldest still queued
    assert 0 < metrics["lrtune_queue_age_seconds", ()] <= age + 5


def test_metrics_of_an_empty_store(jobs_url: str) -> None:
    with serve(create_app(ApiSettings(database_url=jobs_url))) as url:
        metrics = scrape(url)
    assert metrics["lrtune_queue_age_seconds", ()] == 0
    assert metrics["lrtune_jobs", (("state", "queued"),)] == 0


def test_metrics_need_the_token_when_reads_do(tmp_path) -> None:
    settings = ApiSettings(
        database_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        api_token="s3cret",
        api_token_for_reads=True,
    )
    with serve(create_app(settings)) as url:
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
        assert (
            scrape(url, authorization="Bearer s3cret")["lrtune_jobs", (("state", "failed"),)] == 0
        )


def test_metrics_answer_503_when_the_database_is_down() -> None:
    settings = ApiSettings(database_url="postgresql+psycopg://lrtune:hunter2@127.0.0.1:1/lrtune")
    with serve(create_app(settings)) as url:
        response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 503, response.text
    assert "Traceback" not in response.text and "hunter2" not in response.text


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([(0.0, 0), (5.0, 100)], 0.0),  # under 10 s apart: no rate
        ([(0.0, 0), (30.0, 15)], 30.0),
        ([(0.0, 0), (60.0, 10), (120.0, 40)], 30.0),  # from the newest sample a minute old
        ([(0.0, 0), (400.0, 100), (460.0, 160)], 60.0),  # samples over 5 min old are dropped
        ([(0.0, 50), (30.0, 20)], 0.0),  # a job deleted: never negative
    ],
)
def test_trial_rate(samples: list[tuple[float, int]], expected: float) -> None:
    rate = TrialRate()
    values = [rate.observe(total, now=now) for now, total in samples]
    assert values[-1] == pytest.approx(expected)
