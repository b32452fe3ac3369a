"""Idle workers woken by the job store: on PostgreSQL a job submitted or changing status is
notified (migration 0011's trigger) and a wait returns at once; SQLite waits its time out."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from small_jobs import small_job

from lrtune.jobs import JobStatus, JobStore
from lrtune.jobs.db import get_engine
from lrtune.training import wait_for_stop
from lrtune.workers.loop import Worker

LONG_WAIT_S = 30.0  # far longer than a notification takes, even on a loaded machine


def on_postgres(test: Callable[..., None]) -> Callable[..., None]:
    """``test`` on the PostgreSQL store only: notifications are PostgreSQL's."""
    only_postgres = pytest.mark.parametrize("storage_url", ["postgres"], indirect=True)
    return pytest.mark.postgres(only_postgres(test))


def _timed_wait(store: JobStore, timeout_s: float, meanwhile: Callable[[], object]) -> tuple:
    """``store.changes.wait(timeout_s)`` while another thread runs ``meanwhile`` 0.3 s in;
    (whether a change was notified, seconds waited)."""
    thread = threading.Timer(0.3, meanwhile)
    started = time.monotonic()
    thread.start()
    try:
        notified = store.changes.wait(timeout_s, sleep=wait_for_stop)
    finally:
        thread.join()
    return notified, time.monotonic() - started


@pytest.fixture
def listening(store: JobStore) -> Iterator[JobStore]:
    """The store with its listening connection open (a first, short wait opens it)."""
    store.changes.wait(0.01, sleep=wait_for_stop)
    yield store
    store.changes.close()


def _keep_the_status(store: JobStore, job_id: str) -> None:
    """An UPDATE of the job's row that sets its status to the one it has (as an ORM write of a
    whole row may)."""
    with get_engine(store.url).begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE lrtune_jobs SET status = status, row_version = row_version + 1 "
                "WHERE id = :id"
            ),
            {"id": job_id},
        )


def test_a_submitted_job_ends_the_wait_on_postgres_and_sqlite_waits_its_time(
    listening: JobStore,
) -> None:
    store = listening
    if store.url.startswith("postgresql"):
        notified, waited = _timed_wait(store, LONG_WAIT_S, lambda: store.submit(small_job()))
        assert notified and waited < 5, waited
    else:
        notified, waited = _timed_wait(store, 1.0, lambda: store.submit(small_job()))
        assert not notified and waited >= 1.0


@on_postgres
def test_a_status_change_is_notified_and_an_update_that_keeps_the_status_is_not(
    listening: JobStore,
) -> None:
    store = listening
    job = store.submit(small_job())
    store.changes.wait(0.5, sleep=wait_for_stop)  # the submission's own notification

    notified, waited = _timed_wait(store, 1.0, lambda: _keep_the_status(store, job.id))
    assert not notified and waited >= 1.0

    notified, waited = _timed_wait(store, LONG_WAIT_S, lambda: store.cancel(job.id))
    assert notified and waited < 5, waited


@on_postgres
def test_changes_made_while_nobody_waited_end_one_wait_not_one_wait_each(
    listening: JobStore,
) -> None:
    store = listening
    for _ in range(3):  # while the worker was busy, say
        store.submit(small_job())
    time.sleep(0.2)  # delivered
    started = time.monotonic()
    assert store.changes.wait(LONG_WAIT_S, sleep=wait_for_stop)
    assert time.monotonic() - started < 1
    started = time.monotonic()
    assert not store.changes.wait(0.5, sleep=wait_for_stop)
    assert time.monotonic() - started >= 0.5


@on_postgres
def test_a_wait_on_a_dropped_connection_sleeps_its_time_and_the_next_one_listens_again(
    listening: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    store = listening
    with get_engine(store.url).connect() as conn:  # what a restarted server does to it
        terminated = conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query = 'LISTEN lrtune_jobs' AND datname = current_database()"
            )
        ).scalars()
        assert True in list(terminated)  # this store's, and any other a test left open
    time.sleep(0.2)
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="lrtune.jobs"):
        assert not store.changes.wait(0.5, sleep=wait_for_stop)
    assert time.monotonic() - started >= 0.5
    assert "event=listen_lost" in caplog.text  # its own connection was the one dropped

    store.changes.wait(0.01, sleep=wait_for_stop)  # listens again
    notified, waited = _timed_wait(store, LONG_WAIT_S, lambda: store.submit(small_job()))
    assert notified and waited < 5, waited


@on_postgres
def test_an_idle_worker_on_postgres_takes_a_submitted_job_at_once_not_at_its_next_poll(
    store: JobStore,
) -> None:
    worker = Worker(store, device="cpu", poll_s=LONG_WAIT_S, lease_s=10)
    thread = threading.Thread(target=worker.run, kwargs={"max_jobs": 1}, daemon=True)
    thread.start()
    while not store.list_workers().data:  # registered: it looks for work next
        assert thread.is_alive()
        time.sleep(0.05)
    time.sleep(1.0)  # it found nothing to do and waits
    job = store.submit(small_job(n_trials=1, epochs=1, confirm_seeds=0, baselines=[]))
    submitted = time.monotonic()
    while store.get(job.id).status is JobStatus.QUEUED:
        assert time.monotonic() - submitted < 10, "the worker did not take the job"
        time.sleep(0.05)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert store.get(job.id).status is JobStatus.SUCCEEDED
