"""Pin the Optuna behaviour lrtune's adapter (``lrtune._optuna``) relies on.

If an Optuna upgrade changes any of these, the queue's exactness or the crash recovery breaks:
these tests say which.
"""

from __future__ import annotations

import time
import uuid
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from lrtune._optuna import (
    ATTR_ROOT,
    ATTR_SLOT,
    QueuedStudy,
    QueueEmpty,
    best_value,
    fail_stale_trials,
    has_unfinished,
    heartbeat_interval,
    open_queued_study,
    trial_counts,
    waiting_trial_ids,
)
from lrtune.optuna_storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_pop_claims_waiting_trials_in_order_and_returns_none_when_empty(storage_url) -> None:
    storage = open_storage(storage_url)
    name = f"pop-{uuid.uuid4().hex[:12]}"  # the PostgreSQL database outlives a test run
    study = optuna.create_study(storage=storage, study_name=name)
    other = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    for _ in range(2):
        study.enqueue_trial({})
    first = study._pop_waiting_trial_id()
    second = other._pop_waiting_trial_id()  # another handle cannot get the claimed trial
    assert first is not None and second is not None and first != second
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 2
    assert study._pop_waiting_trial_id() is None and other._pop_waiting_trial_id() is None


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_the_counts_of_another_process_answer_as_get_trials_does(storage_url, direction) -> None:
    """trial_counts, waiting_trial_ids and best_value, read through a storage of its own (as
    another process reads the study another wrote), agree with the writer's trial objects,
    infinities included."""
    storage = open_storage(storage_url)
    name = f"counts-{uuid.uuid4().hex[:12]}"
    plain = optuna.create_study(storage=storage, study_name=name, direction=direction)
    study = open_queued_study(open_storage(storage_url), name, direction=direction)
    assert best_value(study) is None and waiting_trial_ids(study) == []
    for value in (3.0, float("-inf"), 1.5, float("inf")):
        plain.tell(plain.ask(), value)
    plain.tell(plain.ask(), state=TrialState.PRUNED)
    plain.tell(plain.ask(), state=TrialState.FAIL)
    plain.ask()  # RUNNING
    for _ in range(3):
        study.enqueue_trial({})
    trials = plain.get_trials(deepcopy=False)
    counts = trial_counts(study)
    assert {state: counts[state] for state in TrialState} == {
        state: sum(t.state == state for t in trials) for state in TrialState
    }
    waiting = [t._trial_id for t in trials if t.state == TrialState.WAITING]
    assert waiting_trial_ids(study) == waiting and len(waiting) == 3
    assert best_value(study) == plain.best_value  # -inf when minimizing, inf when maximizing
    finite = optuna.create_study(storage=storage, study_name=f"{name}-f", direction=direction)
    for value in (2.0, 0.5, 4.0):
        finite.tell(finite.ask(), value)
    assert best_value(finite) == finite.best_value == (0.5 if direction == "minimize" else 4.0)
    assert study.pop_unstarted() == waiting[0]  # the oldest queued trial, now RUNNING
    assert trial_counts(study)[TrialState.WAITING] == 2


def test_the_counts_of_an_in_memory_study() -> None:
    study = open_queued_study(optuna.storages.InMemoryStorage(), "mem", direction="minimize")
    study.enqueue_trial({})
    study.tell(study.ask(), 2.0)  # the queued trial
    study.enqueue_trial({})
    assert trial_counts(study)[TrialState.WAITING] == 1
    assert trial_counts(study)[TrialState.COMPLETE] == 1
    assert best_value(study) == 2.0 and len(waiting_trial_ids(study)) == 1


def test_enqueue_trial_keeps_user_attrs_and_fixes_params() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"x": 0.25}, user_attrs={ATTR_SLOT: 3, "nested": {"a": [1, 2]}})
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs == {ATTR_SLOT: 3, "nested": {"a": [1, 2]}}
    trial = study.ask()
    assert trial.suggest_float("x", 0.0, 1.0) == 0.25
    assert trial.user_attrs[ATTR_SLOT] == 3


def test_a_queued_study_hands_out_only_queued_trials() -> None:
    study = open_queued_study(optuna.storages.InMemoryStorage(), "q", direction="minimize")
    assert isinstance(study, QueuedStudy)
    study.enqueue_trial({}, user_attrs={"k": 1})
    with pytest.raises(QueueEmpty):
        study.optimize(lambda trial: 0.0)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
    assert not has_unfinished(study)
    again = open_queued_study(study._storage, "q", direction="minimize")  # loads, not creates
    assert len(again.get_trials()) == 1


def test_fail_stale_trials_fails_a_silent_trial_and_queues_a_clone(storage_url) -> None:
    storage = open_storage(storage_url, heartbeat_interval=1, grace_period=1)
    study = open_queued_study(storage, f"stale-{uuid.uuid4().hex[:12]}", direction="minimize")
    assert heartbeat_interval(study) == 1.0
    study.enqueue_trial({}, user_attrs={ATTR_ROOT: 0})
    trial_id = study._pop_waiting_trial_id()
    storage.record_heartbeat(trial_id)  # what optimize's heartbeat thread does, then dies
    time.sleep(2.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # lrtune silences Optuna's ExperimentalWarning here
        fail_stale_trials(study)
    dead, clone = study.get_trials()
    assert dead.state == TrialState.FAIL and clone.state == TrialState.WAITING
    assert clone.user_attrs[ATTR_ROOT] == 0  # the retry resumes the same checkpoint


def test_an_in_memory_study_has_no_heartbeat() -> None:
    study = open_queued_study(optuna.storages.InMemoryStorage(), "m", direction="maximize")
    assert heartbeat_interval(study) is None


def test_the_shared_storage_sets_what_rdbstorage_sets_on_the_engine_it_is_given(
    tmp_path,
) -> None:
    """SharedEngineStorage (which reads the studies of an earlier lrtune, to copy them into
    the journal) replaces RDBStorage.__init__: an Optuna that sets another attribute there
    (which its methods would then read) must be followed, or the storage breaks."""
    from lrtune._optuna import SharedEngineStorage
    from lrtune.jobs.db import get_engine

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    own = optuna.storages.RDBStorage(url)
    own.engine.dispose()
    engine = get_engine(url)
    shared = SharedEngineStorage(engine)

    assert set(vars(shared)) == set(vars(own))
    assert shared.engine is engine
    assert shared.scoped_session().get_bind() is engine
    assert shared._version_manager.engine.pool is engine.pool
    study = optuna.create_study(storage=shared, study_name="s")  # the tables exist, usable
    study.enqueue_trial({})
    assert shared.get_current_version() == shared.get_head_version()


def test_a_heartbeat_that_meets_a_storage_error_survives_it(tmp_path) -> None:
    """Optuna's heartbeat thread dies at the first exception of record_heartbeat; lrtune's
    storage logs it instead, so the trial keeps beating once the database is back."""
    from lrtune.jobs.db import get_engine

    url = f"sqlite:///{tmp_path / 'beat.db'}"
    storage = open_storage(url, heartbeat_interval=1, grace_period=2)
    study = open_queued_study(storage, "beat", direction="minimize")
    study.enqueue_trial({})
    trial_id = study._pop_waiting_trial_id()
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql("ALTER TABLE lrtune_optuna_heartbeats RENAME TO away")
    storage.record_heartbeat(trial_id)  # the table is gone: logged, not raised
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql("ALTER TABLE away RENAME TO lrtune_optuna_heartbeats")
    storage.record_heartbeat(trial_id)
    assert storage._get_stale_trial_ids(study._study_id) == []
