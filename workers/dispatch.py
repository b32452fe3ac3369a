"""A worker with children: handing its pool's children units of shared jobs.

With ``concurrency`` N > 1 the units run in N child processes (:mod:`lrtune.workers.pool`, one
unit per task), and the worker's own process keeps the heartbeat and every lease. A
:class:`Dispatcher` is that process's side of the pool: each step it takes in the children's
outcomes (failing the jobs whose units failed), lets the worker claim an exclusive phase,
and hands each free child one queued unit of the oldest shared job that has queued units,
no more than the job's ``search.max_parallel`` leaves room for; a job whose queue is done
(nothing queued or running anywhere) is moved on. During a range test the worker keeps
handing out units from the range test's step callback (:meth:`Dispatcher.keep_busy`).

A child that dies is replaced, and its trial is retried through Optuna's heartbeat: the
dispatcher counts its job as busy until that trial has had time to go stale, so a worker with
``once`` waits for the retry before it leaves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

from lrtune._optuna import fail_stale_trials, has_unfinished, storage_errors
from lrtune.exceptions import StorageUnavailableError
from lrtune.jobs import JobRecord, JobStatus, JobStore
from lrtune.search import JobSearch, Phase
from lrtune.training import StopRequested, stop_listener, stop_requested
from lrtune.workers.pool import ChildConfig, UnitOutcome, UnitPool

logger = logging.getLogger("lrtune.workers")


class WorkerSide(Protocol):
    """What a dispatcher asks of its worker (:class:`lrtune.workers.loop.Worker`)."""

    id: str
    store: JobStore
    device: str
    poll_s: float

    def take_exclusive(self, job_id: str | None = None) -> str | None: ...

    def move_on(self, job: JobRecord) -> bool: ...

    def fail_job(self, job_id: str, reason: str) -> None: ...

    def search(self, job: JobRecord) -> JobSearch: ...


@contextmanager
def children(
    worker: WorkerSide,
    config: ChildConfig,
    concurrency: int,
    runner: Callable[[ChildConfig, str], Callable[[JobRecord], UnitOutcome]],
) -> Iterator[Dispatcher]:
    """A pool of ``concurrency`` children running ``runner``'s tasks, and its dispatcher,
    while in the ``with``.

    A requested stop reaches the children at once; leaving the ``with`` lets their units
    stop cleanly, and a second signal (or an error) stops them at once.
    """
    pool = UnitPool(concurrency, config, runner)
    pool.start()
    try:
        with stop_listener(pool.stop):  # a signal reaches the children at once
            yield Dispatcher(worker, pool)
    except BaseException as exc:  # a second signal (or a bug): stop the children at once
        pool.stop(now=not isinstance(exc, StopRequested))
        pool.close()
        raise
    else:
        if stop_requested():
            pool.stop()
        try:
            pool.close()
        except KeyboardInterrupt:
            pool.stop(now=True)
            pool.close()
            raise


class Dispatcher:
    """The worker process's side of its pool of children (see the module)."""

    def __init__(self, worker: WorkerSide, pool: UnitPool) -> None:
        self.worker = worker
        self.pool = pool
        self._orphans: dict[str, float] = {}  # job id -> when its dead child's unit is stale
        self._serviced_at = 0.0

    def running(self) -> list[JobRecord]:
        """The jobs whose units the children run now."""
        return self.pool.running()

    def step(self, may_start: bool, worked: set[str]) -> str | None:
        """Take in the children's outcomes, claim an exclusive phase, hand out units.

        Returns a job id while any unit is running (waiting for the children is work for their
        jobs), so ``once`` and ``max_jobs`` end the worker's loop only when the children are
        idle; None when there is nothing to do.
        """
        pool, worker = self.pool, self.worker
        self._take_outcomes(pool.collect())
        if may_start:
            claimed = worker.take_exclusive()
            if claimed is not None:
                return claimed
        moved = self._hand_out(may_start, worked, move_on=True)
        if moved is not None:
            return moved
        now = time.monotonic()
        self._orphans = {job: until for job, until in self._orphans.items() if until > now}
        busy = [job.id for job in pool.running()] + list(self._orphans)
        if busy:  # wait for the children, or for a dead child's unit to go stale and be retried
            self._take_outcomes(pool.collect(timeout_s=worker.poll_s))
            return busy[0]
        return None

    def keep_busy(self, may_start: bool, worked: set[str]) -> None:
        """Hand out units while the worker runs a range test (at most every ``poll_s``)."""
        if time.monotonic() - self._serviced_at < self.worker.poll_s:
            return
        self._serviced_at = time.monotonic()
        try:
            self._take_outcomes(self.pool.collect())
            if self.pool.free():
                self._hand_out(may_start, worked, move_on=False)
        except StorageUnavailableError as exc:  # the range test's own writes will tell
            logger.warning("worker=%s event=store_unavailable error=%s", self.worker.id, exc)

    def _hand_out(self, may_start: bool, worked: set[str], *, move_on: bool) -> str | None:
        """Give free children units of the oldest shared jobs; move on a job with none left
        (if ``move_on``). Return the id of a job moved on, if any."""
        worker = self.worker
        for job in worker.store.shared_jobs(device=worker.device):
            if not self.pool.free():
                break
            if not (may_start or job.id in worked):
                continue
            handed, finished = self._dispatch(job)
            if handed:
                worked.add(job.id)
            elif finished and move_on and worker.move_on(job):
                worked.add(job.id)
                return job.id
        return None

    def _dispatch(self, job: JobRecord) -> tuple[int, bool]:
        """Hand free children one queued unit each of ``job``, no more than it has queued;
        return how many, and whether the job's queue is done (nothing queued or running
        anywhere, nor handed out by this worker, so it may move on)."""
        pool = self.pool
        try:
            with storage_errors():
                search, phase = self.worker.search(job), phase_of(job)
                queue = search.queue(phase)
                fail_stale_trials(queue)
                search.check_units(phase)
                handed = 0
                # Children already on the job may have popped their units: counting them
                # against the queue would leave a free child idle beside a queued unit. One
                # handed a unit that another took meanwhile finds the queue empty, and is free
                # again.
                wanted = search.startable(phase)
                while handed < wanted and pool.free() and pool.submit(job):
                    handed += 1
                if handed:
                    log_event(job.id, self.worker.id, job.status.value, "handed_out", units=handed)
                    return handed, False
                finished = not pool.in_flight(job.id) and not has_unfinished(queue)
        except StorageUnavailableError:
            raise
        except Exception as exc:  # the job's own error (its stored spec, its study): fail it
            self.worker.fail_job(job.id, one_line(exc))
            return 0, False
        return 0, finished

    def _take_outcomes(self, outcomes: list[UnitOutcome]) -> None:
        """Fail the jobs whose units failed in a child; the rest needs nothing here."""
        worker = self.worker
        for outcome in outcomes:
            if outcome.died:  # its trial goes stale after Optuna's grace period, then retried
                grace_s = 3 * worker.store.settings.trial_heartbeat_s + 2 * worker.poll_s
                self._orphans[outcome.job_id] = time.monotonic() + grace_s
            elif outcome.error is not None:
                worker.fail_job(outcome.job_id, outcome.error)
            elif outcome.storage_error is not None:
                logger.warning(
                    "job=%s worker=%s event=store_unavailable error=%s",
                    outcome.job_id,
                    worker.id,
                    outcome.storage_error,
                )


def phase_of(job: JobRecord) -> Phase:
    """The phase whose units a shared job's workers run: its search, or its confirmation."""
    return "search" if job.status is JobStatus.SEARCHING else "confirmation"


def one_line(exc: BaseException) -> str:
    """Why a job failed, on one line: the error's class and first line."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def log_event(job_id: str, worker_id: str, phase: str, event: str, **fields: object) -> None:
    """One structured line per state change: job, worker, phase, event, and its details."""
    details = " ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
    )
    logger.info("job=%s worker=%s phase=%s event=%s %s", job_id, worker_id, phase, event, details)
