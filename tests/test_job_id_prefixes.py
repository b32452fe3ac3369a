"""A unique prefix of a job's id (the dashboard shows 8 characters) names the job wherever an
id does: the job store's methods, the CLI (on the store and through the API) and the API's
``/v1/jobs/{id}`` routes. A prefix several ids start with is refused with how many; one that
none does is not found."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from cli_runs import run_cli as run
from live_api import finish_with, serve
from small_jobs import small_job

from lrtune.api import ApiSettings, create_app
from lrtune.exceptions import InvalidInputError, NotFoundError
from lrtune.jobs import JobStatus, JobStore
from lrtune.jobs import store as store_module
from lrtune.recommendation import Recommendation

TWINS = ("3f2a9c1e-0d6b-4c8e-9a51-0b7e2f4d6a10", "3f2a9c1e-7e03-4b5f-8c2d-9e1a3b5c7d20")
"""Two ids with the same first 8 characters (and 9: the hyphen)."""
SINGLE = "7b4d0e55-93aa-4f1c-b6d2-5e8f0a1c3b40"
AMBIGUOUS = "job id '3f2a9c1e' is ambiguous: 2 jobs' ids start with it; give more of the id"


@contextlib.contextmanager
def new_ids(monkeypatch: pytest.MonkeyPatch, *ids: str) -> Iterator[None]:
    """The jobs submitted in the block get ``ids``, in order."""
    given = iter(ids)
    with monkeypatch.context() as patched:
        patched.setattr(store_module, "uuid", SimpleNamespace(uuid4=lambda: next(given)))
        yield


def submit_with_ids(store: JobStore, monkeypatch: pytest.MonkeyPatch, *ids: str) -> None:
    """Submit one job per id in ``ids``, with that id."""
    with new_ids(monkeypatch, *ids):
        for _ in ids:
            store.submit(small_job(), reuse=False)


@pytest.fixture
def jobs(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> JobStore:
    submit_with_ids(store, monkeypatch, *TWINS, SINGLE)
    return store


def test_the_store_takes_a_unique_prefix_wherever_it_takes_an_id(jobs: JobStore) -> None:
    assert jobs.get("7b4d0e55").id == jobs.get("7").id == SINGLE
    assert jobs.get("3f2a9c1e-7").id == TWINS[1]
    assert [event.job_id for event in jobs.events("7b4d0e55")] == [SINGLE]
    assert jobs.append_event("7b4d", "note", {}).job_id == SINGLE
    assert jobs.cancel("7b4d0e55").id == SINGLE
    assert jobs.checkpoint_dir("7b4d").name == f"lrtune-job-{SINGLE}"
    assert jobs.list_jobs(limit=1, after="7b4d0e55").data[0].id == TWINS[1]
    assert jobs.delete("7b4d0e55") == SINGLE
    with pytest.raises(NotFoundError, match="no job '7b4d0e55' in the job store"):
        jobs.get("7b4d0e55")


@pytest.mark.parametrize("prefix", ["3f2a9c1e", "3", "3f2a9c1e-"])
def test_a_prefix_of_several_ids_is_refused_with_their_count(jobs: JobStore, prefix: str) -> None:
    for read in (jobs.get, jobs.cancel, jobs.recommendation, jobs.events):
        with pytest.raises(InvalidInputError, match="2 jobs' ids start with it") as refused:
            read(prefix)
        assert not isinstance(refused.value, NotFoundError)
    assert [job.status for job in jobs.list_jobs().data] == [JobStatus.QUEUED] * 3  # none cancelled


@pytest.mark.parametrize("unknown", ["ffff", "3f2a9c1f", "3f2a%", "3f2a_c1e", "", "7b4d0e55x"])
def test_a_prefix_of_no_id_is_not_found(jobs: JobStore, unknown: str) -> None:
    """Not even through the SQL ``LIKE`` wildcards ``%`` and ``_``."""
    with pytest.raises(NotFoundError, match=f"no job {unknown!r} in the job store"):
        jobs.get(unknown)


def test_a_recommendation_is_read_by_a_prefix(
    store: JobStore, monkeypatch: pytest.MonkeyPatch, onecycle_recommendation: Recommendation
) -> None:
    with new_ids(monkeypatch, SINGLE):
        finish_with(store, small_job(), onecycle_recommendation)
    assert store.recommendation("7b4d0e55").job_id == SINGLE


@pytest.fixture
def api_url(jobs: JobStore) -> Iterator[str]:
    with serve(create_app(ApiSettings(database_url=jobs.url))) as url:
        yield url


@pytest.mark.parametrize("where", ["--database", "--url"])
def test_the_cli_takes_the_prefix_the_dashboard_shows(
    jobs: JobStore, api_url: str, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    target = jobs.url if where == "--database" else api_url
    code, out, _ = run(capsys, "status", SINGLE[:8], where, target)
    assert code == 0 and out.startswith(f"job {SINGLE} (")
    code, out, _ = run(capsys, "cancel", SINGLE[:8], where, target)
    assert (code, out) == (0, f"job {SINGLE} cancelled\n")
    code, _, err = run(capsys, "recommend", SINGLE[:8], where, target)
    assert code == 2 and f"job '{SINGLE}' has no recommendation: it is cancelled" in err

    for argv in (["status", "3f2a9c1e"], ["cancel", "3f2a9c1e"], ["recommend", "3f2a9c1e"]):
        code, out, err = run(capsys, *argv, where, target)
        assert (code, out) == (2, "") and err.count("\n") == 1
        assert AMBIGUOUS in err
    code, _, err = run(capsys, "status", "ffff", where, target)
    assert code == 2 and err.count("\n") == 1 and "no job 'ffff' in the job store" in err


def test_the_jobs_routes_take_a_prefix(jobs: JobStore, api_url: str) -> None:
    with httpx.Client(base_url=api_url, timeout=60) as api:
        assert api.get(f"/v1/jobs/{SINGLE[:8]}").json()["id"] == SINGLE
        ambiguous = api.get("/v1/jobs/3f2a9c1e")
        assert ambiguous.status_code == 422 and AMBIGUOUS in ambiguous.json()["detail"]
        assert api.get("/v1/jobs/ffff").status_code == 404
        for path in ("finder", "trials"):
            assert api.get(f"/v1/jobs/{SINGLE[:8]}/{path}").json()["job_id"] == SINGLE
        no_curve_yet = api.get(f"/v1/jobs/{SINGLE[:8]}/finder.png")
        assert no_curve_yet.status_code == 404, no_curve_yet.text
        assert "in the job store" not in no_curve_yet.json()["detail"]  # found: no point yet
        recommendation = api.get(f"/v1/jobs/{SINGLE[:8]}/recommendation")
        assert recommendation.status_code == 404
        assert f"job '{SINGLE}' has no recommendation" in recommendation.json()["detail"]
        with api.stream("GET", f"/v1/jobs/{SINGLE[:8]}/events") as events:
            assert events.status_code == 200
            first = next(line for line in events.iter_lines() if line.startswith("data:"))
            assert SINGLE in first

        cancelled = api.post(f"/v1/jobs/{SINGLE[:8]}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["id"] == SINGLE
        assert api.delete(f"/v1/jobs/{SINGLE[:8]}").status_code == 204
        assert api.get(f"/v1/jobs/{SINGLE}").status_code == 404
        assert api.delete("/v1/jobs/3f2a9c1e").status_code == 422
