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
    fail_stale_trials,
    has_unfinished,
    heartbeat_interval,
    open_queued_study,
)
from lrtune.storage import open_storage

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


def test_fail_stale_trials_fails_a_silent_trial_and_queues_a_clone(tmp_path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1, grace_period=1)
    study = open_queued_study(storage, "stale", direction="minimize")
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
