"""What the job store keeps and how long: stored range tests, progress as work goes, retention
(delete, checkpoints, prune), stored-JSON upgrades and the submit order, on SQLite and
PostgreSQL, with real workers training the wine/logreg job."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from lrtune import __version__
from lrtune.cli import main
from lrtune.exceptions import InvalidInputError, NotFoundError
from lrtune.jobs import JobProgress, JobStatus, JobStore, Provenance, StoreSettings, tables, upgrade
from lrtune.jobs.db import get_engine
from lrtune.jobs.stored_json import upgrade_json_rows
from lrtune.optuna_storage import open_storage
from lrtune.result import LRBounds, LRFinderResult
from lrtune.spec import JobSpec
from lrtune.tuner import stored_bounds, stored_range_test
from lrtune.workers.loop import Worker
from lrtune.workers.reporting import PROGRESS_INTERVAL_S

N_TRIALS = 4
JOB = {
    "model": {"name": "logreg"},
    "dataset": {"name": "wine"},
    "batch_size": 32,
    "range_test": {"seeds": 2, "num_iter": 30},
    "search": {
        "n_trials": N_TRIALS,
        "epochs": 2,
        "confirm_seeds": 1,
        "finalists": 1,
        "families": ["constant", "cosine"],
    },
}
# A range test that runs every one of its steps (no divergence), long enough for several
# throttled progress writes.
LONG_RANGE_TEST = {**JOB, "range_test": {"seeds": 3, "num_iter": 2000, "diverge_threshold": 1e9}}


def _spec(job: dict | None = None) -> JobSpec:
    return JobSpec.model_validate(job or JOB)


def _store(url: str, artifacts: Path) -> JobStore:
    return JobStore(url, settings=StoreSettings(artifact_dir=artifacts))


def _run_in_thread(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, kwargs={"once": True}, daemon=True)
    thread.start()
    return thread


def _finished_study_best(url: str, study_name: str) -> float:
    return optuna.load_study(study_name=study_name, storage=open_storage(url)).best_value


# --- the range test, stored ------------------------------------------------------------------


def test_a_worker_stores_the_range_test_once_readable_while_searching_and_drops_checkpoints(
    jobs_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifacts = tmp_path / "artifacts"
    store = _store(jobs_url, artifacts)
    job = store.submit(_spec())
    with pytest.raises(NotFoundError, match="has no range test yet: it is queued"):
        store.range_test(job.id)
    leftover = store.checkpoint_dir(job.id) / "trial-99.pt"  # as a killed trial leaves one
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"checkpoint")

    thread = _run_in_thread(Worker(store, device="cpu", worker_id="w1"))
    deadline = time.monotonic() + 60
    while (status := store.get(job.id).status) in (JobStatus.QUEUED, JobStatus.FINDING):
        assert time.monotonic() < deadline, "the job never started searching"
        time.sleep(0.01)
    assert status is not JobStatus.FAILED, store.get(job.id).error
    stored = store.range_test(job.id)  # readable as soon as the job searches
    thread.join(timeout=120)

    assert store.get(job.id).status is JobStatus.SUCCEEDED, store.get(job.id).error
    assert not store.checkpoint_dir(job.id).exists()  # a succeeded job's checkpoints go
    study = optuna.load_study(study_name=job.study_name, storage=open_storage(jobs_url))
    assert stored.range_test == stored_range_test(study)  # the one the search used
    assert stored.bounds == stored_bounds(study)
    assert len(stored.range_test.seeds) == 2 and stored.range_test.suggestions
    assert stored.suggestion == stored.range_test.consensus.suggestion.lr
    assert stored.spread_decades == stored.range_test.consensus.spread_decades
    provenance = stored.provenance
    assert (provenance.lrtune_version, provenance.rule, provenance.device) == (
        __version__,
        "consensus",
        "cpu",
    )
    assert (provenance.lr_min, provenance.lr_max) == (stored.bounds.low, stored.bounds.high)
    assert provenance.search == job.spec.search
    with get_engine(jobs_url).connect() as conn:
        rows = conn.scalar(
            sa.select(sa.func.count()).where(tables.RangeTest.job_id == job.id)
        )  # fmt: skip
    assert rows == 1

    assert main(["status", job.id, "--database", jobs_url]) == 0
    printed = capsys.readouterr().out
    assert f"suggested lr {stored.suggestion:.3g}" in printed
    assert f"search bounds: lr {stored.bounds.low:.3g} to {stored.bounds.high:.3g}" in printed
    assert "seeds' spread" in printed and "best so far" in printed


# --- progress --------------------------------------------------------------------------------

COUNTS = [name for name in JobProgress.model_fields if name not in ("best_value", "search_stopped")]


def _assert_never_backwards(reports: list[JobProgress]) -> None:
    for before, after in itertools.pairwise(reports):
        for name in COUNTS:
            assert getattr(after, name) >= getattr(before, name), (name, before, after)


@pytest.mark.slow
def test_progress_grows_as_a_worker_runs_and_never_goes_backwards(
    jobs_url: str, tmp_path: Path
) -> None:
    store = _store(jobs_url, tmp_path / "artifacts")
    job = store.submit(_spec(LONG_RANGE_TEST))
    thread = _run_in_thread(Worker(store, device="cpu", worker_id="w1"))
    polled = []
    while thread.is_alive():
        polled.append(store.get(job.id).progress)
        time.sleep(0.02)
    thread.join()

    job = store.get(job.id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    events = [e for e in store.events(job.id, limit=500) if e.kind == "progress"]
    reports = [JobProgress.model_validate(e.payload) for e in events]
    _assert_never_backwards(polled)
    _assert_never_backwards(reports)
    assert reports[-1] == job.progress
    total = 2000 * 3
    done = job.progress
    assert (done.range_test_steps_done, done.range_test_steps_total) == (total, total)
    assert (done.trials_done, done.trials_total) == (N_TRIALS, N_TRIALS)
    assert done.confirmations_done == done.confirmations_total > 0
    assert done.best_value == _finished_study_best(jobs_url, job.study_name)
    # the range test reported as it went, throttled to one write per PROGRESS_INTERVAL_S
    midway = [
        (event, report)
        for event, report in zip(events, reports, strict=True)
        if 0 < report.range_test_steps_done < total
    ]
    assert midway and all(report.range_test_steps_total == total for _, report in midway)
    took_s = (midway[-1][0].created_at - midway[0][0].created_at).total_seconds()
    assert len(midway) <= took_s / PROGRESS_INTERVAL_S + 1
    # every finished trial and confirmation run was reported by the worker that finished it
    assert {r.trials_done for r in reports} >= set(range(1, N_TRIALS + 1))
    assert {r.confirmations_done for r in reports} >= set(range(1, done.confirmations_total + 1))


def test_racing_progress_reports_keep_the_furthest(jobs_url: str) -> None:
    store = JobStore(jobs_url)
    job = store.submit(_spec())
    assert store.record_progress(job.id, JobProgress(trials_done=3, best_value=0.5)) == "queued"
    events_before = len(store.events(job.id))
    store.record_progress(job.id, JobProgress(trials_done=2, best_value=0.9))
    assert store.get(job.id).progress == JobProgress(trials_done=3, best_value=0.5)
    assert len(store.events(job.id)) == events_before  # a stale report writes nothing

    def report(worker: int) -> None:  # each worker's counts grow, in its own order
        other = JobStore(jobs_url)
        mine = sorted(random.Random(worker).sample(range(4, 60), 20))
        for count in mine:
            other.record_progress(job.id, JobProgress(trials_done=count, best_value=-count))

    threads = [threading.Thread(target=report, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    events = [e for e in store.events(job.id, limit=500) if e.kind == "progress"]
    reports = [JobProgress.model_validate(e.payload) for e in events]
    _assert_never_backwards(reports)
    final = store.get(job.id).progress
    highest = max(max(random.Random(w).sample(range(4, 60), 20)) for w in range(4))
    assert final.trials_done == highest and final.best_value == -highest


# --- retention -------------------------------------------------------------------------------


def _checkpoint(store: JobStore, job_id: str) -> Path:
    path = store.checkpoint_dir(job_id) / "trial-0.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"checkpoint")
    return path.parent


def test_delete_removes_the_jobs_checkpoints_and_no_other_jobs(
    jobs_url: str, tmp_path: Path
) -> None:
    store = _store(jobs_url, tmp_path / "artifacts")
    job, kept = store.submit(_spec()), store.submit(_spec())
    folders = {each.id: _checkpoint(store, each.id) for each in (job, kept)}
    assert folders[job.id] == tmp_path / "artifacts" / job.study_name
    store.cancel(job.id)

    store.delete(job.id)

    assert not folders[job.id].exists()
    assert (folders[kept.id] / "trial-0.pt").exists()


def _finished_days_ago(url: str, job_id: str, days: float) -> None:
    ended = sa.func.now() - sa.text(f"interval '{days} days'")
    if url.startswith("sqlite"):
        ended = sa.func.strftime("%Y-%m-%d %H:%M:%f000", "now", f"-{days} days")
    with get_engine(url).begin() as conn:
        conn.execute(sa.update(tables.Job).where(tables.Job.id == job_id).values(finished_at=ended))


def test_prune_deletes_finished_jobs_older_than_the_age_with_their_studies_and_checkpoints(
    jobs_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = _store(jobs_url, tmp_path / "artifacts")
    old_cancelled, old_failed, recent, running = (store.submit(_spec()) for _ in range(4))
    for each in (old_cancelled, old_failed, recent):
        store.cancel(each.id)
        optuna.create_study(study_name=each.study_name, storage=open_storage(jobs_url))
        _checkpoint(store, each.id)
    with get_engine(jobs_url).begin() as conn:  # what a worker's failure writes
        conn.execute(
            sa.update(tables.Job).where(tables.Job.id == old_failed.id).values(status="failed")
        )
    for each, days in ((old_cancelled, 40), (old_failed, 31), (recent, 2), (running, 90)):
        _finished_days_ago(jobs_url, each.id, days)

    assert store.prune(timedelta(days=30), ["failed"]) == [old_failed.id]
    assert store.prune(timedelta(days=30)) == [old_cancelled.id]

    for gone in (old_cancelled, old_failed):
        with pytest.raises(NotFoundError):
            store.get(gone.id)
        assert not (tmp_path / "artifacts" / gone.study_name).exists()
    assert store.get(recent.id).status is JobStatus.CANCELLED
    assert store.get(running.id).status is JobStatus.QUEUED  # unfinished: never pruned
    assert (tmp_path / "artifacts" / recent.study_name).exists()
    names = optuna.get_all_study_names(storage=open_storage(jobs_url))
    assert recent.study_name in names and old_cancelled.study_name not in names
    with pytest.raises(InvalidInputError, match="only finished jobs can be pruned, not queued"):
        store.prune(timedelta(days=1), ["queued"])

    assert main(["db", "prune", "--older-than", "1d", "--database", jobs_url]) == 0
    assert "deleted 1 finished jobs that ended more than 1d ago" in capsys.readouterr().out
    with pytest.raises(NotFoundError):
        store.get(recent.id)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--older-than", "30x"], "--older-than '30x' is not an age: use a number and a unit"),
        (["--older-than=-3d"], "is not an age"),
        (["--older-than", "d"], "is not an age"),
        (["--older-than", "1d", "--status", "queued"], "invalid choice: 'queued'"),
    ],
)
def test_prune_with_a_bad_age_or_status_is_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["db", "prune", *argv, "--database", f"sqlite:///{tmp_path / 'jobs.db'}"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


# --- migrations: stored JSON and the submit order --------------------------------------------


def _insert_jobs_at_0001(url: str, n: int) -> list[str]:
    """Jobs as lrtune at revision 0001 wrote them, submitted 1 ms apart in reverse id order."""
    ids = sorted((str(uuid.uuid4()) for _ in range(n)), reverse=True)
    when = sa.DateTime(timezone=True)
    jobs = sa.table(
        "lrtune_jobs", sa.column("id"), sa.column("spec", sa.JSON()),
        sa.column("spec_format_version"), sa.column("fingerprint"), sa.column("study_name"),
        sa.column("status"), sa.column("progress", sa.JSON()), sa.column("attempts"),
        sa.column("fencing_token"), sa.column("created_at", when), sa.column("updated_at", when),
    )  # fmt: skip
    start = datetime(2026, 11, 30, 12, tzinfo=timezone.utc)
    with get_engine(url).begin() as conn:
        for k, job_id in enumerate(ids):
            created = start + timedelta(milliseconds=k)
            conn.execute(
                sa.insert(jobs).values(
                    id=job_id, spec=_spec().model_dump(mode="json"), spec_format_version=1,
                    fingerprint="f" * 64, study_name=f"lrtune-job-{job_id}", status="queued",
                    progress={}, attempts=0, fencing_token=0, created_at=created,
                    updated_at=created,
                )
            )  # fmt: skip
    return ids


def test_a_database_at_0001_with_jobs_upgrades_its_tables_and_its_stored_json(
    empty_jobs_url: str,
) -> None:
    url = empty_jobs_url
    assert upgrade(url, "0001") == "0001"
    ids = _insert_jobs_at_0001(url, 5)

    # a later format of the spec, as a migration would write it with upgrade_json_rows
    def spec_v1_to_v2(spec: dict) -> dict:
        return {**spec, "name": f"upgraded-{spec['seed']}"}

    # the table as it is at 0001 (the models' has later columns, which an UPDATE would set)
    jobs_at_0001 = sa.table("lrtune_jobs", sa.column("id"), sa.column("spec_format_version"))
    with get_engine(url).begin() as conn:
        conn.execute(
            sa.update(jobs_at_0001)
            .where(jobs_at_0001.c.id == ids[0])
            .values(spec_format_version=2)  # already at the later format: left alone
        )
        rewritten = upgrade_json_rows(
            conn, "lrtune_jobs", "spec", "spec_format_version", 1, spec_v1_to_v2, batch_size=2
        )
        rows = conn.execute(sa.text("SELECT id, spec, spec_format_version FROM lrtune_jobs")).all()
    assert rewritten == 4
    for job_id, spec, version in rows:
        spec = spec if isinstance(spec, dict) else json.loads(spec)
        assert version == 2
        assert (spec["name"] or "").startswith("upgraded") == (job_id != ids[0])

    upgrade(url)  # 0001 -> head: every job numbered in the order it was submitted
    store = JobStore(url)
    assert [store.get(i).submit_seq for i in ids] == [1, 2, 3, 4, 5]
    assert [job.id for job in store.list_jobs().data] == ids[::-1]
    newer = store.submit(_spec())
    assert newer.submit_seq == 6  # the sequence continues after the backfilled numbers
    claimed = [store.claim("w1", lease_s=30) for _ in ids]
    assert [lease.job_id for lease in claimed if lease] == ids


def test_jobs_submitted_in_the_same_millisecond_are_claimed_in_submit_order(
    store: JobStore, jobs_url: str
) -> None:
    submitted = [store.submit(_spec()).id for _ in range(8)]
    with get_engine(jobs_url).begin() as conn:  # one clock tick for all (and random ids)
        conn.execute(
            sa.update(tables.Job).values(
                created_at=sa.select(sa.func.min(tables.Job.created_at)).scalar_subquery()
            )
        )
    assert len({store.get(i).created_at for i in submitted}) == 1  # ids alone: random order

    newest_first = [job.id for job in store.list_jobs(limit=3).data]
    page = store.list_jobs(limit=3)
    store.submit(_spec())  # a newer job between two pages moves nothing
    rest = store.list_jobs(limit=10, after=page.next_after)
    assert newest_first + [job.id for job in rest.data] == submitted[::-1]

    leases = [store.claim(f"w{k}", lease_s=30) for k in range(len(submitted))]
    assert [lease.job_id for lease in leases if lease] == submitted
    for lease in leases[:4]:
        assert lease is not None
        store.release(lease, status="searching")
    assert [job.id for job in store.shared_jobs()] == submitted[:4]


def test_the_live_feed_carries_the_range_test_curve_as_it_grows(
    jobs_url: str, tmp_path: Path
) -> None:
    store = _store(jobs_url, tmp_path / "artifacts")
    job = store.submit(_spec(LONG_RANGE_TEST))
    _run_in_thread(Worker(store, device="cpu", worker_id="w1")).join()

    events = store.events(job.id, limit=500)
    batches = [e for e in events if e.kind == "range_test_points"]
    assert len(batches) >= 2  # several while it ran, not one at the end
    points = [point for event in batches for point in event.payload["points"]]
    stored = store.range_test(job.id).range_test
    # every point the feed carried is a point of the stored curves: (lr, smoothed loss, seed)
    assert len(points) == len(stored.lrs) * len(stored.seeds)
    for lr, loss, seed in points[:: max(1, len(points) // 200)]:
        step = min(range(len(stored.lrs)), key=lambda i: abs(stored.lrs[i] - lr))
        assert lr == pytest.approx(stored.lrs[step], rel=1e-9)
        assert loss == pytest.approx(stored.seeds[seed].smoothed[step], rel=1e-5)
    # each batch follows the progress event it belongs to
    for batch in batches:
        before = [e for e in events if e.id < batch.id]
        assert before[-1].kind == "progress"
        assert before[-1].payload["range_test_steps_done"] > 0


STORED = Path(__file__).parent / "stored"


def test_a_range_test_stored_with_its_config_as_a_plain_dict_still_loads(store: JobStore) -> None:
    # What find_lr wrote before RangeTestConfig (the result's `config` was a dict[str, Any]):
    # the same keys, so rows stored then load unchanged, and serve the same JSON.
    old = json.loads((STORED / "range_test_with_config_dict.json").read_text())
    job = store.submit(_spec())
    provenance = Provenance(
        lrtune_version=__version__,
        rule="consensus",
        lr_min=None,
        lr_max=None,
        device="cpu",
        search=None,
    )
    bounds = LRBounds(low=1e-3, high=1.0, suggestion=0.03, divergence_lr=None)
    store.save_range_test(job.id, LRFinderResult.model_validate(old), bounds, provenance)
    with get_engine(store.url).begin() as conn:  # the row exactly as the old code stored it
        conn.execute(
            sa.update(tables.RangeTest.__table__)
            .where(tables.RangeTest.job_id == job.id)
            .values(result={"range_test": old, "bounds": bounds.model_dump(mode="json")})
        )
    loaded = store.range_test(job.id).range_test
    assert loaded.config.engine == "vectorized" and loaded.config.seed == 3
    assert loaded.model_dump(mode="json") == old
