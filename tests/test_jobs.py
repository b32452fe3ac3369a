"""The job store on a real SQLite file and the real PostgreSQL: schema, store API, errors."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import lrtune
from lrtune.exceptions import (
    ConflictError,
    InvalidInputError,
    LeaseLost,
    NotFoundError,
    StorageUnavailableError,
)
from lrtune.jobs import (
    JobStatus,
    JobStore,
    Provenance,
    StoreSettings,
    check_current,
    tables,
    upgrade,
)
from lrtune.jobs.db import get_engine
from lrtune.jobs.revision import current_revision, head_revision
from lrtune.optuna_storage import open_storage
from lrtune.spec import JobSpec

LRTUNE_TABLES = sorted(tables.Base.metadata.tables)


def _spec(**overrides: object) -> JobSpec:
    data = {"model": {"name": "mlp"}, "dataset": {"name": "digits"}, **overrides}
    return JobSpec.model_validate(data)


def _table_names(url: str) -> set[str]:
    return set(sa.inspect(get_engine(url)).get_table_names())


def _set_status(url: str, job_id: str, status: str) -> None:
    """What a worker will do; the store's API has no such call yet."""
    with get_engine(url).begin() as conn:
        conn.execute(sa.update(tables.Job).where(tables.Job.id == job_id).values(status=status))


# --- schema and migrations -------------------------------------------------------------------


def test_upgrade_creates_every_table_on_an_empty_database_and_matches_the_models(
    empty_jobs_url: str,
) -> None:
    assert current_revision(empty_jobs_url) is None
    assert upgrade(empty_jobs_url) == head_revision()
    assert set(LRTUNE_TABLES) | {tables.VERSION_TABLE} <= _table_names(empty_jobs_url)
    with get_engine(empty_jobs_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": tables.is_lrtune_table})
        assert compare_metadata(context, tables.Base.metadata) == []  # migration == models
    check_current(empty_jobs_url)


def test_upgrade_is_idempotent_and_keeps_the_data(empty_jobs_url: str) -> None:
    upgrade(empty_jobs_url)
    job = JobStore(empty_jobs_url).submit(_spec())
    assert upgrade(empty_jobs_url) == upgrade(empty_jobs_url) == head_revision()
    assert JobStore(empty_jobs_url).get(job.id).id == job.id


def test_lrtune_and_optuna_version_tables_coexist_in_one_database(empty_jobs_url: str) -> None:
    optuna.storages.RDBStorage(empty_jobs_url).engine.dispose()  # as an earlier lrtune left it
    with get_engine(empty_jobs_url).connect() as conn:
        optuna_revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    upgrade(empty_jobs_url)
    open_storage(empty_jobs_url)  # Optuna still opens the database after lrtune's upgrade
    with get_engine(empty_jobs_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == (
            optuna_revision
        )
        assert (
            conn.exec_driver_sql(f"SELECT version_num FROM {tables.VERSION_TABLE}").scalar()
            == head_revision()
        )
    assert {"studies", "trials", "alembic_version", tables.VERSION_TABLE} <= _table_names(
        empty_jobs_url
    )


def _stamp(url: str, revision: str | None) -> None:
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM {tables.VERSION_TABLE}")
        if revision is not None:
            conn.exec_driver_sql(
                f"INSERT INTO {tables.VERSION_TABLE} (version_num) VALUES ('{revision}')"
            )


@pytest.mark.postgres
def test_a_shared_database_behind_this_lrtune_refuses_to_open_until_upgraded(
    postgres_url: str,
) -> None:
    url = postgres_url
    with get_engine(url).begin() as conn:
        for table in [*LRTUNE_TABLES, tables.VERSION_TABLE]:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
    with pytest.raises(StorageUnavailableError, match=r"run `lrtune db upgrade"):
        JobStore(url)  # never upgraded
    upgrade(url)
    _stamp(url, None)  # tables of an older lrtune, no revision of ours recorded
    with pytest.raises(StorageUnavailableError) as refused:
        JobStore(url)
    assert f"at revision none (empty), this lrtune needs {head_revision()}" in str(refused.value)


def test_the_embedded_sqlite_store_upgrades_itself(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with pytest.raises(StorageUnavailableError, match="lrtune db upgrade"):
        check_current(url)
    store = JobStore(url)
    assert current_revision(url) == head_revision()
    assert store.get(store.submit(_spec()).id).status is JobStatus.QUEUED


def test_a_database_upgraded_by_a_newer_lrtune_is_refused(empty_jobs_url: str) -> None:
    upgrade(empty_jobs_url)
    _stamp(empty_jobs_url, "9999_from_the_future")
    for open_it in (lambda: JobStore(empty_jobs_url), lambda: upgrade(empty_jobs_url)):
        with pytest.raises(StorageUnavailableError, match=r"does not know.*upgrade lrtune"):
            open_it()


def test_the_wheel_carries_the_migrations_as_package_resources() -> None:
    from importlib.resources import files

    versions = files("lrtune.jobs") / "migrations" / "versions"
    assert any(p.name.startswith(head_revision()) for p in versions.iterdir())


# --- the store API ---------------------------------------------------------------------------


def test_submit_queues_a_job_with_its_own_study_even_for_identical_specs(store: JobStore) -> None:
    first = store.submit(_spec(name="digits-mlp"))
    second = store.submit(_spec(name="digits-mlp"))
    assert first.status is second.status is JobStatus.QUEUED
    assert first.fingerprint == second.fingerprint == _spec().fingerprint()
    assert first.id != second.id and first.study_name != second.study_name
    assert first.id in first.study_name
    again = store.get(first.id)
    assert again == first.record and again.spec == _spec(name="digits-mlp")
    assert again.created_at.tzinfo is not None and again.finished_at is None
    assert store.submit(_spec(), name="mine").name == "mine"


def test_unknown_job_ids_are_not_found(store: JobStore) -> None:
    for call in (store.get, store.status, store.cancel, store.events, store.delete):
        with pytest.raises(NotFoundError, match="no job 'missing'"):
            call("missing")
    with pytest.raises(NotFoundError):
        store.append_event("missing", "progress", {})
    with pytest.raises(NotFoundError):
        store.list_jobs(after="missing")


def test_list_pages_newest_first_and_filters_by_status(store: JobStore) -> None:
    ids = [store.submit(_spec()).id for _ in range(5)]
    store.cancel(ids[1])
    pages, after = [], None
    while True:
        page = store.list_jobs(limit=2, after=after)
        pages.append([job.id for job in page.data])
        if page.next_after is None:
            break
        after = page.next_after
    assert pages == [ids[:2:-1], ids[2:0:-1], ids[:1]]
    assert [j.id for j in store.list_jobs(status="cancelled").data] == [ids[1]]
    assert [j.id for j in store.list_jobs(status=JobStatus.QUEUED, limit=10).data] == [
        i for i in reversed(ids) if i != ids[1]
    ]
    with pytest.raises(InvalidInputError, match="unknown job status 'done'"):
        store.list_jobs(status="done")
    with pytest.raises(InvalidInputError, match="limit"):
        store.list_jobs(limit=0)


def test_paging_is_stable_while_other_clients_submit(store: JobStore, empty_jobs_url: str) -> None:
    existing = [store.submit(_spec()).id for _ in range(12)]
    stop = threading.Event()
    submitted: list[str] = []

    def submit_more() -> None:
        other = JobStore(empty_jobs_url)
        while not stop.is_set() and len(submitted) < 40:
            submitted.append(other.submit(_spec()).id)

    first = store.list_jobs(limit=3)  # jobs submitted from now on are newer than every page
    seen, after = [job.id for job in first.data], first.next_after
    thread = threading.Thread(target=submit_more)
    thread.start()
    try:
        while after is not None:
            time.sleep(0.01)
            page = store.list_jobs(limit=3, after=after)
            seen += [job.id for job in page.data]
            after = page.next_after
    finally:
        stop.set()
        thread.join()
    assert submitted, "nothing was submitted concurrently"
    assert len(seen) == len(set(seen)) == len(existing)  # none repeated, none skipped
    assert seen == existing[::-1]


def test_cancel_stops_unfinished_jobs_and_refuses_finished_ones(
    store: JobStore, empty_jobs_url: str
) -> None:
    queued = store.submit(_spec())
    cancelled = store.cancel(queued.id)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.finished_at is not None
    with pytest.raises(ConflictError, match="already cancelled"):
        store.cancel(queued.id)

    running = store.submit(_spec())
    _set_status(empty_jobs_url, running.id, "searching")
    with get_engine(empty_jobs_url).connect() as conn:
        token = sa.select(tables.Job.fencing_token).where(tables.Job.id == running.id)
        before = conn.scalar(token)
    assert store.cancel(running.id).status is JobStatus.CANCELLED
    with get_engine(empty_jobs_url).connect() as conn:
        assert conn.scalar(token) == before + 1  # a worker's fenced write no longer lands

    for final in ("succeeded", "failed"):
        job = store.submit(_spec())
        _set_status(empty_jobs_url, job.id, final)
        with pytest.raises(ConflictError, match=f"already {final}"):
            store.cancel(job.id)
        assert store.get(job.id).status.value == final
        assert store.status(job.id) is store.get(job.id).status


def test_status_reads_what_get_reads_and_takes_only_a_whole_id(store: JobStore) -> None:
    job = store.submit(_spec())
    assert store.status(job.id) is JobStatus.QUEUED
    store.cancel(job.id)
    assert store.status(job.id) is JobStatus.CANCELLED is store.get(job.id).status
    assert store.get(job.id[:12]).id == job.id  # get takes a unique prefix; status does not
    with pytest.raises(NotFoundError):
        store.status(job.id[:12])


def test_events_resume_from_a_cursor(store: JobStore) -> None:
    job = store.submit(_spec())
    other = store.submit(_spec())
    first = store.events(job.id)
    assert [(e.kind, e.payload) for e in first] == [("submitted", {"status": "queued"})]
    added = [store.append_event(job.id, "progress", {"trials_done": n}) for n in range(3)]
    store.append_event(other.id, "progress", {"trials_done": 9})
    assert [e.id for e in added] == sorted(e.id for e in added)
    assert store.events(job.id, after_id=first[-1].id) == added
    assert store.events(job.id, after_id=added[0].id, limit=1) == added[1:2]
    assert store.events(job.id, after_id=added[-1].id) == []
    store.cancel(job.id)
    assert [e.payload for e in store.events(job.id, after_id=added[-1].id)] == [
        {"from": "queued", "to": "cancelled"}
    ]


@pytest.fixture(scope="module")
def recommendation() -> lrtune.Recommendation:
    spec = _spec(
        model={"name": "logreg"},
        dataset={"name": "wine"},
        range_test={"seeds": 1, "num_iter": 20},
        search={"n_trials": 1, "epochs": 1, "families": ["constant"], "confirm_seeds": 1},
    )
    return lrtune.tune(spec, progress=False)


def _provenance() -> Provenance:
    return Provenance(
        lrtune_version=lrtune.__version__,
        rule="consensus",
        lr_min=1e-3,
        lr_max=1e-1,
        device="cpu",
        search=_spec().search,
    )


def test_latest_recommendation_is_the_newest_succeeded_one_for_the_fingerprint(
    store: JobStore, empty_jobs_url: str, recommendation: lrtune.Recommendation
) -> None:
    spec = recommendation.spec
    assert store.latest_recommendation(spec.fingerprint()) is None
    older, newer, failed = (store.submit(spec) for _ in range(3))
    for job in (older, newer, failed):
        store.save_recommendation(job.id, recommendation, _provenance())
    _set_status(empty_jobs_url, older.id, "succeeded")
    _set_status(empty_jobs_url, failed.id, "failed")
    assert store.latest_recommendation(spec.fingerprint()).job_id == older.id
    _set_status(empty_jobs_url, newer.id, "succeeded")
    latest = store.latest_recommendation(spec.fingerprint())
    assert latest.job_id == newer.id and latest.format_version == 1
    assert latest.provenance == _provenance()
    assert latest.recommendation.model_dump() == recommendation.model_dump()
    assert store.latest_recommendation(_spec().fingerprint()) is None
    with pytest.raises(ConflictError):
        store.save_recommendation(newer.id, recommendation, _provenance())


def test_delete_removes_a_finished_job_with_its_results_events_and_study(
    store: JobStore, empty_jobs_url: str, recommendation: lrtune.Recommendation
) -> None:
    job, kept = store.submit(_spec()), store.submit(_spec())
    for each in (job, kept):
        store.append_event(each.id, "progress", {})
        store.save_recommendation(each.id, recommendation, _provenance())
        with get_engine(empty_jobs_url).begin() as conn:
            conn.execute(
                sa.insert(tables.RangeTest).values(
                    job_id=each.id, format_version=1, result={}, lrtune_version="0.1.0",
                    rule="consensus", device="cpu",
                )
            )  # fmt: skip
        optuna.create_study(study_name=each.study_name, storage=open_storage(empty_jobs_url))
    with pytest.raises(ConflictError, match="cancel it before deleting"):
        store.delete(job.id)
    store.cancel(job.id)
    store.delete(job.id)

    with pytest.raises(NotFoundError):
        store.get(job.id)
    with get_engine(empty_jobs_url).connect() as conn:
        for table in (tables.JobEvent, tables.RangeTest, tables.Recommendation):
            rows = conn.execute(sa.select(table.job_id)).scalars().all()
            assert job.id not in rows and kept.id in rows, table.__tablename__
    names = optuna.get_all_study_names(storage=open_storage(empty_jobs_url))
    assert job.study_name not in names and kept.study_name in names


def test_a_job_and_its_optuna_study_share_one_database(
    store: JobStore, empty_jobs_url: str
) -> None:
    job = store.submit(_spec())
    study = optuna.create_study(study_name=job.study_name, storage=open_storage(empty_jobs_url))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert {"lrtune_jobs", "lrtune_optuna_log"} <= _table_names(empty_jobs_url)
    reader = open_storage(empty_jobs_url)  # another process's view of the same database
    loaded = optuna.load_study(study_name=store.get(job.id).study_name, storage=reader)
    assert len(loaded.trials) == 2


def test_sqlite_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    """A worker holding the write lock must not stall the API's and dashboard's reads."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = JobStore(url)
    job = store.submit(_spec())
    writer = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # as a worker's claim holds it
    try:
        read: list[object] = []
        reader = threading.Thread(
            target=lambda: read.extend([store.get(job.id), store.list_jobs(), store.events(job.id)])
        )
        reader.start()
        reader.join(timeout=10)
        assert len(read) == 3, "a read waited for the write lock"
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# --- errors and connections ------------------------------------------------------------------


def test_an_unreachable_database_is_storage_unavailable_without_its_password() -> None:
    url = "postgresql+psycopg://lrtune:s3cret-pw@127.0.0.1:1/lrtune"
    with pytest.raises(StorageUnavailableError) as caught:
        JobStore(url)
    assert "unavailable at postgresql+psycopg://lrtune:***@127.0.0.1:1/lrtune" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


def test_a_sqlite_path_that_cannot_be_a_database_is_storage_unavailable(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a database " * 100)
    for url in (f"sqlite:///{tmp_path}", f"sqlite:///{tmp_path / 'notes.txt'}"):
        with pytest.raises(StorageUnavailableError):
            JobStore(url)
    with pytest.raises(InvalidInputError, match="invalid storage URL"):
        JobStore("not a url")


def test_a_store_whose_database_went_away_raises_storage_unavailable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = JobStore(url)
    job = store.submit(_spec())
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql("DROP TABLE lrtune_job_events")
    with pytest.raises(StorageUnavailableError, match="no such table"):
        store.events(job.id)


@pytest.mark.postgres
def test_stores_in_one_process_share_one_bounded_pool(postgres_url: str) -> None:
    name = f"lrtune-pool-test-{uuid.uuid4().hex[:8]}"  # other runs may share the server
    url = sa.engine.make_url(postgres_url).update_query_dict({"application_name": name})
    url = url.render_as_string(hide_password=False)
    settings = StoreSettings(database_url=url, db_pool_size=2, db_max_overflow=2)
    upgrade(postgres_url)
    stores = [JobStore(url, settings=settings) for _ in range(6)]
    assert len({id(get_engine(s.url)) for s in stores}) == 1
    job = stores[0].submit(_spec())
    peak = []
    counter = sa.create_engine(postgres_url, poolclass=sa.pool.NullPool)

    def busy(store: JobStore) -> None:
        for _ in range(15):
            store.list_jobs(limit=5)
            store.append_event(job.id, "progress", {})

    def count() -> int:
        with counter.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %(name)s",
                {"name": name},
            ).scalar()

    threads = [threading.Thread(target=busy, args=(stores[i % 6],)) for i in range(12)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        peak.append(count())
        time.sleep(0.01)
    for thread in threads:
        thread.join()
    counter.dispose()
    assert 1 <= max(peak) <= 4  # db_pool_size + db_max_overflow, however many stores
    assert len(stores[0].events(job.id, limit=500)) == 1 + 12 * 15


def test_save_recommendation_under_a_lease_writes_only_while_the_lease_holds(
    store: JobStore, recommendation: lrtune.Recommendation
) -> None:
    held, lost = store.submit(recommendation.spec), store.submit(recommendation.spec)
    lease = store.claim("w1", lease_s=30, job_id=held.id)
    stale = store.claim("w2", lease_s=30, job_id=lost.id)
    store.cancel(lost.id)  # the token moves on: w2's lease no longer holds the job

    saved = store.save_recommendation(held.id, recommendation, _provenance(), lease=lease)
    with pytest.raises(LeaseLost):
        store.save_recommendation(lost.id, recommendation, _provenance(), lease=stale)
    with pytest.raises(InvalidInputError, match="lease is for job"):
        store.save_recommendation(lost.id, recommendation, _provenance(), lease=lease)

    assert saved.job_id == held.id
    store.release(lease, status="failed", error="only to finish it")
    store.cancel(store.submit(recommendation.spec).id)
    with get_engine(store.url).connect() as conn:
        saved_for = conn.scalars(sa.select(tables.Recommendation.job_id)).all()
    assert saved_for == [held.id]


def test_shared_jobs_are_the_searching_and_confirming_ones_oldest_first(store: JobStore) -> None:
    ids = []
    for _ in range(5):
        ids.append(store.submit(_spec()).id)
        time.sleep(0.003)
    steps = {"finding": [], "searching": ["searching"], "confirming": ["searching", "confirming"]}
    wanted = ["confirming", "searching", "finding", "searching"]  # and the fifth stays queued
    for job_id, status in zip(ids[:4], wanted, strict=True):
        lease = store.claim("w1", lease_s=30, job_id=job_id)  # queued -> finding
        for step in steps[status]:
            store.advance(lease, step)
        if status != "finding":
            store.release(lease)  # a shared phase: nobody holds it
    store.cancel(store.submit(_spec()).id)

    assert [job.id for job in store.shared_jobs()] == [ids[0], ids[1], ids[3]]
    assert [job.id for job in store.shared_jobs(limit=1)] == [ids[0]]
    with pytest.raises(InvalidInputError):
        store.shared_jobs(limit=0)
