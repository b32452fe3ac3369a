"""The worker loop behind ``lrtune worker``: take jobs from the job store and do their work.

A :class:`Worker` repeats one step until it is stopped or, with ``once``, finds nothing to do:

1. :meth:`~lrtune.jobs.JobStore.claim` a job's exclusive phase. A ``finding`` job gets its
   range test and its prepared study (:func:`lrtune.tuner.prepare_study`, on the study the
   store named, ``JobRecord.study_name``), then moves on to ``searching`` and the lease is
   released. A ``confirming`` job whose finisher died gets its recommendation written.
2. Otherwise help the oldest job in a shared phase (:meth:`~lrtune.jobs.JobStore.shared_jobs`)
   that has a queued unit: search trials while ``searching``, confirmation runs while
   ``confirming``, popped from the job's Optuna queue (no lease: Optuna's heartbeat covers a
   dead worker's trial). The worker that finds a job's queue empty and nothing running claims
   the job by id: a ``searching`` job moves on to ``confirming``; a ``confirming`` job gets its
   recommendation written (:func:`lrtune.tuner.recommend`, saved under the lease) and succeeds.

While a worker holds a lease, a daemon thread renews it every ``lease_s / 3`` seconds, so a
long training step never lets it expire. A renewal that meets
:class:`~lrtune.exceptions.LeaseLost` (the lease expired and another worker took the job, or
the job was cancelled) stops the range test at its next step, and nothing more is written;
so does a lease whose last successful renewal is older than ``lease_s`` (the store was out of
reach for longer than the lease: another worker may hold the job now). The range test's study
writes happen right after a successful renewal (``prepare_study``'s ``fence``).
An unavailable store is retried with exponential backoff and jitter (``Settings.retry_*``,
:mod:`lrtune.workers.backoff`), by the loop and by the lease's renewals.
An error inside a phase fails the job with the reason, and so does a unit that fails for a
reason of its own (:func:`lrtune.tuner.unit_failure`): it is not retried, and the job must not
succeed short of its budget. SIGTERM or SIGINT abandons the current
unit (Optuna records the trial FAILED as interrupted, and the worker queues it again, so
another worker resumes it from its checkpoint), hands a held lease back, and the worker exits
with status 0.

Example:
    >>> import tempfile, pathlib
    >>> from lrtune.jobs import JobStore
    >>> store = JobStore(f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}")
    >>> worker = Worker(store, device="cpu", worker_id="w1")
    >>> worker.run(once=True)  # nothing queued: returns at once, having worked on no job
    0
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import optuna

from lrtune import __version__
from lrtune._optuna import fail_stale_trials, has_unfinished, has_waiting, storage_errors
from lrtune.device import resolve_device
from lrtune.exceptions import ConflictError, LeaseLost, LRTuneError, StorageUnavailableError
from lrtune.jobs import JobProgress, JobRecord, JobStatus, JobStore, Lease, Provenance
from lrtune.storage import open_storage
from lrtune.training import TrainingSetup
from lrtune.tuner import (
    TrialFailed,
    open_confirmation,
    open_study,
    prepare_study,
    recommend,
    requeue_interrupted,
    run_confirmation,
    run_trials,
    stored_bounds,
    stored_range_test,
    unit_failure,
)
from lrtune.workers.backoff import Backoff

logger = logging.getLogger("lrtune.workers")

DEFAULT_LEASE_S = 60.0
"""Seconds a lease lasts without renewal: how long a dead worker's exclusive phase waits."""
IDLE_POLL_S = 1.0
"""Seconds an idle worker waits before looking for work again."""
SETUPS_KEPT = 4
"""Jobs whose loaded data a worker keeps, so that helping them again does not reload it."""
SUGGESTION_RULE = "consensus"
"""The range test's rule whose suggestion and bounds a job's search uses."""


class _Heartbeat:
    """Renews ``lease`` every ``lease_s / 3`` seconds from a daemon thread while in a ``with``.

    A renewal that meets an unavailable store is retried with ``backoff`` (the lease may still
    hold when the store comes back). The lease counts as lost (``lost`` set, :meth:`check`
    raises :class:`LeaseLost`) once a renewal meets :class:`LeaseLost`, or once the last
    successful renewal (timed from its start) is older than ``lease_s``: by then the lease
    may have expired and another worker may hold the job, so the holder stops instead of
    writing stale results.
    """

    def __init__(self, store: JobStore, lease: Lease, lease_s: float, backoff: Backoff) -> None:
        self.store = store
        self.lease = lease
        self.lease_s = lease_s
        self.backoff = backoff
        self.lost = threading.Event()
        self._renewed_at = time.monotonic()  # just after the claim: a slight overestimate
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew_until_stopped, name=f"lease-{lease.job_id[:8]}", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop renewing (before the write that releases the lease: no renewal races it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _renew_until_stopped(self) -> None:
        wait = self.lease_s / 3
        while not self._stop.wait(wait):
            try:
                self.renew_now()
            except LeaseLost:
                return
            except StorageUnavailableError as exc:
                if self._expired():
                    return
                left = self.lease_s - (time.monotonic() - self._renewed_at)
                wait = max(0.0, min(self.backoff.next_s(), left))
                logger.warning(
                    "job=%s event=renew_failed retry_in=%.2f error=%s",
                    self.lease.job_id,
                    wait,
                    exc,
                )
            else:
                self.backoff.reset()
                wait = self.lease_s / 3

    def renew_now(self) -> None:
        """Renew the lease at once (the guard of the exclusive phase's writes).

        On return the lease holds for ``lease_s`` more seconds by the database's clock.

        Raises:
            LeaseLost: the lease was lost (see the class), now or before.
            StorageUnavailableError: the store cannot be reached: whether the lease holds is
                unknown.
        """
        self.check()
        started = time.monotonic()
        try:
            self.store.renew(self.lease, self.lease_s)
        except LeaseLost:
            logger.warning("job=%s event=lease_lost reason=taken", self.lease.job_id)
            self.lost.set()
            raise
        self._renewed_at = started

    def _expired(self) -> bool:
        """Whether the last successful renewal is older than the lease (then mark it lost)."""
        if time.monotonic() - self._renewed_at > self.lease_s and not self.lost.is_set():
            logger.warning("job=%s event=lease_lost reason=no_renewal", self.lease.job_id)
            self.lost.set()
        return self.lost.is_set()

    def check(self, *_step: Any) -> None:
        """Raise :class:`LeaseLost` if the lease was lost (also a range-test step callback)."""
        if self._expired():
            raise LeaseLost(f"lost the lease of job {self.lease.job_id}: stopping its work")


class Worker:
    """One worker process's loop over the job store (see the module).

    Args:
        store: the job store; the jobs' Optuna studies live in the same database.
        device: where it trains (``auto``, ``cpu``, ``cuda:N``).
        lease_s: how long a lease lasts without renewal.
        worker_id: its name in the store (default: ``host-pid``).
        artifact_dir: where trials checkpoint each epoch, so that an interrupted trial resumes
            (a directory every worker that may resume it can read); None: no checkpoints.
        poll_s: how long it waits, idle, before looking for work again.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        device: str = "auto",
        lease_s: float = DEFAULT_LEASE_S,
        worker_id: str | None = None,
        artifact_dir: str | Path | None = None,
        poll_s: float = IDLE_POLL_S,
    ) -> None:
        self.store = store
        self.device = str(resolve_device(device))
        self.lease_s = lease_s
        self.id = (worker_id or f"{socket.gethostname()}-{os.getpid()}")[:64]
        self.artifact_dir = Path(artifact_dir) if artifact_dir is not None else None
        self.poll_s = poll_s
        self._storage: optuna.storages.BaseStorage | None = None
        self._setups: dict[str, TrainingSetup] = {}

    def run(self, *, max_jobs: int | None = None, once: bool = False) -> int:
        """Work until interrupted; return how many jobs it worked on.

        ``once``: return as soon as no job has work this worker may take. ``max_jobs``: work on
        at most that many distinct jobs, and return when they have none left for it.
        """
        worked: set[str] = set()
        backoff = self._backoff()
        logger.info("worker=%s event=started device=%s", self.id, self.device)
        try:
            while True:
                may_start = max_jobs is None or len(worked) < max_jobs
                try:
                    job_id = self._step(may_start, worked)
                except StorageUnavailableError as exc:  # back off; the store may come back
                    wait = backoff.next_s()
                    logger.warning(
                        "worker=%s event=store_unavailable retry_in=%.2f error=%s",
                        self.id,
                        wait,
                        exc,
                    )
                    time.sleep(wait)
                    continue
                backoff.reset()
                if job_id is not None:
                    worked.add(job_id)
                    continue
                if once or not may_start:
                    break
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            logger.info("worker=%s event=stopped reason=signal", self.id)
        else:
            logger.info("worker=%s event=stopped reason=no_work jobs=%d", self.id, len(worked))
        return len(worked)

    def _backoff(self) -> Backoff:
        """Waits between tries of an unavailable store (``Settings.retry_*``)."""
        settings = self.store.settings
        return Backoff(
            settings.retry_initial_s, max(settings.retry_max_s, settings.retry_initial_s)
        )

    def _step(self, may_start: bool, worked: set[str]) -> str | None:
        """Do one piece of work; return the id of the job it was for, None if there was none."""
        if may_start:
            lease = self._claim()
            if lease is not None:
                self._exclusive(lease)
                return lease.job_id
        for job in self.store.shared_jobs():
            if (may_start or job.id in worked) and self._help(job):
                return job.id
        return None

    def _claim(self, job_id: str | None = None) -> Lease | None:
        lease = self.store.claim(self.id, self.lease_s, job_id=job_id)
        if lease is not None:
            _log(lease.job_id, self.id, lease.status.value, "claimed", attempts=lease.attempts)
        return lease

    def _exclusive(self, lease: Lease) -> None:
        """Run the phase ``lease`` holds; fail the job on an error, hand it back on a signal."""
        job = self.store.get(lease.job_id)
        started = time.monotonic()
        try:
            heartbeat = _Heartbeat(self.store, lease, self.lease_s, self._backoff())
            with heartbeat, storage_errors():
                if lease.status is JobStatus.FINDING:
                    self._find(job, lease, heartbeat)
                elif lease.status is JobStatus.SEARCHING:
                    self._end_search(job, lease, heartbeat)
                else:
                    self._finish(job, lease, heartbeat)
        except LeaseLost as exc:
            _log(job.id, self.id, lease.status.value, "abandoned", reason=str(exc))
        except (KeyboardInterrupt, StorageUnavailableError):  # not the job's fault: hand it back
            self._hand_back(lease)
            raise
        except Exception as exc:
            self._fail(lease, exc)
        else:
            _log(job.id, self.id, lease.status.value, "done", s=time.monotonic() - started)

    def _find(self, job: JobRecord, lease: Lease, heartbeat: _Heartbeat) -> None:
        """The range test and the study's queues; then the job is ``searching``."""
        setup = self._setup(job)
        study = prepare_study(
            job.spec,
            self._optuna_storage(),
            setup=setup,
            progress=False,
            study_name=job.study_name,
            callback=heartbeat.check,
            fence=heartbeat.renew_now,
        )
        confirm = open_confirmation(study, job.spec)
        progress = job.progress.model_copy(
            update={
                "range_test_steps_done": len(stored_range_test(study).lrs),  # to divergence
                "range_test_steps_total": job.spec.range_test.num_iter,
                "trials_total": len(study.get_trials(deepcopy=False)),
                "confirmations_total": len(confirm.get_trials(deepcopy=False)),
            }
        )
        heartbeat.stop()
        heartbeat.check()
        self.store.release(lease, status=JobStatus.SEARCHING, progress=progress)

    def _end_search(self, job: JobRecord, lease: Lease, heartbeat: _Heartbeat) -> None:
        """Move a ``searching`` job whose search is over to ``confirming``."""
        study = open_study(job.spec, self._optuna_storage(), job.study_name)
        _raise_unit_failure(study)
        heartbeat.stop()
        if has_unfinished(study):  # a unit was re-queued meanwhile: still searching
            self.store.release(lease)
            return
        self.store.release(lease, status=JobStatus.CONFIRMING, progress=_progress(job, study))

    def _finish(self, job: JobRecord, lease: Lease, heartbeat: _Heartbeat) -> None:
        """Write the recommendation of a job whose confirmation is over; it succeeds."""
        study = open_study(job.spec, self._optuna_storage(), job.study_name)
        _raise_unit_failure(open_confirmation(study, job.spec))
        if has_unfinished(open_confirmation(study, job.spec)):  # units left for the helpers
            heartbeat.stop()
            self.store.release(lease)
            return
        recommendation = recommend(study, self._setup(job))
        heartbeat.stop()
        heartbeat.check()
        try:
            self.store.save_recommendation(
                job.id, recommendation, self._provenance(job, study), lease=lease
            )
        except ConflictError:  # saved by a finisher that died before releasing
            _log(job.id, self.id, "confirming", "recommendation_exists")
        progress = _progress(job, study)
        self.store.release(lease, status=JobStatus.SUCCEEDED, progress=progress)

    def _help(self, job: JobRecord) -> bool:
        """Run the queued units of a shared job; move it on if none is left. True if it worked."""
        try:
            with storage_errors():
                study = open_study(job.spec, self._optuna_storage(), job.study_name)
                searching = job.status is JobStatus.SEARCHING
                queue = study if searching else open_confirmation(study, job.spec)
                _raise_unit_failure(queue)
                worked = has_waiting(queue)
                if worked:
                    self._run_units(job, study)
                _raise_unit_failure(queue)
                fail_stale_trials(queue)
                unfinished = has_unfinished(queue)
        except KeyboardInterrupt:
            self._requeue(job)
            raise
        except StorageUnavailableError:
            raise
        except Exception as exc:  # the job's own error (its data, its model): fail it
            lease = self._claim(job.id)
            if lease is not None:
                self._fail(lease, exc)
            return True
        if unfinished:
            return worked
        lease = self._claim(job.id)
        if lease is not None:
            self._exclusive(lease)
            return True
        return worked

    def _run_units(self, job: JobRecord, study: optuna.Study) -> None:
        setup = self._setup(job)
        searching = job.status is JobStatus.SEARCHING
        queue = study if searching else open_confirmation(study, job.spec)
        options: dict[str, Any] = {
            "artifact_dir": self.artifact_dir,
            "wait_for_others": False,
            "progress": False,
            # a unit that failed for a reason of its own fails the job: no point going on
            "should_stop": lambda: self._has_ended(job.id) or unit_failure(queue) is not None,
        }
        _log(job.id, self.id, job.status.value, "helping")
        if job.status is JobStatus.SEARCHING:
            run_trials(study, setup, **options)
        else:
            run_confirmation(study, setup, **options)

    def _has_ended(self, job_id: str) -> bool:
        """Whether the job ended (was cancelled, or failed) while this worker ran its units."""
        ended = self.store.get(job_id).status.finished
        if ended:
            _log(job_id, self.id, "shared", "stopped", reason="the job has ended")
        return ended

    def _requeue(self, job: JobRecord) -> None:
        """Queue again the units this worker's interruption left FAILED."""
        study = open_study(job.spec, self._optuna_storage(), job.study_name)
        retried = requeue_interrupted(study) + requeue_interrupted(
            open_confirmation(study, job.spec)
        )
        _log(job.id, self.id, job.status.value, "interrupted", requeued=retried)

    def _hand_back(self, lease: Lease) -> None:
        try:
            self.store.release(lease)
            _log(lease.job_id, self.id, lease.status.value, "handed_back")
        except LRTuneError as exc:  # lost or unreachable: the lease expires on its own
            _log(lease.job_id, self.id, lease.status.value, "hand_back_failed", reason=str(exc))

    def _fail(self, lease: Lease, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        try:
            self.store.release(lease, status=JobStatus.FAILED, error=reason)
            _log(lease.job_id, self.id, lease.status.value, "failed", reason=reason)
        except LeaseLost:
            _log(lease.job_id, self.id, lease.status.value, "abandoned", reason=reason)

    def _setup(self, job: JobRecord) -> TrainingSetup:
        """The job's model and data on this worker's device, kept for the last few jobs."""
        if job.id not in self._setups:
            if len(self._setups) >= SETUPS_KEPT:
                del self._setups[next(iter(self._setups))]  # the oldest
            self._setups[job.id] = TrainingSetup.from_spec(job.spec, self.device)
        return self._setups[job.id]

    def _optuna_storage(self) -> optuna.storages.BaseStorage:
        if self._storage is None:
            settings = self.store.settings
            self._storage = open_storage(
                self.store.url,
                heartbeat_interval=settings.trial_heartbeat_s,
                grace_period=settings.trial_grace_s,
            )
        return self._storage

    def _provenance(self, job: JobRecord, study: optuna.Study) -> Provenance:
        bounds = stored_bounds(study)
        return Provenance(
            lrtune_version=__version__,
            rule=SUGGESTION_RULE,
            lr_min=bounds.low,
            lr_max=bounds.high,
            device=self.device,
            search=job.spec.search,
        )


def _raise_unit_failure(queue: optuna.Study) -> None:
    """Raise :class:`TrialFailed` if a unit of ``queue`` failed for a reason of its own.

    Such a unit is not retried, so its job would end short of its budget: the job fails with
    the unit's reason instead (as it does when its range test raises).
    """
    failure = unit_failure(queue)
    if failure is not None:
        raise TrialFailed(failure)


def _progress(job: JobRecord, study: optuna.Study) -> JobProgress:
    """The job's progress as its studies hold it now."""
    trials = study.get_trials(deepcopy=False)
    units = open_confirmation(study, job.spec).get_trials(deepcopy=False)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    update: dict[str, Any] = {
        "trials_done": sum(t.state in finished for t in trials),
        "confirmations_done": sum(u.state in finished for u in units),
    }
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        update["best_value"] = study.best_value
    return job.progress.model_copy(update=update)


def _log(job_id: str, worker_id: str, phase: str, event: str, **fields: Any) -> None:
    """One structured line per state change: job, worker, phase, event, and its details."""
    details = " ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
    )
    logger.info("job=%s worker=%s phase=%s event=%s %s", job_id, worker_id, phase, event, details)


@contextmanager
def stop_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Turn the first of ``signals`` into a KeyboardInterrupt in the main thread; ignore the rest.

    The interrupt abandons the current unit (see the module); a second signal while the worker
    cleans up is ignored, so the hand-back completes.
    """
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        if not received:
            received.append(signum)
            logger.info("event=signal signal=%s: stopping", signal.Signals(signum).name)
            raise KeyboardInterrupt
        logger.info("event=signal signal=%s: already stopping", signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, handle) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
