"""A running trial's writes held back for its next append (``lrtune._journal_writes``): the
journal replays as Optuna's own would, other processes see the writes once appended and this
one at once, a stale worker's are refused, and a short trial is three commits."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from lrtune._journal import SqlJournalBackend, SqlJournalStorage
from lrtune._optuna import open_queued_study, publish
from lrtune._rdb import get_engine
from lrtune.optuna_storage import open_storage
from lrtune.search import JobSearch, UnitOptions
from lrtune.spec import JobSpec
from lrtune.training import TrainingSetup

REPO = Path(__file__).resolve().parents[1]

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _storage(url: str, flush_s: float = 60.0) -> SqlJournalStorage:
    """lrtune's journal storage on ``url`` (tables created), holding writes ``flush_s``."""
    open_storage(url, heartbeat_interval=None)  # creates the journal's tables
    return SqlJournalStorage(get_engine(url), heartbeat_interval=60, flush_s=flush_s)


def _view(study: optuna.Study) -> list[tuple[Any, ...]]:
    """What a study's trials hold, but their times."""
    return [
        (t.number, t.state, t.params, t.user_attrs, t.intermediate_values, t.values)
        for t in study.get_trials(deepcopy=False)
    ]


def _three_trials(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    """A completed, a pruned and a failed trial, each with parameters, attributes, reports."""
    sampler = optuna.samplers.RandomSampler(seed=3)
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler)
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.suggest_categorical("family", ["constant", "cosine"])
    trial.set_user_attr("root", trial.number)
    storage.set_trial_system_attr(trial._trial_id, "rung", 1)
    for step in range(5):
        trial.report(1.0 / (step + 1), step)
    study.tell(trial, 0.2)
    pruned = study.ask()
    pruned.report(0.9, 0)
    pruned.report(float("nan"), 1)
    pruned.report(0.7, 2)
    study.tell(pruned, state=TrialState.PRUNED)  # its value: its last report, held back
    failed = study.ask()
    failed.set_user_attr("why", "boom")
    study.tell(failed, state=TrialState.FAIL)
    return study


@contextmanager
def _appends(url: str) -> Iterator[list[str]]:
    """The appends to the journal sent on ``url``'s engine meanwhile (one statement each)."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "INSERT INTO lrtune_optuna_log " in statement:
            sent.append(statement)

    engine = get_engine(url)
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_held_writes_replay_as_optunas_own_journal_written_one_by_one(
    storage_url: str, tmp_path: Path
) -> None:
    name = f"same-{uuid.uuid4().hex[:12]}"
    storage = _storage(storage_url)
    with _appends(storage_url) as appends:
        held = _three_trials(storage, name)
    optunas = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log")))
    one_by_one = _three_trials(optunas, name)

    assert _view(held) == _view(one_by_one)
    assert held.trials[1].value == 0.7  # Optuna's tell read the held reports
    assert len(appends) == 1 + 3 * 2  # the study; each trial's creation, and its finish
    # Optuna's own JournalStorage, none of lrtune's, replays the rows to the same study:
    replayed = JournalStorage(SqlJournalBackend(get_engine(storage_url)))
    assert _view(optuna.load_study(study_name=name, storage=replayed)) == _view(one_by_one)


READER = """
import json, sys
import optuna
from lrtune.optuna_storage import open_storage
storage = open_storage(sys.argv[1], heartbeat_interval=None)
for _ in sys.stdin:
    trial = optuna.load_study(study_name=sys.argv[2], storage=storage).get_trials()[0]
    seen = [trial.state.name, trial.user_attrs, len(trial.intermediate_values)]
    print(json.dumps(seen), flush=True)
"""


class _Reader:
    """Another process, reading the study's first trial whenever asked."""

    def __init__(self, url: str, name: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", READER, url, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    def sees(self) -> list[Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("read\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)


def test_another_process_sees_a_claim_at_once_a_plan_once_published_and_reports_at_the_finish(
    storage_url: str,
) -> None:
    name = f"seen-{uuid.uuid4().hex[:12]}"
    study = open_queued_study(_storage(storage_url), name, direction="minimize")
    study.enqueue_trial({})
    reader = _Reader(storage_url, name)
    try:
        trial = study.ask()
        trial.set_user_attr("plan", "cosine")
        assert reader.sees() == ["RUNNING", {}, 0]
        publish(trial)
        assert reader.sees() == ["RUNNING", {"plan": "cosine"}, 0]
        for epoch in range(3):
            trial.report(0.5, epoch)
        assert reader.sees() == ["RUNNING", {"plan": "cosine"}, 0]  # held back
        assert len(study.trials[0].intermediate_values) == 3  # but this process sees them
        study.tell(trial, 0.5)
        assert reader.sees() == ["COMPLETE", {"plan": "cosine"}, 3]
    finally:
        reader.close()


def test_a_report_after_flush_s_goes_at_once_with_the_held_ones(storage_url: str) -> None:
    name = f"slow-{uuid.uuid4().hex[:12]}"
    study = open_queued_study(_storage(storage_url, flush_s=0.3), name, direction="minimize")
    study.enqueue_trial({})
    other = open_storage(storage_url, heartbeat_interval=None)
    trial = study.ask()
    trial.report(0.9, 0)  # within flush_s of the claim: held back
    assert _other_reports(other, name) == 0
    time.sleep(0.4)
    trial.report(0.8, 1)  # an epoch slower than flush_s: appended, with the one held
    assert _other_reports(other, name) == 2


def test_a_ninth_waiting_report_goes_at_once_with_the_eight_before_it(storage_url: str) -> None:
    """However short its epochs, another process sees a running trial's every few epochs."""
    name = f"many-{uuid.uuid4().hex[:12]}"
    study = open_queued_study(_storage(storage_url), name, direction="minimize")
    study.enqueue_trial({})
    other = open_storage(storage_url, heartbeat_interval=None)
    trial = study.ask()
    for epoch in range(8):
        trial.report(0.5, epoch)
    assert _other_reports(other, name) == 0
    trial.report(0.5, 8)
    assert _other_reports(other, name) == 9


def _other_reports(storage: optuna.storages.BaseStorage, name: str) -> int:
    return len(optuna.load_study(study_name=name, storage=storage).trials[0].intermediate_values)


def test_a_stale_workers_held_writes_are_refused_at_its_finish(storage_url: str) -> None:
    """Another process failed the trial (its heartbeat went stale): the late worker's finish,
    with the reports it held, is refused in every process's replay, and raises there once."""
    name = f"fenced-{uuid.uuid4().hex[:12]}"
    stale = open_queued_study(_storage(storage_url), name, direction="minimize")
    stale.enqueue_trial({})
    trial = stale.ask()
    trial.report(0.5, 0)
    failing = _storage(storage_url)
    failing.set_trial_state_values(trial._trial_id, TrialState.FAIL)  # as fail_stale_trials

    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        stale.tell(trial, 0.5)
    assert _view(stale) == [(0, TrialState.FAIL, {}, {}, {}, None)]  # no second raise
    fresh = open_storage(storage_url, heartbeat_interval=None)
    assert _view(optuna.load_study(study_name=name, storage=fresh)) == _view(stale)


JOB = {
    "model": {"name": "logreg"},
    "dataset": {"name": "wine"},
    "range_test": {"seeds": 1, "num_iter": 20},
    "search": {
        "n_trials": 3,
        "epochs": 4,
        "sampler": "random",
        "pruner": "none",
        "families": ["constant", "cosine"],
        "baselines": [],
        "confirm_seeds": 0,
    },
}


def test_a_search_trial_within_flush_s_is_three_appends(storage_url: str) -> None:
    """Its claim, its plan (parameters and attributes), and its finish with every report."""
    spec = JobSpec.model_validate(JOB)
    setup = TrainingSetup.from_spec(spec, "cpu")
    storage = _storage(storage_url)
    name = f"lean-{uuid.uuid4().hex[:12]}"
    search = JobSearch.prepare(spec, storage, setup=setup, progress=False, study_name=name)
    with _appends(storage_url) as appends:
        search.run_units("search", setup, UnitOptions(progress=False, wait_for_others=False))

    trials = search.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert all(len(t.intermediate_values) == 4 for t in trials)
    assert len(appends) == 3 * 3


@pytest.mark.postgres
def test_a_held_connection_the_server_closed_is_replaced(postgres_url: str) -> None:
    """As after a PostgreSQL restart: the next read and append go through a new connection."""
    name = f"held-{uuid.uuid4().hex[:12]}"
    storage = _storage(postgres_url)
    study = open_queued_study(storage, name, direction="minimize")
    study.enqueue_trial({})
    held = storage._backend._held._connection.connection.dbapi_connection  # type: ignore[attr-defined]
    with get_engine(postgres_url).connect() as admin:
        admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": held.info.backend_pid})
    time.sleep(0.2)  # the server's goodbye reaches the socket

    assert [t.state for t in study.get_trials()] == [TrialState.WAITING]
    study.enqueue_trial({})
    assert len(optuna.load_study(study_name=name, storage=_storage(postgres_url)).trials) == 2
