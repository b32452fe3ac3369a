"""Surviving failures inside one worker process: one connection pool per process, a lease
that is not renewed for longer than it lasts counts as lost, the exclusive phase writes only
under its lease, and a unit that fails for a reason of its own fails its job."""

from __future__ import annotations

import threading
import time
import uuid

import optuna
import pytest
import sqlalchemy as sa
import torch
from torch import nn

from lrtune import registry
from lrtune._optuna import ATTR_BOUNDS
from lrtune.exceptions import LeaseLost
from lrtune.jobs import JobStatus, JobStore, StoreSettings, upgrade
from lrtune.jobs.db import get_engine
from lrtune.optuna_storage import open_storage
from lrtune.tuner import open_study, prepare_study
from lrtune.workers.backoff import Backoff
from lrtune.workers.lease import LeaseHeartbeat
from lrtune.workers.loop import Worker
from tests.small_jobs import small_job

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.postgres
def test_the_job_store_and_the_studies_of_a_process_share_one_bounded_pool(
    postgres_url: str,
) -> None:
    name = f"lrtune-shared-pool-{uuid.uuid4().hex[:8]}"  # other runs may share the server
    url = sa.engine.make_url(postgres_url).update_query_dict({"application_name": name})
    url = url.render_as_string(hide_password=False)
    upgrade(postgres_url)
    settings = StoreSettings(database_url=url, db_pool_size=2, db_max_overflow=2)
    store = JobStore(url, settings=settings)
    job = store.submit(small_job(n_trials=2))
    storages = [open_storage(url) for _ in range(4)]
    assert {id(s.engine) for s in storages} == {id(get_engine(url))}
    studies = [
        optuna.create_study(storage=s, study_name=f"{name}-{k}") for k, s in enumerate(storages)
    ]
    counter = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)

    def busy(k: int) -> None:
        for _ in range(10):
            studies[k % 4].enqueue_trial({})
            studies[k % 4].get_trials(deepcopy=False)
            store.append_event(job.id, "progress", {})

    def count() -> int:
        with counter.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %(name)s",
                {"name": name},
            ).scalar()

    threads = [threading.Thread(target=busy, args=(k,)) for k in range(8)]
    peak = []
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak.append(count())
        time.sleep(0.01)
    for thread in threads:
        thread.join()
    counter.dispose()
    assert 1 <= max(peak) <= 4  # db_pool_size + db_max_overflow for the store and 4 studies
    assert sum(len(s.trials) for s in studies) == 80


def test_a_lease_not_renewed_for_longer_than_it_lasts_counts_as_lost(store: JobStore) -> None:
    store.submit(small_job())
    lease = store.claim("w1", lease_s=1.0)
    assert lease is not None
    heartbeat = LeaseHeartbeat(store, lease, 1.0, Backoff(0.05, 0.2))
    with store._engine.begin() as conn:  # the store becomes unusable: every renewal fails
        conn.exec_driver_sql("ALTER TABLE lrtune_jobs RENAME TO lrtune_jobs_away")
    try:
        with heartbeat:
            deadline = time.monotonic() + 30
            while not heartbeat.lost.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        with store._engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE lrtune_jobs_away RENAME TO lrtune_jobs")

    assert heartbeat.lost.is_set()
    with pytest.raises(LeaseLost):
        heartbeat.check()
    with pytest.raises(LeaseLost):  # even though the store is back and nobody took the job
        heartbeat.renew_now()


def test_the_exclusive_phase_writes_nothing_once_its_lease_expired_and_was_taken(
    store: JobStore,
) -> None:
    """The race of the range test's end: the lease expired while it ran and another worker
    claimed the job, so the first holder's study writes must not land."""
    job = store.submit(small_job(n_trials=2))
    stale = store.claim("slow", lease_s=0.2)
    assert stale is not None
    time.sleep(0.5)
    taken = store.claim("thief", lease_s=30)
    assert taken is not None and taken.job_id == job.id
    heartbeat = LeaseHeartbeat(store, stale, 30.0, Backoff(0.05, 0.2))  # fresh: no renewal failed

    with pytest.raises(LeaseLost):
        prepare_study(
            job.spec,
            open_storage(store.url),
            progress=False,
            study_name=job.study_name,
            fence=heartbeat.renew_now,
        )

    study = open_study(job.spec, open_storage(store.url), job.study_name)
    assert ATTR_BOUNDS not in study.user_attrs
    assert study.get_trials() == []


_FAIL_WHEN_EVALUATED = "fails_when_evaluated"


class _FailsWhenEvaluated(nn.Module):
    """Logistic regression whose first evaluation raises (the end of the first trial's first
    epoch: the range test never evaluates)."""

    failures_left = 0

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(inputs, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and _FailsWhenEvaluated.failures_left > 0:
            _FailsWhenEvaluated.failures_left -= 1
            raise ValueError("this model cannot be evaluated")
        return self.linear(x)


@pytest.fixture
def failing_model(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(registry._models, "_registered", dict(registry._models._registered))
    monkeypatch.setattr(_FailsWhenEvaluated, "failures_left", 1)

    @registry.register_model(_FAIL_WHEN_EVALUATED)
    def build(input_shape: tuple[int, ...], output_dim: int, **params: object) -> nn.Module:
        return _FailsWhenEvaluated(input_shape[0], output_dim)

    return _FAIL_WHEN_EVALUATED


def test_a_trial_that_raises_fails_its_job_with_the_reason(
    store: JobStore, failing_model: str
) -> None:
    spec = small_job({"model": {"name": failing_model}}, n_trials=4, epochs=2)
    job = store.submit(spec)

    Worker(store, device="cpu", worker_id="w1").run(once=True)

    done = store.get(job.id)
    assert done.status is JobStatus.FAILED  # not succeeded with fewer trials than its budget
    assert done.error is not None
    assert "trial 0" in done.error and "this model cannot be evaluated" in done.error
    assert done.holder_worker_id is None
    study = open_study(spec, open_storage(store.url), done.study_name)
    states = [t.state.name for t in study.get_trials()]
    assert states[0] == "FAIL" and states.count("FAIL") == 1
    assert "WAITING" in states  # it stopped at the failure instead of using up the queue


def test_prepare_study_calls_its_fence_right_before_its_writes_and_after_them(
    tmp_path,
) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'fence.db'}")
    spec = small_job(n_trials=2, confirm_seeds=1, finalists=1)
    seen: list[tuple[bool, int]] = []

    def fence() -> None:  # what the study holds each time the fence is asked
        study = open_study(spec, storage)
        seen.append((ATTR_BOUNDS in study.user_attrs, len(study.get_trials())))

    prepare_study(spec, storage, progress=False, fence=fence)
    prepare_study(spec, storage, progress=False, fence=fence)  # again: nothing more to write

    assert seen == [(False, 0), (True, 2), (True, 2), (True, 2)]
