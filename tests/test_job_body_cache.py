"""``GET /v1/jobs/{id}`` serves a body kept per job, never staler than one read.

The API keeps each job's serialized body with the row version it was built from and serves
it while one indexed read says the row is still at that version
(:mod:`lrtune.jobs.row_versions`, :class:`lrtune.api.cache.JobBodies`). These tests write the
job's row the ways workers do (claim, progress, lease renewal, status, release, cancel), from
another store, another thread and another process, over real HTTP on SQLite and PostgreSQL,
and check that the next GET has the write, that the ETag changes exactly when the body does,
that 304s still come while nothing changed, that a job deleted behind the API's back is a 404
at once, and that the kept bodies are bounded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
from live_api import serve

from lrtune.api import ApiSettings, create_app
from lrtune.jobs import JobProgress, JobStore
from lrtune.spec import JobSpec

SPEC = JobSpec.model_validate({"model": {"name": "logreg"}, "dataset": {"name": "wine"}})


@pytest.fixture
def served(jobs_url: str) -> Iterator[tuple[httpx.Client, object]]:
    """An API on the test's store over real HTTP, and its app (to look at what it keeps)."""
    app = create_app(ApiSettings(database_url=jobs_url))
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client, app


@pytest.fixture
def writer(jobs_url: str) -> JobStore:
    """A second store on the same database: the worker's side, not the API's."""
    return JobStore(jobs_url)


def as_stored(store: JobStore, job_id: str) -> dict:
    """The job as the store has it now, in the API's JSON."""
    return json.loads(store.get(job_id).model_dump_json(by_alias=True))


def test_every_kind_of_write_to_a_job_is_in_the_next_get(served, writer: JobStore) -> None:
    api, _ = served
    job_id = writer.submit(SPEC, reuse=False).id
    steps = {}
    lease = None
    seen_etags: list[str] = []
    for name in ("claim", "progress", "renew", "advance", "release"):
        before = api.get(f"/v1/jobs/{job_id}")
        etag = before.headers["etag"]
        again = api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.headers["etag"] == etag  # unchanged: kept
        if name == "claim":
            lease = writer.claim("worker-a", lease_s=60, job_id=job_id)
        elif name == "progress":
            writer.record_progress(job_id, JobProgress(range_test_steps_done=7), lease=lease)
        elif name == "renew":
            lease = writer.renew(lease, lease_s=120)
        elif name == "advance":
            writer.advance(lease, "searching", JobProgress(trials_done=1))
        else:
            writer.release(lease, "failed", error="stopped by the test")
        after = api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
        assert after.status_code == 200, f"{name}: the write is not in the next GET"
        assert after.json() == as_stored(writer, job_id), name
        assert after.headers["etag"] != etag
        steps[name] = after.json()
        seen_etags.append(after.headers["etag"])
    assert steps["claim"]["holder_worker_id"] == "worker-a"
    assert steps["progress"]["progress"]["range_test_steps_done"] == 7
    assert steps["renew"]["lease_expires_at"] > steps["progress"]["lease_expires_at"]
    assert steps["advance"]["status"] == "searching"
    assert steps["release"]["status"] == "failed"
    assert len(set(seen_etags)) == len(seen_etags)


def test_the_etag_changes_exactly_when_the_body_does(served, writer: JobStore) -> None:
    api, _ = served
    job_id = writer.submit(SPEC, reuse=False).id
    first = api.get(f"/v1/jobs/{job_id}")
    assert api.get(f"/v1/jobs/{job_id}").headers["etag"] == first.headers["etag"]
    writer.append_event(job_id, "note", {"text": "an event does not change the job's row"})
    same = api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": first.headers["etag"]})
    assert same.status_code == 304
    writer.cancel(job_id)
    changed = api.get(f"/v1/jobs/{job_id}")
    assert changed.json()["status"] == "cancelled"
    assert changed.headers["etag"] != first.headers["etag"]
    by_prefix = api.get(f"/v1/jobs/{job_id[:8]}")  # a prefix is served the same body
    assert by_prefix.content == changed.content
    assert by_prefix.headers["etag"] == changed.headers["etag"]


def test_a_write_from_another_process_is_in_the_next_get(served, jobs_url: str) -> None:
    api, _ = served
    job_id = JobStore(jobs_url).submit(SPEC, reuse=False).id
    etag = api.get(f"/v1/jobs/{job_id}").headers["etag"]
    script = (
        "import sys\n"
        "from lrtune.jobs import JobProgress, JobStore\n"
        "JobStore(sys.argv[1]).record_progress(sys.argv[2], JobProgress(trials_done=3))\n"
    )
    subprocess.run([sys.executable, "-c", script, jobs_url, job_id], check=True)
    after = api.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert after.status_code == 200 and after.json()["progress"]["trials_done"] == 3


def test_progress_written_while_clients_poll_is_never_missed(served, writer: JobStore) -> None:
    """Every GET that starts after a progress write committed has that progress or newer."""
    api, _ = served
    job_id = writer.submit(SPEC, reuse=False).id
    committed = [0]  # the last trials_done whose write has returned
    stale: list[tuple[int, int]] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=str(api.base_url), timeout=60) as client:
            while not done.is_set():
                floor = committed[0]
                seen = client.get(f"/v1/jobs/{job_id}").json()["progress"]["trials_done"]
                if seen < floor:
                    stale.append((floor, seen))

    pollers = [threading.Thread(target=poll) for _ in range(4)]
    for thread in pollers:
        thread.start()
    try:
        for trials in range(1, 41):
            writer.record_progress(job_id, JobProgress(trials_done=trials))
            committed[0] = trials
            assert api.get(f"/v1/jobs/{job_id}").json()["progress"]["trials_done"] == trials
    finally:
        done.set()
        for thread in pollers:
            thread.join()
    assert stale == []


def test_a_job_deleted_behind_the_apis_back_is_404_at_once(served, writer: JobStore) -> None:
    api, _ = served
    job_id = writer.submit(SPEC, reuse=False).id
    writer.cancel(job_id)
    assert api.get(f"/v1/jobs/{job_id}").status_code == 200  # its body is kept now
    writer.delete(job_id)  # not through this API: nothing told it
    gone = api.get(f"/v1/jobs/{job_id}")
    assert gone.status_code == 404 and job_id in gone.json()["detail"]


def test_the_kept_bodies_are_bounded(served, writer: JobStore) -> None:
    api, app = served
    bodies = app.state.job_bodies
    bodies.max_jobs = 2
    job_ids = [writer.submit(SPEC, reuse=False).id for _ in range(3)]
    for _ in range(2):
        for job_id in job_ids:
            response = api.get(f"/v1/jobs/{job_id}")
            assert response.json() == as_stored(writer, job_id)
    assert len(bodies) == 2


def test_every_update_of_a_jobs_row_moves_its_version(writer: JobStore) -> None:
    """What the API relies on: no write to a job's row leaves ``row_version`` where it was."""
    versions = writer.row_versions
    job_id = writer.submit(SPEC, reuse=False).id
    seen = [versions.read(job_id)]

    def moved() -> bool:
        seen.append(versions.read(job_id))
        return seen[-1] > seen[-2]

    lease = writer.claim("worker-a", lease_s=60, job_id=job_id)
    assert moved()
    lease = writer.renew(lease, lease_s=60)
    assert moved()
    writer.record_progress(job_id, JobProgress(range_test_steps_done=1), lease=lease)
    assert moved()
    writer.advance(lease, progress=JobProgress(range_test_steps_done=2))
    assert moved()
    writer.release(lease)  # back to queued, for the next claim
    assert moved()
    writer.record_progress(job_id, JobProgress(range_test_steps_done=1))  # nothing new
    assert not moved()
    writer.cancel(job_id)
    assert moved()
    versions.close()
    assert versions.read(job_id) == seen[-1]  # a closed reader opens another connection


def test_jobs_stored_before_the_row_version_start_at_one(empty_jobs_url: str) -> None:
    """Migration 0010 on a database with a job in it: the job reads back at version 1."""
    import sqlalchemy as sa

    from lrtune.jobs import upgrade
    from lrtune.jobs.db import get_engine
    from lrtune.jobs.records import SPEC_FORMAT_VERSION, JobProgress

    upgrade(empty_jobs_url, "0009")
    jobs = sa.table(
        "lrtune_jobs",
        *(sa.column(name) for name in ("id", "name", "spec_format_version", "fingerprint")),
        *(sa.column(name) for name in ("study_name", "status", "attempts", "fencing_token")),
        sa.column("submit_seq"),
        sa.column("spec", sa.JSON()),
        sa.column("progress", sa.JSON()),
    )
    job_id = "0" * 8 + "-old0-4000-8000-" + "0" * 12
    with get_engine(empty_jobs_url).begin() as conn:
        conn.execute(
            sa.insert(jobs).values(
                id=job_id,
                name="stored before 0010",
                spec=SPEC.model_dump(mode="json"),
                spec_format_version=SPEC_FORMAT_VERSION,
                fingerprint=SPEC.fingerprint(),
                study_name=f"lrtune-job-{job_id}",
                status="queued",
                progress=JobProgress().model_dump(mode="json"),
                attempts=0,
                fencing_token=0,
                submit_seq=1,
            )
        )
    upgrade(empty_jobs_url)
    store = JobStore(empty_jobs_url)
    assert store.row_versions.read(job_id) == 1
    store.cancel(job_id)
    assert store.row_versions.read(job_id) == 2
