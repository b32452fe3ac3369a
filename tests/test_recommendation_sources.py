"""load_recommendation: a stored recommendation by job id or spec fingerprint, from a service
(real HTTP) or a job store's database, as the Lightning callback and the HF optimizers take it."""

from __future__ import annotations

from pathlib import Path

import pytest
from live_api import finish_with, serve
from small_jobs import small_job

from lrtune.api.config import ApiSettings
from lrtune.api.main import create_app
from lrtune.exceptions import InvalidInputError, NotFoundError
from lrtune.integrations.recommendations import load_recommendation
from lrtune.jobs import JobStore
from lrtune.recommendation import Recommendation


@pytest.fixture
def finished(store: JobStore, onecycle_recommendation: Recommendation) -> tuple[str, str]:
    """A succeeded job's id and its spec's fingerprint."""
    spec = small_job(n_trials=2, epochs=6, families=["onecycle"], confirm_seeds=1, baselines=[])
    job = finish_with(store, spec, onecycle_recommendation)
    return job.id, job.fingerprint


def test_by_job_id_or_fingerprint_from_the_database_and_from_the_service(
    store: JobStore, finished: tuple[str, str], onecycle_recommendation: Recommendation
) -> None:
    job_id, fingerprint = finished
    expected = onecycle_recommendation.model_dump(mode="json")
    with serve(create_app(ApiSettings(database_url=store.url), store=store)) as url:
        for source in (job_id, job_id[:8], fingerprint):
            for where in ({"database": store.url}, {"url": url}):
                found = load_recommendation(source, **where)
                assert found.model_dump(mode="json") == expected, (source, where)


def test_an_unknown_id_or_fingerprint_is_not_found_and_a_bare_id_is_refused(
    store: JobStore, finished: tuple[str, str], tmp_path: Path
) -> None:
    for source in ("0" * 64, "no-such-job"):
        with pytest.raises(NotFoundError):
            load_recommendation(source, database=store.url)
    with pytest.raises(InvalidInputError, match=r"with url= .* or database="):
        load_recommendation(finished[0])  # no file of that name, and nowhere to look it up
    with pytest.raises(InvalidInputError, match="not both"):
        load_recommendation(finished[0], url="http://127.0.0.1:9", database=store.url)
