"""lrtune's Optuna journal in SQL (``lrtune._journal``): order, exactly-once claims, heartbeats,
and the studies an earlier lrtune kept in Optuna's RDB tables."""

from __future__ import annotations

import collections
import json
import pickle
import shutil
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from lrtune._journal import SqlJournalBackend, create_tables
from lrtune._optuna import ATTR_ROOT, fail_stale_trials, one_read, open_queued_study, trial_counts
from lrtune._rdb import get_engine
from lrtune.jobs import JobStore, upgrade
from lrtune.jobs.revision import current_revision
from lrtune.optuna_storage import open_storage
from lrtune.study_view import read_finder, read_trials

REPO = Path(__file__).resolve().parents[1]
STORED_0008 = REPO / "tests" / "stored" / "jobs_0008_finished_job.sqlite"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _noop(**payload: object) -> dict[str, object]:
    """An operation every replay skips (an attribute of a study that does not exist), carrying
    ``payload``: the scratch PostgreSQL database's journal is shared with the other tests."""
    return {"op_code": 2, "worker_id": "test", "study_id": -1, "user_attr": payload}


def test_concurrent_appends_are_read_once_each_in_order(storage_url) -> None:
    """Writers append while a reader reads incrementally: the reader sees every operation once,
    in the order a full read later returns, and each writer's in the order it wrote them (on
    PostgreSQL, transactions that commit out of id order would make it skip some)."""
    engine = get_engine(storage_url)
    create_tables(engine)
    start = len(SqlJournalBackend(engine).read_logs(0))  # the PostgreSQL database outlives a run
    writers, per_writer = 4, 40
    tag = uuid.uuid4().hex

    def write(writer: int) -> None:
        backend = SqlJournalBackend(engine)
        for i in range(per_writer):
            backend.append_logs([_noop(tag=tag, writer=writer, i=i)])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    reader, read = SqlJournalBackend(engine), []
    deadline = time.monotonic() + 120
    while sum(_tagged(read, tag)) < writers * per_writer and time.monotonic() < deadline:
        read += reader.read_logs(start + len(read))
    for thread in threads:
        thread.join()

    assert read == SqlJournalBackend(engine).read_logs(start)[: len(read)]
    by_writer = collections.defaultdict(list)
    for log in read:
        if log["user_attr"].get("tag") == tag:
            by_writer[log["user_attr"]["writer"]].append(log["user_attr"]["i"])
    assert by_writer == {w: list(range(per_writer)) for w in range(writers)}


def _tagged(logs: list[dict], tag: str) -> list[bool]:
    return [log.get("user_attr", {}).get("tag") == tag for log in logs]


def test_an_append_returns_what_others_appended_before_it(storage_url) -> None:
    """The read after an append (what JournalStorage does after every write) returns the others'
    operations before this one's, as a fresh read does."""
    engine = get_engine(storage_url)
    create_tables(engine)
    mine, other = SqlJournalBackend(engine), SqlJournalBackend(engine)
    start = len(mine.read_logs(0))
    other.append_logs([_noop(who="theirs")])
    mine.append_logs([_noop(who="mine", inf=float("inf"))])
    expected = [_noop(who="theirs"), _noop(who="mine", inf=float("inf"))]
    assert mine.read_logs(start) == expected == SqlJournalBackend(engine).read_logs(start)
    assert mine.read_logs(start + 2) == []


CLAIM = """
import json, sys
from lrtune._optuna import open_queued_study
from lrtune.optuna_storage import open_storage
study = open_queued_study(open_storage(sys.argv[1]), sys.argv[2], direction="minimize")
print("ready", flush=True)
sys.stdin.readline()
claimed = []
while (trial_id := study.pop_unstarted()) is not None:
    claimed.append(trial_id)
print(json.dumps(claimed))
"""


def test_processes_claiming_one_queue_never_get_the_same_trial(storage_url) -> None:
    name = f"claims-{uuid.uuid4().hex[:12]}"
    study = open_queued_study(open_storage(storage_url), name, direction="minimize")
    for _ in range(60):
        study.enqueue_trial({})
    queued = {t._trial_id for t in study.get_trials()}
    claimers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIM, storage_url, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(3)
    ]
    for claimer in claimers:
        assert claimer.stdout is not None and claimer.stdout.readline().strip() == "ready"
    for claimer in claimers:  # start together
        assert claimer.stdin is not None
        claimer.stdin.write("go\n")
        claimer.stdin.flush()
    claimed = [json.loads(claimer.communicate(timeout=240)[0]) for claimer in claimers]

    every = [trial_id for each in claimed for trial_id in each]
    assert sorted(every) == sorted(queued)  # each trial handed out exactly once
    assert all(t.state == TrialState.RUNNING for t in study.get_trials())


def test_reads_in_a_one_read_block_read_the_log_once(storage_url) -> None:
    """In a ``one_read`` block the first read reads the log and the rest answer from memory, as
    of it; a claim in the block is read back (it learns whether it won, and what was appended
    before it); after the block every read reads again."""
    name = f"once-{uuid.uuid4().hex[:12]}"
    study = open_queued_study(open_storage(storage_url), name, direction="minimize")
    other = open_queued_study(open_storage(storage_url), name, direction="minimize")  # another
    study.enqueue_trial({})  # process's view: a storage of its own, with its own replay
    log_reads = _count_log_reads(get_engine(storage_url))

    with one_read(study):
        assert len(study.get_trials()) == 1
        assert log_reads() == 1
        other.enqueue_trial({})
        sent = log_reads()
        assert len(study.get_trials()) == 1  # as of the block's first read
        assert trial_counts(study)[TrialState.WAITING] == 1
        assert log_reads() == sent
        claimed = study.pop_unstarted()
        assert claimed is not None  # the claim's read-back says it won ...
        assert len(study.get_trials()) == 2  # ... and brought what the other appended before it
    other.enqueue_trial({})
    assert len(study.get_trials()) == 3
    assert study.get_trials()[0].state == TrialState.RUNNING


def _count_log_reads(engine: sa.Engine):
    """A function that says how many SELECTs of the journal's log ``engine`` sent since."""
    reads = [0]

    def count(_conn, _cursor, statement: str, *_args) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "lrtune_optuna_log" in statement:
            reads[0] += 1

    sa.event.listen(engine, "before_cursor_execute", count)
    return lambda: reads[0]


def test_a_beating_trial_is_not_stale_and_a_silent_one_is(storage_url) -> None:
    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=2)
    study = open_queued_study(storage, f"beats-{uuid.uuid4().hex[:12]}", direction="minimize")
    for _ in range(2):
        study.enqueue_trial({})
    beating, silent = study.pop_unstarted(), study.pop_unstarted()
    assert beating is not None and silent is not None
    storage.record_heartbeat(silent)
    for _ in range(4):
        storage.record_heartbeat(beating)
        time.sleep(0.9)
    assert storage._get_stale_trial_ids(study._study_id) == [silent]


def _views(storage: optuna.storages.BaseStorage, names: list[str]) -> dict[str, object]:
    """What the API serves of each study: its range test and bounds, and its trials."""
    views: dict[str, object] = {}
    for name in names:
        finder, bounds = read_finder(storage, name)
        views[name] = {
            "finder": None if finder is None else finder.model_dump(mode="json"),
            "bounds": None if bounds is None else bounds.model_dump(mode="json"),
            "trials": [view.model_dump(mode="json") for view in read_trials(storage, name)],
        }
    return views


def _rdb_views(url: str, names: list[str]) -> dict[str, object]:
    rdb = optuna.storages.RDBStorage(url)
    try:
        return _views(rdb, names)
    finally:
        rdb.engine.dispose()


def test_a_finished_job_of_revision_0008_reads_the_same_after_the_upgrade(tmp_path) -> None:
    """A database an lrtune at revision 0008 left (a small job run to the end, its studies in
    Optuna's RDB tables): after the upgrade its trials read as before, from the journal."""
    path = tmp_path / "old.db"
    shutil.copy(STORED_0008, path)
    url = f"sqlite:///{path}"
    assert current_revision(url) == "0008"
    names = optuna.get_all_study_names(storage=url)
    before = _rdb_views(url, names)
    assert before and all(before.values())

    assert any(view["finder"] for view in before.values())  # type: ignore[index]

    upgrade(url)
    storage = open_storage(url)
    assert optuna.get_all_study_names(storage=storage) == names
    assert _views(storage, names) == before
    assert _rdb_views(url, names) == before  # Optuna's tables are left as they were
    (job,) = JobStore(url).list_jobs().data
    assert job.status == "succeeded" and job.study_name in names


def test_a_running_trial_of_an_old_database_goes_stale_and_is_retried(storage_url) -> None:
    """A trial RUNNING in Optuna's RDB tables when the database is upgraded (its worker is gone)
    gets a heartbeat at the upgrade, so it fails once the grace period passes and is queued
    again with its attributes, as a trial whose worker died is."""
    if storage_url.startswith("postgresql"):
        _drop_everything(storage_url)
    upgrade(storage_url, "0008")
    name = f"old-{uuid.uuid4().hex[:12]}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(storage_url)
    old = optuna.create_study(storage=rdb, study_name=name)
    old.set_user_attr("lrtune.spec", {"kept": True})
    done = old.ask()
    done.report(0.5, 0)
    old.tell(done, 0.25)
    old.enqueue_trial({}, user_attrs={ATTR_ROOT: 7})
    running = old.ask()
    assert running.user_attrs[ATTR_ROOT] == 7
    rdb.engine.dispose()

    upgrade(storage_url)
    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=1)
    study = optuna.load_study(study_name=name, storage=storage)
    assert study.user_attrs == {"lrtune.spec": {"kept": True}}
    finished, stuck = study.get_trials()
    assert (finished.value, finished.intermediate_values) == (0.25, {0: 0.5})
    assert stuck.state == TrialState.RUNNING
    time.sleep(2.5)
    fail_stale_trials(study)
    assert [t.state for t in study.get_trials()] == [
        TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING,
    ]  # fmt: skip
    assert study.get_trials()[-1].user_attrs[ATTR_ROOT] == 7  # resumes the same checkpoint
    if storage_url.startswith("postgresql"):
        _drop_everything(storage_url)


def _drop_everything(url: str) -> None:
    """Empty the scratch PostgreSQL database: lrtune's tables and Optuna's."""
    engine = get_engine(url)
    with engine.begin() as conn:
        for table in sa.inspect(conn).get_table_names():
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}" CASCADE')
        conn.exec_driver_sql("DROP SEQUENCE IF EXISTS lrtune_jobs_submit_seq")


def test_a_pickled_storage_reopens_the_database_and_reads_the_studies(tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'p.db'}", heartbeat_interval=1)
    study = optuna.create_study(storage=storage, study_name="pickled")
    study.tell(study.ask(), 1.5)
    copy = pickle.loads(pickle.dumps(storage))
    assert optuna.load_study(study_name="pickled", storage=copy).best_value == 1.5
    assert copy.get_heartbeat_interval() == 1 and copy.engine is storage.engine
