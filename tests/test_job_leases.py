"""Workers' leases on jobs, on a real SQLite file and the real PostgreSQL: claim, renew,
advance, release, fencing, the retry limit, and many workers racing for the same jobs."""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from lrtune.exceptions import ConflictError, InvalidInputError, LeaseLost, NotFoundError
from lrtune.jobs import JobProgress, JobStatus, JobStore, Lease, StoreSettings
from lrtune.spec import JobSpec

SPEC = JobSpec.model_validate({"model": {"name": "mlp"}, "dataset": {"name": "digits"}})
LONG_LEASE_S = 30.0
SHORT_LEASE_S = 0.2


def _submit(store: JobStore, n: int) -> list[str]:
    """``n`` jobs, oldest first (SQLite's clock has milliseconds: keep them apart)."""
    ids = []
    for _ in range(n):
        ids.append(store.submit(SPEC).id)
        time.sleep(0.003)
    return ids


def _statuses(store: JobStore, job_id: str) -> list[tuple[str, str]]:
    events = store.events(job_id, limit=500)
    return [(e.payload["from"], e.payload["to"]) for e in events if e.kind == "status"]


def test_claim_takes_the_oldest_queued_job_and_starts_its_finding_phase(store: JobStore) -> None:
    first, second = _submit(store, 2)
    before = datetime.now(timezone.utc)
    lease = store.claim("w1", LONG_LEASE_S)
    assert isinstance(lease, Lease)
    assert (lease.job_id, lease.worker_id, lease.status, lease.attempts) == (
        first, "w1", JobStatus.FINDING, 1,
    )  # fmt: skip
    assert lease.fencing_token == 1
    assert 25 < (lease.expires_at - before).total_seconds() < 35  # the database's clock
    job = store.get(first)
    assert job.status is JobStatus.FINDING and job.holder_worker_id == "w1"
    assert job.lease_expires_at == lease.expires_at and job.started_at is not None
    assert [e.kind for e in store.events(first)] == ["submitted", "claimed", "status"]
    assert _statuses(store, first) == [("queued", "finding")]

    assert store.claim("w2", LONG_LEASE_S).job_id == second  # a live lease is not taken
    assert store.claim("w3", LONG_LEASE_S) is None


def _claim_all(url: str, worker_id: str, start: Any) -> list[tuple[str, int]]:
    store = JobStore(url)
    claimed = []
    start.wait()
    while (lease := store.claim(worker_id, LONG_LEASE_S)) is not None:
        claimed.append((lease.job_id, lease.fencing_token))
    return claimed


def test_racing_threads_claim_every_job_exactly_once(store: JobStore, jobs_url: str) -> None:
    ids = _submit(store, 12)
    start = threading.Barrier(4)
    results: dict[str, list[tuple[str, int]]] = {}

    def work(worker_id: str) -> None:
        results[worker_id] = _claim_all(jobs_url, worker_id, start)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    claimed = [job_id for worker in results.values() for job_id, _ in worker]
    assert len(results) == 4
    assert sorted(claimed) == sorted(ids)  # every job once, none twice
    for worker_id, worker in results.items():
        for job_id, token in worker:
            job = store.get(job_id)
            assert (job.holder_worker_id, job.attempts, token) == (worker_id, 1, 1)


def _claim_in_process(url: str, worker_id: str, start: Any, out: Any) -> None:
    """A worker process: forked, so it opens its own engine (get_engine keys on the pid)."""
    out.put(_claim_all(url, worker_id, start))


def test_racing_processes_on_sqlite_claim_every_job_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    ids = _submit(JobStore(url), 12)
    context = multiprocessing.get_context("fork")
    start, out = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=_claim_in_process, args=(url, f"p{i}", start, out)) for i in range(2)
    ]
    for process in processes:
        process.start()
    claimed = [out.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=10)
        assert process.exitcode == 0
    assert sorted(job_id for worker in claimed for job_id, _ in worker) == sorted(ids)


def test_an_expired_lease_is_claimed_again_and_fences_off_its_old_holder(store: JobStore) -> None:
    (job_id,) = _submit(store, 1)
    old = store.claim("dead", SHORT_LEASE_S)
    assert store.claim("w2", SHORT_LEASE_S) is None  # still held
    time.sleep(SHORT_LEASE_S + 0.1)
    new = store.claim("w2", LONG_LEASE_S)
    assert new is not None and new.job_id == job_id
    assert new.fencing_token > old.fencing_token and new.attempts == 2
    assert new.status is JobStatus.FINDING  # the range test is re-run from its start

    for write in (
        lambda: store.advance(old, progress=JobProgress(range_test_steps_done=99)),
        lambda: store.record_progress(job_id, JobProgress(range_test_steps_done=9), lease=old),
        lambda: store.advance(old, "searching"),
        lambda: store.release(old, status="searching"),
        lambda: store.release(old),
        lambda: store.renew(old, LONG_LEASE_S),
    ):
        with pytest.raises(LeaseLost, match="'dead' no longer holds the lease"):
            write()
    job = store.get(job_id)
    assert (job.holder_worker_id, job.status, job.progress) == (
        "w2", JobStatus.FINDING, JobProgress(),
    )  # fmt: skip
    claims = [e.payload for e in store.events(job_id) if e.kind == "claimed"]
    assert claims[-1] == {"worker_id": "w2", "attempts": 2, "took_over": "dead"}
    assert store.advance(new, progress=JobProgress(range_test_steps_done=5)).progress == (
        JobProgress(range_test_steps_done=5)
    )


def test_renew_extends_the_lease_and_keeps_the_job_from_other_workers(store: JobStore) -> None:
    (job_id,) = _submit(store, 1)
    lease = store.claim("w1", SHORT_LEASE_S)
    renewed = store.renew(lease, LONG_LEASE_S)
    assert renewed.expires_at > lease.expires_at
    assert renewed.fencing_token == lease.fencing_token
    assert store.get(job_id).lease_expires_at == renewed.expires_at
    time.sleep(SHORT_LEASE_S + 0.1)
    assert store.claim("w2", SHORT_LEASE_S) is None

    # expired but not yet claimed by anyone: still its holder's
    short = store.renew(renewed, 0.05)
    time.sleep(0.1)
    assert store.renew(short, LONG_LEASE_S).expires_at > short.expires_at
    assert store.claim("w2", SHORT_LEASE_S) is None


def test_the_retry_limit_fails_a_job_whose_lease_keeps_expiring(jobs_url: str) -> None:
    store = JobStore(jobs_url, settings=StoreSettings(max_attempts=2))
    doomed, healthy = _submit(store, 2)
    for attempt in (1, 2):
        lease = store.claim(f"w{attempt}", 0.05)
        assert (lease.job_id, lease.attempts) == (doomed, attempt)
        time.sleep(0.1)
    nxt = store.claim("w3", LONG_LEASE_S)
    assert nxt is not None and nxt.job_id == healthy  # the doomed job was failed, not claimed
    job = store.get(doomed)
    assert job.status is JobStatus.FAILED and job.holder_worker_id is None
    assert job.finished_at is not None
    assert "retry limit reached" in job.error and "claimed 2 times" in job.error
    assert "LRTUNE_MAX_ATTEMPTS=2" in job.error
    last = store.events(doomed)[-1]
    assert (last.kind, last.payload["to"], last.payload["error"]) == ("status", "failed", job.error)
    with pytest.raises(LeaseLost):
        store.release(lease, status="failed", error="too late")


def test_a_lease_holder_moves_the_job_one_legal_step_at_a_time(store: JobStore) -> None:
    (job_id,) = _submit(store, 1)
    lease = store.claim("w1", LONG_LEASE_S)
    with pytest.raises(ConflictError, match="finding: it cannot become confirming"):
        store.advance(lease, "confirming")
    with pytest.raises(ConflictError, match="cannot become queued"):
        store.release(lease, status="queued")
    with pytest.raises(InvalidInputError, match="release the lease"):
        store.advance(lease, "succeeded")
    with pytest.raises(InvalidInputError, match="needs the error"):
        store.release(lease, status="failed")
    with pytest.raises(InvalidInputError, match="unknown job status"):
        store.advance(lease, "done")
    assert store.get(job_id).status is JobStatus.FINDING  # nothing refused was written

    progress = JobProgress(range_test_steps_done=10, range_test_steps_total=10)
    searching = store.release(lease, status="searching", progress=progress)
    assert searching.status is JobStatus.SEARCHING and searching.holder_worker_id is None
    assert searching.attempts == 0 and searching.progress == progress
    assert store.claim("w2", LONG_LEASE_S) is None  # a shared phase is not claimed by default

    mover = store.claim("w2", LONG_LEASE_S, job_id=job_id)  # the worker of the last unit
    assert (mover.status, mover.attempts) == (JobStatus.SEARCHING, 1)
    assert store.claim("w3", LONG_LEASE_S, job_id=job_id) is None  # held
    confirming = store.advance(mover, "confirming", JobProgress(trials_done=4, trials_total=4))
    assert confirming.status is JobStatus.CONFIRMING and confirming.holder_worker_id == "w2"
    with pytest.raises(ConflictError, match="confirming: it cannot become searching"):
        store.advance(mover, "searching")
    done = store.release(mover, status="succeeded")
    assert done.status is JobStatus.SUCCEEDED and done.finished_at is not None
    assert store.claim("w3", LONG_LEASE_S, job_id=job_id) is None  # finished
    with pytest.raises(LeaseLost):
        store.advance(mover, progress=JobProgress())

    assert _statuses(store, job_id) == [
        ("queued", "finding"),
        ("finding", "searching"),
        ("searching", "confirming"),
        ("confirming", "succeeded"),
    ]
    kinds = [e.kind for e in store.events(job_id)]
    assert kinds.count("progress") == 2 and kinds.count("claimed") == 2


def test_release_without_a_status_hands_the_job_back(store: JobStore) -> None:
    (job_id,) = _submit(store, 1)
    lease = store.claim("stopping", LONG_LEASE_S)
    back = store.release(lease)
    assert (back.status, back.holder_worker_id, back.attempts) == (JobStatus.QUEUED, None, 0)
    again = store.claim("w2", LONG_LEASE_S)
    assert (again.job_id, again.attempts) == (job_id, 1)
    assert again.fencing_token == lease.fencing_token + 2  # released, then claimed
    assert _statuses(store, job_id) == [
        ("queued", "finding"),
        ("finding", "queued"),
        ("queued", "finding"),
    ]


def test_a_cancelled_job_cannot_be_advanced_or_released(store: JobStore) -> None:
    (job_id,) = _submit(store, 1)
    lease = store.claim("w1", LONG_LEASE_S)
    store.cancel(job_id)
    for write in (
        lambda: store.advance(lease, "searching"),
        lambda: store.advance(lease, progress=JobProgress(range_test_steps_done=1)),
        lambda: store.release(lease, status="failed", error="x"),
        lambda: store.renew(lease, LONG_LEASE_S),
    ):
        with pytest.raises(LeaseLost):
            write()
    job = store.get(job_id)
    assert job.status is JobStatus.CANCELLED and job.error is None
    assert job.progress == JobProgress()
    assert store.claim("w2", LONG_LEASE_S) is None
    assert store.claim("w2", LONG_LEASE_S, job_id=job_id) is None


def test_claim_refuses_bad_arguments(store: JobStore) -> None:
    with pytest.raises(NotFoundError):
        store.claim("w1", LONG_LEASE_S, job_id="missing")
    for worker_id, lease_s in (("w1", 0), ("w1", -1.0), ("", 1.0), ("w" * 65, 1.0)):
        with pytest.raises(InvalidInputError):
            store.claim(worker_id, lease_s)
