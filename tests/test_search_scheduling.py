"""The search's scheduling and reuse on a real job store: ``search.max_parallel`` bounds the
workers on a job, ``search.target`` and ``search.timeout_s`` stop its search early with every
trial explained, a fingerprint hit answers a submission at once, and a close earlier job's
winner warm-starts a new job's study, once and inside its budget."""

from __future__ import annotations

import itertools
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState
from test_worker import JOB, PLANNED_CONFIRMATION_RUNS, _start_worker

from lrtune._optuna import ATTR_STOP_REASON, ATTR_WARM_START
from lrtune.cli import main
from lrtune.jobs import JobStatus, JobStore
from lrtune.optuna_storage import open_storage
from lrtune.result import LRBounds
from lrtune.schedules import FAMILIES
from lrtune.space import schedule_params, suggest_schedule
from lrtune.spec import JobSpec
from lrtune.tuner import prepare_study, tune, winner_starts
from lrtune.workers.loop import Worker


def _job(**search: Any) -> dict[str, Any]:
    return {**JOB, "search": {**JOB["search"], **search}}


def _trials(url: str, study_name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=study_name, storage=open_storage(url)).get_trials(
        deepcopy=False
    )


def _intervals(trials: list[FrozenTrial]) -> list[tuple[datetime, datetime]]:
    ran = [t for t in trials if t.datetime_start is not None and t.datetime_complete is not None]
    return sorted((t.datetime_start, t.datetime_complete) for t in ran)  # type: ignore[misc]


def _overlaps(trials: list[FrozenTrial]) -> int:
    """Pairs of consecutive (by start) trials where one started before the other finished."""
    spans = _intervals(trials)
    return sum(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


def _run_once(store: JobStore, worker_id: str = "w1") -> int:
    return Worker(store, device="cpu", worker_id=worker_id).run(once=True)


def _every_trial_explained(trials: list[FrozenTrial]) -> None:
    for trial in trials:
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED), trial
        if trial.state == TrialState.PRUNED:
            assert trial.user_attrs.get(ATTR_STOP_REASON), trial


# --- max_parallel ----------------------------------------------------------------------------


@pytest.mark.slow
def test_three_workers_run_a_max_parallel_1_job_one_unit_at_a_time_and_help_the_next_job(
    jobs_url: str,
) -> None:
    store = JobStore(jobs_url)
    # the older job takes one worker at a time; the newer one may take all of them
    bounded = store.submit(JobSpec.model_validate(_job(n_trials=6, epochs=8, max_parallel=1)))
    # its trials long enough (unpruned, about a second each) that the idle workers, polling
    # every second, join the one that finished its range test before it has run them all
    long_trials = _job(n_trials=6, epochs=200, max_parallel=3, pruner="none")
    shared = store.submit(JobSpec.model_validate(long_trials))

    workers = [_start_worker(jobs_url) for _ in range(3)]  # they poll until stopped
    deadline = time.monotonic() + 300
    while not all(store.get(j.id).status.finished for j in (bounded, shared)):
        assert time.monotonic() < deadline, "the jobs did not finish"
        time.sleep(0.5)
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    outputs = [w.communicate(timeout=60) for w in workers]

    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr
    for job_id in (bounded.id, shared.id):
        assert store.get(job_id).status is JobStatus.SUCCEEDED, store.get(job_id).error
    units = _trials(jobs_url, bounded.study_name) + _trials(
        jobs_url, bounded.study_name + ":confirm"
    )
    assert len(units) == 6 + PLANNED_CONFIRMATION_RUNS
    assert _overlaps(units) == 0  # never two of its units at once, across three workers
    # meanwhile the other workers were not idle: they skipped it and shared the newer job
    assert _overlaps(_trials(jobs_url, shared.study_name)) >= 1
    helped = [
        any(f"job={shared.id}" in line and "event=helping" in line for line in err.splitlines())
        for _, err in outputs
    ]
    assert sum(helped) >= 2


# --- target ----------------------------------------------------------------------------------


def test_a_reached_target_stops_the_search_and_the_job_is_confirmed_and_recommended(
    jobs_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = JobStore(jobs_url)
    n_trials = 6
    # any finished trial's val_loss is below 10: the first one to finish reaches the target
    job = store.submit(JobSpec.model_validate(_job(n_trials=n_trials, target=10.0, pruner="none")))

    assert _run_once(store) == 1

    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED, done.error
    trials = _trials(jobs_url, job.study_name)
    assert len(trials) == n_trials  # the budget, each trial finished: none left queued
    _every_trial_explained(trials)
    skipped = [t for t in trials if t.user_attrs.get(ATTR_STOP_REASON, "").startswith("skipped")]
    assert len(skipped) >= n_trials - 2
    assert all("skipped: target reached" in t.user_attrs[ATTR_STOP_REASON] for t in skipped)
    assert all("run" not in t.user_attrs for t in skipped)  # closed unrun
    assert done.progress.trials_skipped == len(skipped)
    assert done.progress.search_stopped is not None
    assert done.progress.search_stopped.startswith("skipped: target reached")
    confirm = _trials(jobs_url, job.study_name + ":confirm")
    assert len(confirm) == PLANNED_CONFIRMATION_RUNS
    _every_trial_explained(confirm)
    stored = store.recommendation(job.id)
    assert stored.recommendation.best is not None and stored.recommendation.confirmed
    history = stored.recommendation.history
    assert sum((e.stop_reason or "").startswith("skipped: target") for e in history) == len(skipped)
    main(["status", job.id, "--database", jobs_url])
    assert "search stopped early" in capsys.readouterr().out


def test_tune_stops_its_search_at_the_target_and_confirms() -> None:
    spec = JobSpec.model_validate(_job(n_trials=5, target=10.0, pruner="none"))

    rec = tune(spec, progress=False)

    searched = [e for e in rec.history if e.kind == "search"]
    assert len(searched) == 5 and all(e.state in ("COMPLETE", "PRUNED") for e in searched)
    skipped = [e for e in searched if (e.stop_reason or "").startswith("skipped: target reached")]
    assert len(skipped) >= 3
    assert rec.confirmed and rec.best is not None
    assert rec.n_trials["fail"] == 0 and rec.n_trials["waiting"] == 0


# --- timeout ---------------------------------------------------------------------------------


def test_a_worker_honours_search_timeout_s_counted_from_when_the_job_entered_searching(
    jobs_url: str,
) -> None:
    store = JobStore(jobs_url)
    # 80 trials of 10 epochs take several seconds; the search may hand out trials for 1 s
    job = store.submit(JobSpec.model_validate(_job(n_trials=80, epochs=10, timeout_s=1.0)))

    assert _run_once(store) == 1

    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.search_started_at is not None
    trials = _trials(jobs_url, job.study_name)
    assert len(trials) == 80
    _every_trial_explained(trials)
    ran = [t for t in trials if not t.user_attrs.get(ATTR_STOP_REASON, "").startswith("skip")]
    assert 1 <= len(ran) < 80
    assert done.progress.trials_skipped == 80 - len(ran)
    assert "search.timeout_s (1 s) passed" in (done.progress.search_stopped or "")
    # the running trial finished: no trial was started after the deadline ...
    first_start = min(t.datetime_start for t in ran)  # type: ignore[type-var]
    late = [t for t in ran if (t.datetime_start - first_start).total_seconds() > 1.0 + 0.5]
    assert not late
    assert store.recommendation(job.id).recommendation.best is not None


# --- reuse -----------------------------------------------------------------------------------


def test_a_fingerprint_hit_is_answered_at_once_and_no_reuse_queues_a_new_job(
    jobs_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = JobStore(jobs_url)
    spec = JobSpec.model_validate(JOB)
    first = store.submit(spec)
    assert first.reused_from is None and first.recommendation is None
    second = store.submit(spec)  # the first has not succeeded yet: a second job is queued
    assert second.reused_from is None and second.status is JobStatus.QUEUED
    _run_once(store)

    again = store.submit(spec)

    assert again.reused_from in {first.id, second.id} and again.status is JobStatus.SUCCEEDED
    assert again.id == again.reused_from
    assert again.recommendation is not None and again.recommendation.job_id == again.reused_from
    assert again.recommendation == store.recommendation(again.reused_from)
    assert len(store.list_jobs().data) == 2  # nothing was queued
    other_search = JobSpec.model_validate(_job(n_trials=4))  # another search: a new job
    assert store.submit(other_search).status is JobStatus.QUEUED
    scheduling_only = JobSpec.model_validate(_job(max_parallel=1))  # same search, same answer
    assert store.submit(scheduling_only).reused_from == again.reused_from

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(JOB))
    assert main(["submit", str(path), "--database", jobs_url]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == again.reused_from and f"reused job {again.reused_from}" in err
    assert main(["submit", str(path), "--database", jobs_url, "--no-reuse"]) == 0
    new_id = capsys.readouterr().out.strip()
    assert new_id != again.reused_from and store.get(new_id).status is JobStatus.QUEUED


# --- warm start ------------------------------------------------------------------------------


def test_a_close_earlier_jobs_winner_warm_starts_the_new_study_once_inside_its_budget(
    jobs_url: str,
) -> None:
    store = JobStore(jobs_url)
    earlier = store.submit(JobSpec.model_validate(JOB))
    _run_once(store)
    winner = store.recommendation(earlier.id).recommendation.best
    assert winner is not None
    close = JobSpec.model_validate({**_job(n_trials=3), "batch_size": 16})  # other batch size
    assert close.fingerprint() != earlier.fingerprint
    (candidate,) = store.warm_start_candidates(close)
    assert candidate.job_id == earlier.id
    job = store.submit(close)

    _run_once(store)

    assert store.get(job.id).status is JobStatus.SUCCEEDED, store.get(job.id).error
    trials = _trials(jobs_url, job.study_name)
    assert len(trials) == 3  # inside the budget: the winner replaced a slot
    started = [t for t in trials if ATTR_WARM_START in t.user_attrs]
    assert len(started) == 1 and started[0].number == 0
    origin = started[0].user_attrs[ATTR_WARM_START]
    assert origin["job"] == earlier.id and origin["lr"] == winner.base_lr
    assert started[0].params["family"] == winner.schedule.family
    # preparing again (a worker died after enqueuing) adds nothing, even with more candidates
    storage = open_storage(jobs_url)
    again = prepare_study(
        close,
        storage,
        study_name=job.study_name,
        earlier_winners=[(earlier.id, candidate.recommendation)] * 2,
        progress=False,
    )
    assert len(again.get_trials(deepcopy=False)) == 3


def test_a_winner_lr_outside_the_new_bounds_is_clipped_and_the_clipping_recorded(
    jobs_url: str,
) -> None:
    store = JobStore(jobs_url)
    earlier = store.submit(JobSpec.model_validate(JOB))
    _run_once(store)
    rec = store.recommendation(earlier.id).recommendation
    assert rec.finalists
    bounds = rec.bounds
    # the earlier job's recommendation: its first finalist, at an LR far above these bounds
    far = rec.finalists[0].model_copy(update={"base_lr": bounds.high * 1000})
    too_high = rec.model_copy(update={"finalists": [far, *rec.finalists[1:]], "recommended": 0})
    spec = JobSpec.model_validate({**JOB, "batch_size": 16})

    (start,) = winner_starts(spec.search, bounds, 6, [("job-a", too_high), ("job-a", too_high)])

    assert start["params"]["lr"] == bounds.high
    assert start["from"]["clipped"].startswith(f"lr {bounds.high * 1000:.4g} clipped to")
    other = JobSpec.model_validate({**_job(families=["onecycle"]), "batch_size": 16})
    # the winner's family is not one the other job searches
    assert winner_starts(other.search, bounds, 6, [("job-a", too_high)]) == []


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_winner_read_into_the_same_space_trains_the_same_schedule(family: str, seed: int) -> None:
    """schedule_params inverts suggest_schedule: the fixed params give back the schedule."""
    bounds = LRBounds(low=0.01, high=0.5, suggestion=0.1, divergence_lr=1.0)
    epochs, steps_per_epoch = 10, 7
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    schedule, lr = suggest_schedule(study.ask(), [family], bounds, epochs, steps_per_epoch)

    params, clipped = schedule_params(
        schedule,
        lr,
        source_epochs=epochs,
        source_steps_per_epoch=steps_per_epoch,
        bounds=bounds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
    )
    again, again_lr = suggest_schedule(
        optuna.trial.FixedTrial(params), [family], bounds, epochs, steps_per_epoch
    )

    assert clipped is None and again_lr == pytest.approx(lr)
    assert _flat(again.model_dump()) == pytest.approx(_flat(schedule.model_dump()))


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
        elif isinstance(value, (list, tuple)):
            flat |= {f"{prefix}{key}.{i}": v for i, v in enumerate(value)}
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat
