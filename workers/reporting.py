"""What a worker tells the job store as it works: progress, the range test, spent checkpoints.

- :class:`RangeTestProgress` is the range test's step callback while a worker holds a
  ``finding`` job: it checks the lease at every step, counts the steps and keeps each seed's
  smoothed loss (the range test's own bias-corrected moving average); a daemon thread
  reports the count and the new ``(lr, smoothed loss, seed)`` points, under the lease, once
  every ``interval_s`` seconds (default :data:`PROGRESS_INTERVAL_S`) while it moves, so the
  sweep never waits for the database and the dashboard draws the curve as it grows.
- :class:`UnitProgress` reports a shared job's finished trials (and the best value so far)
  or confirmation runs after each unit this worker finishes, without a lease: the store
  merges reports (:meth:`~lrtune.jobs.JobStore.record_progress`), so a slower worker's stale
  count never undoes a faster one's.
- :func:`save_range_test` stores the job's completed range test and LR bounds, once.

A progress report that meets an unavailable store is logged and skipped: progress is for the
people watching, and the lease (the heartbeat's business) decides whether the work goes on.

Example:
    >>> import tempfile, pathlib, time
    >>> from lrtune.jobs import JobStore
    >>> from lrtune.spec import JobSpec
from lrtune.workers.periodic import Periodic
    >>> store = JobStore(f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}")
    >>> spec = JobSpec.model_validate({"model": {"name": "logreg"}, "dataset": {"name": "wine"},
    ...                                "range_test": {"seeds": 2, "num_iter": 50}})
    >>> job = store.submit(spec)
    >>> lease = store.claim("w1", lease_s=30)
    >>> with RangeTestProgress(store, lease, spec, interval_s=0.05) as report:
    ...     for step in range(10):  # what find_lr calls: step, lr, one loss per seed
    ...         report(step, 1e-3, [2.3, 2.2])
    ...     time.sleep(0.5)  # the reporting thread writes within interval_s
    >>> store.get(job.id).progress.range_test_steps_done, report.total
    (20, 100)
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import optuna

from lrtune._optuna import FINISHED, best_value, trial_counts
from lrtune.exceptions import ConflictError, LeaseLost, StorageUnavailableError
from lrtune.jobs import JobProgress, JobRecord, JobStatus, JobStore, Lease, Provenance
from lrtune.search import open_confirmation, stored_bounds, stored_range_test
from lrtune.spec import JobSpec
from lrtune.workers.periodic import Periodic

logger = logging.getLogger("lrtune.workers")

PROGRESS_INTERVAL_S = 0.5
"""Seconds between two range-test progress writes of one worker (at most 2 a second)."""


class RangeTestProgress:
    """A range-test step callback: check the lease, count steps; a thread reports them.

    Use it in a ``with`` block around the range test: the reporting thread runs inside it.
    Steps are counted over the seeds (``num_iter`` x ``seeds`` in all): a vectorised sweep
    reports one loss per seed at each step, a sequential one a single loss per call.
    ``check`` (the heartbeat's ``check``) raises :class:`~lrtune.exceptions.LeaseLost` once the
    lease is lost, which stops the range test; a report that finds the lease lost makes the
    next step raise it too. The last count is the caller's to report (the worker's release
    reports the completed range test).
    """

    def __init__(
        self,
        store: JobStore,
        lease: Lease,
        spec: JobSpec,
        check: Callable[..., None] | None = None,
        *,
        interval_s: float = PROGRESS_INTERVAL_S,
    ) -> None:
        self.store = store
        self.lease = lease
        self.check = check
        self.interval_s = interval_s
        self.total = spec.range_test.num_iter * spec.range_test.seeds
        self.done = 0
        self._reported = 0
        self._curves = _LiveCurves(spec.range_test.smooth_beta, spec.range_test.diverge_threshold)
        self._lost: LeaseLost | None = None
        self._reports = Periodic(f"steps-{lease.job_id[:8]}", interval_s, self._beat)

    def __enter__(self) -> RangeTestProgress:
        self._reports.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._reports.stop()
        if exc_type is None and self.done != self._reported:
            self.flush()  # the last steps and points: the live curve ends where the test did

    def __call__(self, step: int, lr: float, losses: Sequence[float]) -> None:
        if self.check is not None:
            self.check(step, lr, losses)
        if self._lost is not None:
            raise LeaseLost(str(self._lost))
        self.done = min(self.done + len(losses), self.total)
        self._curves.add(step, lr, losses)

    def _beat(self) -> float | None:
        """Report the steps if they moved; None (no more reports) once the lease is lost."""
        if self.done != self._reported:
            self.flush()
        return None if self._lost is not None else self.interval_s

    def flush(self) -> None:
        """Report the steps done so far (the thread does, every ``interval_s`` they moved)."""
        done = self.done
        report = JobProgress(range_test_steps_done=done, range_test_steps_total=self.total)
        points = self._curves.take()
        try:
            self.store.record_progress(self.lease.job_id, report, lease=self.lease, points=points)
        except LeaseLost as exc:
            self._lost = exc
        except StorageUnavailableError as exc:
            logger.warning("job=%s event=progress_failed error=%s", self.lease.job_id, exc)
        else:
            self._reported = done


class _LiveCurves:
    """Each seed's smoothed loss as the range test reports it, for the live feed.

    The same bias-corrected exponential moving average as the range test's own curves
    (``beta`` is ``range_test.smooth_beta``). A vectorised sweep reports every seed at each
    step; a sequential one reports one seed's sweep after another, its step counting from 0
    again for the next seed. Points past a seed's divergence (smoothed loss above
    ``diverge_threshold`` times its best) or not finite are left out: JSON has no infinity,
    and the stored range test, complete, replaces the live curve.
    """

    def __init__(self, beta: float, diverge_threshold: float) -> None:
        self.beta = beta
        self.diverge_threshold = diverge_threshold
        self._seed = 0  # sequential sweeps: the seed whose sweep is being reported
        self._last_step = -1
        self._avg: dict[int, float] = {}
        self._count: dict[int, int] = {}
        self._best: dict[int, float] = {}
        self._new: list[tuple[float, float, int]] = []
        self._lock = threading.Lock()

    def add(self, step: int, lr: float, losses: Sequence[float]) -> None:
        if len(losses) == 1:  # one seed's sweep after another (or a single seed)
            if step <= self._last_step:
                self._seed += 1
            seeds: Sequence[int] = [self._seed]
        else:
            seeds = range(len(losses))
        self._last_step = step
        for seed, loss in zip(seeds, losses, strict=True):
            smoothed = self._smooth(seed, loss)
            if not math.isfinite(smoothed):
                continue
            best = self._best[seed] = min(self._best.get(seed, smoothed), smoothed)
            if best > 0 and smoothed > self.diverge_threshold * best:
                continue
            with self._lock:
                self._new.append((lr, smoothed, seed))

    def take(self) -> list[tuple[float, float, int]]:
        """The points added since the last call."""
        with self._lock:
            new, self._new = self._new, []
        return new

    def _smooth(self, seed: int, loss: float) -> float:
        count = self._count[seed] = self._count.get(seed, 0) + 1
        avg = self._avg[seed] = self.beta * self._avg.get(seed, 0.0) + (1 - self.beta) * loss
        return avg / (1 - self.beta**count)


class UnitProgress:
    """After each finished unit of a shared job: report what its study holds now.

    While ``searching``: the finished trials and the best value so far; while
    ``confirming``: the finished confirmation runs. :meth:`record` returns the job's status
    at the report (None if the store could not be reached), so the caller learns whether it
    was cancelled without another read.
    """

    def __init__(self, store: JobStore, job: JobRecord, study: optuna.Study) -> None:
        self.store = store
        self.job = job
        self.searching = job.status is JobStatus.SEARCHING
        spec = job.spec
        self.queue = study if self.searching else open_confirmation(study, spec.search, spec.seed)

    def record(self) -> JobStatus | None:
        counts = trial_counts(self.queue)  # one aggregate, not the finished trials whole
        finished = sum(counts[state] for state in FINISHED)
        report: dict[str, Any]
        if self.searching:
            report = {"trials_done": finished, "best_value": best_value(self.queue)}
        else:
            report = {"confirmations_done": finished}
        try:
            return self.store.record_progress(self.job.id, JobProgress(**report))
        except StorageUnavailableError as exc:
            logger.warning("job=%s event=progress_failed error=%s", self.job.id, exc)
            return None


def save_range_test(
    store: JobStore, lease: Lease, study: optuna.Study, provenance: Provenance
) -> None:
    """Store the prepared study's range test and bounds under ``lease``, unless stored.

    A holder that stored them and died before moving the job on left them there; the study
    keeps the one range test, so what is stored is the same.
    """
    try:
        store.save_range_test(
            lease.job_id, stored_range_test(study), stored_bounds(study), provenance, lease=lease
        )
    except ConflictError:
        logger.info(
            "job=%s worker=%s phase=finding event=range_test_exists",
            lease.job_id,
            lease.worker_id,
        )
