"""The worker loop behind ``lrtune worker``: take jobs from the job store and do their work.

A :class:`Worker` repeats one step until it is stopped or, with ``once``, finds nothing to do:

1. :meth:`~lrtune.jobs.JobStore.claim` a job's exclusive phase. A ``finding`` job gets its
   range test and its prepared study (:meth:`lrtune.search.JobSearch.prepare`, on the study the
   store named, ``JobRecord.study_name``), then moves on to ``searching`` and the lease is
   released. A ``confirming`` job whose finisher died gets its recommendation written.
2. Otherwise help the oldest job in a shared phase (:meth:`~lrtune.jobs.JobStore.shared_jobs`)
   that has a queued unit and fewer running than its ``search.max_parallel``: search trials
   while ``searching``, confirmation runs while ``confirming``, popped from the job's Optuna
   queue (no lease: Optuna's heartbeat covers a dead worker's trial) through its
   :class:`~lrtune.search.UnitGate` (``max_parallel`` under the store's unit lock; the search's
   ``target`` and ``timeout_s`` close it early). The worker that finds a job's queue empty
   and nothing running claims the job by id: a ``searching`` job moves on to ``confirming``;
   a ``confirming`` job gets its recommendation written (:meth:`lrtune.search.JobSearch.recommend`,
   saved under the lease) and succeeds.

While a worker holds a lease, a daemon thread renews it every ``lease_s / 3`` seconds, so a
long training step never lets it expire. A renewal that meets
:class:`~lrtune.exceptions.LeaseLost` (the lease expired and another worker took the job, or
the job was cancelled) stops the range test at its next step, and nothing more is written;
so does a lease whose last successful renewal is older than ``lease_s`` (the store was out of
reach for longer than the lease: another worker may hold the job now). The range test's study
writes happen right after a successful renewal (``prepare_study``'s ``fence``).
An unavailable store is retried with exponential backoff and jitter (``Settings.retry_*``,
:mod:`lrtune.workers.backoff`), by the loop and by the lease's renewals.
Progress goes to the store as work goes (:mod:`lrtune.workers.reporting`): range-test steps
a few times a second, and after each finished unit its trials or confirmation runs done; the
range test and its LR bounds are stored before the job starts searching, and a succeeded
job's checkpoints are removed.
A unit of a job that is cancelled (or fails) while it runs stops within
``Settings.unit_check_s`` seconds (``LRTUNE_UNIT_CHECK_S``; it looks within its epochs too,
and reads the job at most every ``ENDED_POLL_S`` seconds), recorded PRUNED with the reason, on
every worker and child on the job; the rest of the queue is left, and what finished stays readable.
An error inside a phase fails the job with the reason, and so does a unit that fails for a
reason of its own (:func:`lrtune.search.unit_failure`): it is not retried, and the job must not
succeed short of its budget.

Presence: :meth:`Worker.run` registers the worker in the store's workers table (host, device,
pid, version, concurrency, threads, and the plugin registry this process serves), beats its
heartbeat every ``Settings.worker_heartbeat_s`` seconds from a daemon thread (separate from
the per-lease heartbeat) with what it holds (``lrtune workers`` shows it), and marks itself
stopped when it exits cleanly.

Concurrency: with ``concurrency`` 1 everything runs in this process, as above. With N > 1 the
units run in N child processes (:mod:`lrtune.workers.pool`, one unit per task): this process
keeps the heartbeat and every lease (claims, range tests, moving jobs on, recommendations) and
hands each free child one queued unit of the oldest shared job that has queued units; during
a range test it keeps handing out units from the range test's step callback. A child that
dies is replaced, and its trial is retried through Optuna's heartbeat (with ``once``, the
worker waits for that trial to go stale before it leaves). While a range test runs here,
N + 1 units train on the device.

Threads: :func:`threads_per_unit` picks the torch threads of each unit: ``--threads`` (or
``LRTUNE_TORCH_THREADS``) if given, else the cores this process may use divided by the
concurrency (at least 1), and says why in the log. Several workers on one machine each take
every core that way: give each ``--threads``.

Stopping: the first SIGTERM or SIGINT (:func:`stop_on_signals`) asks for a clean stop
(:func:`lrtune.training.request_stop`): a running trial or confirmation run stops at its next
epoch boundary or, within an epoch, within ``Settings.unit_check_s`` seconds, the checkpoint of
its last finished epoch on disk; Optuna records it FAILED as interrupted and the worker queues
it again, so another worker resumes it from the checkpoint (``TrainingRun.resumed_from``; an
epoch it stopped in is redone from its start); a range test stops at its next step and its
lease is handed back (the next claimer re-runs it from the start); no new unit starts; children
stop the same way; the worker exits with status 0. A second signal stops at once (the unit is
abandoned mid-epoch, still recorded as interrupted and queued again); later ones are ignored so
that the hand-back completes.

Example:
    >>> import tempfile, pathlib
    >>> from lrtune.jobs import JobStore
    >>> store = JobStore(f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}")
    >>> worker = Worker(store, device="cpu", worker_id="w1")
    >>> worker.run(once=True)  # nothing queued: returns at once, having worked on no job
    0
    >>> [(w.id, w.live, w.stopped_at is not None) for w in store.list_workers(live_only=False).data]
    [('w1', False, True)]
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any

import optuna
from optuna.trial import TrialState

from lrtune import __version__
from lrtune._optuna import fail_stale_trials, has_unfinished, storage_errors, trial_counts
from lrtune.device import resolve_device
from lrtune.exceptions import (
    ConflictError,
    LeaseLost,
    LRTuneError,
    NotFoundError,
    StorageUnavailableError,
    UnreadableRecordError,
)
from lrtune.footprint import check_device
from lrtune.jobs import (
    JobProgress,
    JobRecord,
    JobStatus,
    JobStore,
    Lease,
    PluginRegistry,
    Provenance,
    WorkerActivity,
    WorkerRegistration,
)
from lrtune.jobs.settings import StoreSettings
from lrtune.jobs.store import remove_checkpoints
from lrtune.jobs.uploads import UPLOADED
from lrtune.search import (
    JobSearch,
    Phase,
    TrialFailed,
    UnitGate,
    UnitOptions,
    stop_progress,
    timeout_passed,
    unit_failure,
)
from lrtune.spec import JobSpec
from lrtune.storage import open_storage
from lrtune.training import (
    StopRequested,
    TrainingSetup,
    check_stop,
    request_stop,
    stop_listener,
    stop_requested,
    wait_for_stop,
)
from lrtune.workers.backoff import Backoff
from lrtune.workers.pool import ChildConfig, UnitOutcome, UnitPool
from lrtune.workers.reporting import RangeTestProgress, UnitProgress, save_range_test

logger = logging.getLogger("lrtune.workers")

DEFAULT_LEASE_S = 60.0
"""Seconds a lease lasts without renewal: how long a dead worker's exclusive phase waits."""
IDLE_POLL_S = 1.0
"""Seconds an idle worker waits before looking for work again."""
ENDED_POLL_S = 0.5
"""Seconds between a running unit's reads of whether its job was cancelled (or failed)."""
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


class _Presence:
    """The worker's row in the workers table, beaten every ``interval_s`` from a daemon thread.

    Registers in ``__enter__``; each beat records ``doing()``; a beat that finds the row gone
    registers again, one that meets an unavailable store is retried at the next beat;
    ``__exit__`` marks the worker stopped.
    """

    def __init__(
        self,
        store: JobStore,
        registration: WorkerRegistration,
        doing: Callable[[], list[WorkerActivity]],
    ) -> None:
        self.store = store
        self.registration = registration
        self.doing = doing
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat_until_stopped, name="worker-heartbeat", daemon=True
        )

    def __enter__(self) -> _Presence:
        self.store.register_worker(self.registration)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.store.stop_worker(self.registration.id)
        except LRTuneError as exc:  # unreachable: its heartbeat ages out on its own
            logger.warning("worker=%s event=stop_unrecorded error=%s", self.registration.id, exc)

    def _beat_until_stopped(self) -> None:
        worker_id = self.registration.id
        while not self._stop.wait(self.registration.heartbeat_s):
            try:
                self.store.beat(worker_id, self.doing())
            except NotFoundError:
                logger.warning("worker=%s event=registered_again", worker_id)
                self._register_again()
            except StorageUnavailableError as exc:
                logger.warning("worker=%s event=beat_failed error=%s", worker_id, exc)

    def _register_again(self) -> None:
        try:
            self.store.register_worker(self.registration)
        except LRTuneError as exc:
            logger.warning("worker=%s event=beat_failed error=%s", self.registration.id, exc)


def open_store(url: str | None, wait_s: float) -> JobStore:
    """The job store at ``url``, waited for up to ``wait_s`` seconds while it is unavailable.

    A worker may start before its database does (a fleet's PostgreSQL restarting, the migration
    job not yet done): each failed try is logged and retried after a backoff (the store
    settings' ``retry_*``), until ``wait_s`` has passed. ``wait_s=0`` tries once.

    Raises:
        StorageUnavailableError: the store still cannot be opened after ``wait_s`` seconds.
    """
    settings = StoreSettings.from_env()
    backoff = Backoff(settings.retry_initial_s, max(settings.retry_max_s, settings.retry_initial_s))
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return JobStore(url, settings=settings)
        except StorageUnavailableError as exc:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise
            wait = min(backoff.next_s(), left_s)
            logger.warning("event=store_unavailable retry_in=%.1fs error=%s", wait, exc)
            time.sleep(wait)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_unit(concurrency: int, threads: int | None = None) -> tuple[int, str]:
    """Torch CPU threads for each unit of a worker running ``concurrency`` units, and why.

    ``threads`` (``--threads``) wins, then ``LRTUNE_TORCH_THREADS``; otherwise the available
    cores divided among the units, at least 1. That default assumes the worker has the machine
    to itself: several workers on one machine should each be given ``--threads``.

    Example:
        >>> threads_per_unit(2, threads=3)
        (3, '--threads')
    """
    if threads is not None:
        return threads, "--threads"
    env = os.environ.get("LRTUNE_TORCH_THREADS")
    if env:
        return int(env), "LRTUNE_TORCH_THREADS"
    cores = available_cores()
    chosen = max(1, cores // concurrency)
    why = (
        f"{cores} cores / concurrency {concurrency}; several workers on one machine: "
        "give each --threads"
    )
    return chosen, why


class Worker:
    """One worker process's loop over the job store (see the module).

    Args:
        store: the job store; the jobs' Optuna studies live in the same database.
        device: where it trains (``auto``, ``cpu``, ``cuda:N``).
        lease_s: how long a lease lasts without renewal.
        worker_id: its name in the store (default: ``host-pid``).
        artifact_dir: where trials checkpoint each epoch, so that an interrupted trial resumes
            (a directory every worker that may resume it can read), one folder per job;
            None: the store's ``Settings.artifact_dir`` (``LRTUNE_ARTIFACT_DIR``).
        poll_s: how long it waits, idle, before looking for work again.
        concurrency: units run at once; above 1, in that many child processes.
        threads: torch CPU threads per unit (children pin it; reported in the workers table;
            default: what this process's torch uses).
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
        concurrency: int = 1,
        threads: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.store = store
        self.device = str(resolve_device(device))
        self.lease_s = lease_s
        self.id = (worker_id or f"{socket.gethostname()}-{os.getpid()}")[:64]
        self.artifact_dir = Path(artifact_dir or store.settings.artifact_dir)
        self.poll_s = poll_s
        self.concurrency = concurrency
        self.threads = threads
        self._storage: optuna.storages.BaseStorage | None = None
        self._setups: dict[str, TrainingSetup] = {}
        self._pool: UnitPool | None = None
        self._holding: dict[str, WorkerActivity] = {}  # "lease", "unit": what it does here
        self._searches: dict[str, JobSearch] = {}  # the pool's dispatcher's, per job
        self._orphans: dict[str, float] = {}  # job id -> when its dead child's unit is stale
        self._serviced_at = 0.0
        self._worked: set[str] = set()  # the jobs run() has worked on, and its max_jobs
        self._max_jobs: int | None = None

    def run(self, *, max_jobs: int | None = None, once: bool = False) -> int:
        """Work until interrupted; return how many jobs it worked on.

        ``once``: return as soon as no job has work this worker may take. ``max_jobs``: work on
        at most that many distinct jobs, and return when they have none left for it.
        """
        worked: set[str] = set()
        self._worked, self._max_jobs = worked, max_jobs
        logger.info(
            "worker=%s event=started device=%s concurrency=%d threads=%s",
            self.id,
            self.device,
            self.concurrency,
            self.threads or torch_threads(),
        )
        backoff = self._backoff()
        try:
            with self._presence(), self._units():
                while not stop_requested():
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
                        wait_for_stop(wait)
                        continue
                    backoff.reset()
                    if job_id is not None:
                        worked.add(job_id)
                        continue
                    if once or not may_start:
                        break
                    wait_for_stop(self.poll_s)
        except KeyboardInterrupt:
            logger.info("worker=%s event=stopped reason=signal", self.id)
        else:
            reason = "signal" if stop_requested() else "no_work"
            logger.info("worker=%s event=stopped reason=%s jobs=%d", self.id, reason, len(worked))
        return len(worked)

    def run_unit(self, job: JobRecord) -> UnitOutcome:
        """Run one queued unit of a shared job here and say how it went (a pool child's task).

        An interruption (a requested stop, or SIGUSR1 from the parent) queues the unit again.
        """
        try:
            with storage_errors():
                ran = self._run_units(job, self._open_search(job), one=True)
        except KeyboardInterrupt:
            try:
                with storage_errors():
                    self._requeue(job)
            except StorageUnavailableError as exc:  # its trial goes stale and is retried
                _log(job.id, self.id, job.status.value, "requeue_failed", reason=str(exc))
            return UnitOutcome(job_id=job.id, interrupted=True)
        except StorageUnavailableError as exc:
            return UnitOutcome(job_id=job.id, storage_error=str(exc))
        except Exception as exc:  # the job's own error: the parent fails the job
            return UnitOutcome(job_id=job.id, error=_reason(exc))
        return UnitOutcome(job_id=job.id, ran=ran)

    @contextmanager
    def _presence(self) -> Iterator[None]:
        """This worker's row in the workers table, beaten while in the ``with``."""
        registration = WorkerRegistration(
            id=self.id,
            host=socket.gethostname(),
            device=self.device,
            pid=os.getpid(),
            version=__version__,
            concurrency=self.concurrency,
            threads=self.threads or torch_threads(),
            heartbeat_s=self.store.settings.worker_heartbeat_s,
            plugin_registry=PluginRegistry.of_this_process(),
        )
        with _Presence(self.store, registration, self._doing):
            yield

    def _doing(self) -> list[WorkerActivity]:
        """What this worker holds now: its lease, its in-process unit, its children's units."""
        doing = list(self._holding.values())
        if self._pool is not None:
            doing += [
                WorkerActivity(job_id=job.id, phase=job.status, lease=False)
                for job in self._pool.running()
            ]
        return doing

    @contextmanager
    def _units(self) -> Iterator[None]:
        """The pool of child processes while in the ``with`` (none with concurrency 1)."""
        if self.concurrency == 1:
            yield
            return
        config = ChildConfig(
            database_url=self.store.url,
            device=self.device,
            worker_id=self.id,
            lease_s=self.lease_s,
            artifact_dir=self.artifact_dir,
            threads=self.threads or torch_threads(),
            log_level=logger.getEffectiveLevel(),
        )
        self._pool = pool = UnitPool(self.concurrency, config, unit_runner)
        pool.start()
        try:
            with stop_listener(pool.stop):  # a signal reaches the children at once
                yield
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
        finally:
            self._pool = None

    def _backoff(self) -> Backoff:
        """Waits between tries of an unavailable store (``Settings.retry_*``)."""
        settings = self.store.settings
        return Backoff(
            settings.retry_initial_s, max(settings.retry_max_s, settings.retry_initial_s)
        )

    def _step(self, may_start: bool, worked: set[str]) -> str | None:
        """Do one piece of work; return the id of the job it was for, None if there was none."""
        if self._pool is not None:
            return self._pool_step(self._pool, may_start, worked)
        if may_start:
            lease = self._claim()
            if lease is not None:
                self._exclusive(lease)
                return lease.job_id
        for job in self.store.shared_jobs(device=self.device):
            if (may_start or job.id in worked) and self._help(job):
                return job.id
        return None

    def _pool_step(self, pool: UnitPool, may_start: bool, worked: set[str]) -> str | None:
        """:meth:`_step` with children: take in their outcomes, claim, hand out units.

        Returns a job id while any unit is running (waiting for the children is work for their
        jobs), so ``once`` and ``max_jobs`` end the loop only when the children are idle.
        """
        self._take_outcomes(pool.collect())
        if may_start:
            lease = self._claim()
            if lease is not None:
                self._exclusive(lease)
                return lease.job_id
        moved = self._hand_out(pool, may_start, worked, move_on=True)
        if moved is not None:
            return moved
        now = time.monotonic()
        self._orphans = {job: until for job, until in self._orphans.items() if until > now}
        busy = [job.id for job in pool.running()] + list(self._orphans)
        if busy:  # wait for the children, or for a dead child's unit to go stale and be retried
            self._take_outcomes(pool.collect(timeout_s=self.poll_s))
            return busy[0]
        return None

    def _hand_out(
        self, pool: UnitPool, may_start: bool, worked: set[str], *, move_on: bool
    ) -> str | None:
        """Give free children units of the oldest shared jobs; move on a job with none left
        (if ``move_on``). Return the id of a job moved on, if any."""
        for job in self.store.shared_jobs(device=self.device):
            if not pool.free():
                break
            if not (may_start or job.id in worked):
                continue
            handed, finished = self._dispatch(pool, job)
            if handed:
                worked.add(job.id)
            elif finished and move_on and self._move_on(job):
                worked.add(job.id)
                return job.id
        return None

    def _dispatch(self, pool: UnitPool, job: JobRecord) -> tuple[int, bool]:
        """Hand free children one queued unit each of ``job``, no more than it has queued;
        return how many, and whether the job's queue is done (nothing queued or running
        anywhere, nor handed out by this worker, so it may move on)."""
        try:
            with storage_errors():
                queue = self._search(job).queue(_phase(job))
                fail_stale_trials(queue)
                _raise_unit_failure(queue)
                handed = 0
                # Children already on the job may have popped their units: counting them
                # against the queue would leave a free child idle beside a queued unit. One
                # handed a unit that another took meanwhile finds the queue empty, and is free
                # again.
                wanted = self._waiting_units(job, queue)
                while handed < wanted and pool.free() and pool.submit(job):
                    handed += 1
                if handed:
                    _log(job.id, self.id, job.status.value, "handed_out", units=handed)
                    return handed, False
                finished = not pool.in_flight(job.id) and not has_unfinished(queue)
        except StorageUnavailableError:
            raise
        except Exception as exc:  # the job's own error (its stored spec, its study): fail it
            self._fail_job(job.id, _reason(exc))
            return 0, False
        return 0, finished

    def _take_outcomes(self, outcomes: list[UnitOutcome]) -> None:
        """Fail the jobs whose units failed in a child; the rest needs nothing here."""
        for outcome in outcomes:
            if outcome.died:  # its trial goes stale after Optuna's grace period, then retried
                grace_s = 3 * self.store.settings.trial_heartbeat_s + 2 * self.poll_s
                self._orphans[outcome.job_id] = time.monotonic() + grace_s
            elif outcome.error is not None:
                self._fail_job(outcome.job_id, outcome.error)
            elif outcome.storage_error is not None:
                logger.warning(
                    "job=%s worker=%s event=store_unavailable error=%s",
                    outcome.job_id,
                    self.id,
                    outcome.storage_error,
                )

    def _keep_children_busy(self) -> None:
        """Hand out units while this process runs a range test (at most every ``poll_s``)."""
        pool = self._pool
        if pool is None or time.monotonic() - self._serviced_at < self.poll_s:
            return
        self._serviced_at = time.monotonic()
        try:
            self._take_outcomes(pool.collect())
            if pool.free():
                worked, max_jobs = self._worked, self._max_jobs
                may_start = max_jobs is None or len(worked) < max_jobs
                self._hand_out(pool, may_start, worked, move_on=False)
        except StorageUnavailableError as exc:  # the range test's own writes will tell
            logger.warning("worker=%s event=store_unavailable error=%s", self.id, exc)

    def _search(self, job: JobRecord) -> JobSearch:
        """The job's search, opened once per job by the dispatcher."""
        if job.id not in self._searches:
            if len(self._searches) >= 4 * SETUPS_KEPT:
                del self._searches[next(iter(self._searches))]
            self._searches[job.id] = self._open_search(job)
        return self._searches[job.id]

    def _open_search(self, job: JobRecord) -> JobSearch:
        return JobSearch.open(job.spec, self._optuna_storage(), job.study_name)

    def _waiting_units(self, job: JobRecord, queue: optuna.Study) -> int:
        """How many queued units of ``job`` this worker may start now: those queued, no more
        than ``search.max_parallel`` leaves room for (a read; the pops themselves are bounded
        exactly, under the store's unit lock: :class:`~lrtune.search.UnitGate`)."""
        counts = trial_counts(queue)
        room = job.spec.search.max_parallel - counts[TrialState.RUNNING]
        return max(0, min(counts[TrialState.WAITING], room))

    def _move_on(self, job: JobRecord) -> bool:
        """Claim a shared job whose queue is done and move it on; True if this worker did."""
        if stop_requested():  # the next worker will
            return False
        lease = self._claim(job.id)
        if lease is None:
            return False
        self._exclusive(lease)
        return True

    def _fail_job(self, job_id: str, reason: str) -> None:
        lease = self._claim(job_id)
        if lease is not None:
            self._fail_with(lease, reason)

    def _claim(self, job_id: str | None = None) -> Lease | None:
        lease = self.store.claim(self.id, self.lease_s, job_id=job_id, device=self.device)
        if lease is not None:
            _log(lease.job_id, self.id, lease.status.value, "claimed", attempts=lease.attempts)
        return lease

    def _exclusive(self, lease: Lease) -> None:
        """Run the phase ``lease`` holds; fail the job on an error, hand it back on a signal."""
        try:
            job = self.store.get(lease.job_id)
        except UnreadableRecordError as exc:  # stored before lrtune refused its spec: no one can
            self._fail_with(lease, str(exc))
            return
        started = time.monotonic()
        self._holding["lease"] = WorkerActivity(job_id=job.id, phase=lease.status, lease=True)
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
        finally:
            self._holding.pop("lease", None)

    def _find(self, job: JobRecord, lease: Lease, heartbeat: _Heartbeat) -> None:
        """The range test and the study's queues; then the job is ``searching``."""
        setup = self._setup(job)
        with RangeTestProgress(
            self.store, lease, job.spec, self._range_test_step(heartbeat)
        ) as steps:
            search = JobSearch.prepare(
                job.spec,
                self._optuna_storage(),
                setup=setup,
                progress=False,
                study_name=job.study_name,
                callback=steps,
                fence=heartbeat.renew_now,
                earlier_winners=[
                    (c.job_id, c.recommendation) for c in self.store.warm_start_candidates(job.spec)
                ],
            )
        save_range_test(self.store, lease, search.study, self._provenance(job, search))
        progress = job.progress.model_copy(
            update={
                "range_test_steps_done": steps.total,  # completed (maybe stopped at divergence)
                "range_test_steps_total": steps.total,
                "trials_total": len(search.study.get_trials(deepcopy=False)),
                "confirmations_total": len(search.confirmation.get_trials(deepcopy=False)),
            }
        )
        heartbeat.stop()
        heartbeat.check()
        self.store.release(lease, status=JobStatus.SEARCHING, progress=progress)

    def _range_test_step(self, heartbeat: _Heartbeat) -> Callable[..., None]:
        """The range test's step callback: stop on a lost lease or a requested stop, and keep
        the children busy meanwhile."""

        def step(*_step: Any) -> None:
            heartbeat.check()
            check_stop("during the range test")
            self._keep_children_busy()

        return step

    def _end_search(self, job: JobRecord, lease: Lease, heartbeat: _Heartbeat) -> None:
        """Move a ``searching`` job whose search is over to ``confirming``."""
        search = self._open_search(job)
        _raise_unit_failure(search.study)
        heartbeat.stop()
        if has_unfinished(search.study):  # a unit was re-queued meanwhile: still searching
            self.store.release(lease)
            return
        self.store.release(lease, status=JobStatus.CONFIRMING, progress=_progress(job, search))

    def _finish(self, job: JobRecord, lease: Lease, heartbeat: _Heartbeat) -> None:
        """Write the recommendation of a job whose confirmation is over; it succeeds."""
        search = self._open_search(job)
        _raise_unit_failure(search.confirmation)
        if has_unfinished(search.confirmation):  # units left for the helpers
            heartbeat.stop()
            self.store.release(lease)
            return
        setup = self._setup(job)
        recommendation = search.recommend(setup)
        heartbeat.renew_now()  # the extension's writes happen under a fresh lease
        if search.extend_confirmation(setup, recommendation):  # inside the noise
            heartbeat.stop()
            heartbeat.check()
            self.store.release(lease, progress=_progress(job, search))
            return
        heartbeat.stop()
        heartbeat.check()
        try:
            self.store.save_recommendation(
                job.id, recommendation, self._provenance(job, search), lease=lease
            )
        except ConflictError:  # saved by a finisher that died before releasing
            _log(job.id, self.id, "confirming", "recommendation_exists")
        progress = _progress(job, search)
        self.store.release(lease, status=JobStatus.SUCCEEDED, progress=progress)
        remove_checkpoints(self.artifact_dir / job.study_name)  # no unit will resume

    def _help(self, job: JobRecord) -> bool:
        """Run the queued units of a shared job; move it on if none is left. True if it worked."""
        try:
            with storage_errors():
                search = self._open_search(job)
                queue = search.queue(_phase(job))
                fail_stale_trials(queue)  # a dead worker's unit must not hold a place
                _raise_unit_failure(queue)
                worked = self._waiting_units(job, queue) > 0 and self._run_units(job, search)
                _raise_unit_failure(queue)
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
        return self._move_on(job) or worked

    def _gate(self, job: JobRecord) -> UnitGate:
        """The job's search.max_parallel (under the store's unit lock), target and timeout."""
        return UnitGate(
            job.spec.search,
            lock=lambda: self.store.unit_lock(job.id),
            stop_reason=lambda: timeout_passed(job.spec.search, self.store.searching_for_s(job.id)),
        )

    def _run_units(self, job: JobRecord, search: JobSearch, *, one: bool = False) -> bool:
        """Run the job's queued units here until none is left (``one``: a single unit), the
        job ends, or a stop is requested; True if any ran."""
        phase = _phase(job)
        report = UnitProgress(self.store, job, search.study)
        ran: list[bool] = []

        def should_stop() -> bool:  # asked after each unit
            ran.append(True)
            ended = self._has_ended(job.id, report.record())
            failed = search.unit_failure(phase) is not None  # fails the job: no point going on
            return one or stop_requested() or ended or failed

        options = UnitOptions(
            artifact_dir=self.artifact_dir,
            wait_for_others=False,
            progress=False,
            should_stop=should_stop,
            gate=self._gate(job),
            stop_unit=self._stop_when_ended(job.id),
            unit_check_s=self.store.settings.unit_check_s,
        )
        _log(job.id, self.id, job.status.value, "helping")
        self._holding["unit"] = WorkerActivity(job_id=job.id, phase=job.status, lease=False)
        try:
            search.run_units(phase, self._setup(job), options)
        finally:
            self._holding.pop("unit", None)
        return bool(ran)

    def _stop_when_ended(self, job_id: str) -> Callable[[], str | None]:
        """Asked after each epoch of a unit and within it every ``Settings.unit_check_s``
        seconds: why to stop it now (its job was cancelled or failed), else None. Reads the job
        at most every ``ENDED_POLL_S`` seconds, so a unit of a cancelled job stops within
        ``unit_check_s`` or ``ENDED_POLL_S``, whichever is longer (plus one batch)."""
        checked = [time.monotonic()]

        def why() -> str | None:
            if time.monotonic() - checked[0] < ENDED_POLL_S:
                return None
            checked[0] = time.monotonic()
            try:
                status = self.store.get(job_id).status
            except StorageUnavailableError:  # keep training: the heartbeats handle outages
                return None
            return f"stopped: the job was {status.value}" if status.finished else None

        return why

    def _has_ended(self, job_id: str, job: JobRecord | None = None) -> bool:
        """Whether the job ended (was cancelled, or failed) while this worker ran its units.

        ``job``: the job as just read (e.g. by a progress report); None: read it now.
        """
        ended = (job or self.store.get(job_id)).status.finished
        if ended:
            _log(job_id, self.id, "shared", "stopped", reason="the job has ended")
        return ended

    def _requeue(self, job: JobRecord) -> None:
        """Queue again the units this worker's interruption left FAILED.

        Under the job's unit lock: a signal reaches every child of a worker (and every worker
        of a stopped fleet) at once, and two requeues that both read a slot as not yet queued
        would both queue it, so the job would train one unit twice.
        """
        search = self._open_search(job)
        with self.store.unit_lock(job.id):
            retried = search.requeue_interrupted()
        _log(job.id, self.id, job.status.value, "interrupted", requeued=retried)

    def _hand_back(self, lease: Lease) -> None:
        try:
            self.store.release(lease)
            _log(lease.job_id, self.id, lease.status.value, "handed_back")
        except LRTuneError as exc:  # lost or unreachable: the lease expires on its own
            _log(lease.job_id, self.id, lease.status.value, "hand_back_failed", reason=str(exc))

    def _fail(self, lease: Lease, exc: BaseException) -> None:
        self._fail_with(lease, _reason(exc))

    def _fail_with(self, lease: Lease, reason: str) -> None:
        try:
            with suppress(UnreadableRecordError):  # failed all the same
                self.store.release(lease, status=JobStatus.FAILED, error=reason)
            _log(lease.job_id, self.id, lease.status.value, "failed", reason=reason)
        except LeaseLost:
            _log(lease.job_id, self.id, lease.status.value, "abandoned", reason=reason)

    def _setup(self, job: JobRecord) -> TrainingSetup:
        """The job's model and data on this worker's device, kept for the last few jobs."""
        if job.id not in self._setups:
            # Before the data is loaded: a job this device cannot hold fails with the reason.
            free_gb = self.store.settings.worker_free_memory_gb
            check_device(self.store.estimate(job.spec), self.device, free_gb)
            if len(self._setups) >= SETUPS_KEPT:
                del self._setups[next(iter(self._setups))]  # the oldest
            self._setups[job.id] = self._new_setup(job.spec)
        return self._setups[job.id]

    def _new_setup(self, spec: JobSpec) -> TrainingSetup:
        """A job's setup; an uploaded dataset is read from this worker's job store."""
        dataset = spec.dataset
        if dataset.name != UPLOADED:
            return TrainingSetup.from_spec(spec, self.device)
        params = {key: value for key, value in dataset.params.items() if key != "id"}
        bundle = self.store.uploads.bundle(str(dataset.params.get("id")), params)
        return TrainingSetup(spec, bundle, resolve_device(self.device))

    def _optuna_storage(self) -> optuna.storages.BaseStorage:
        if self._storage is None:
            settings = self.store.settings
            self._storage = open_storage(
                self.store.url,
                heartbeat_interval=settings.trial_heartbeat_s,
                grace_period=settings.trial_grace_s,
            )
        return self._storage

    def _provenance(self, job: JobRecord, search: JobSearch) -> Provenance:
        bounds = search.bounds
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


def _phase(job: JobRecord) -> Phase:
    """The phase whose units a shared job's workers run: its search, or its confirmation."""
    return "search" if job.status is JobStatus.SEARCHING else "confirmation"


def _progress(job: JobRecord, search: JobSearch) -> JobProgress:
    """The job's progress as its studies hold it now."""
    study = search.study
    trials = study.get_trials(deepcopy=False)
    units = search.confirmation.get_trials(deepcopy=False)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    update: dict[str, Any] = {
        "trials_done": sum(t.state in finished for t in trials),
        "confirmations_done": sum(u.state in finished for u in units),
        "confirmations_total": len(units),  # adaptive confirmation may have added some
    }
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        update["best_value"] = study.best_value
    return job.progress.model_copy(update=update | stop_progress(study))


def unit_runner(config: ChildConfig, worker_id: str) -> Callable[[JobRecord], UnitOutcome]:
    """In a pool child: a worker like its parent, whose :meth:`Worker.run_unit` runs a task."""
    worker = Worker(
        JobStore(config.database_url),
        device=config.device,
        lease_s=config.lease_s,
        worker_id=worker_id,
        artifact_dir=config.artifact_dir,
    )
    return worker.run_unit


def _reason(exc: BaseException) -> str:
    """Why a job failed, on one line: the error's class and first line."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


def torch_threads() -> int:
    """The torch CPU threads this process uses now."""
    import torch

    return torch.get_num_threads()


def _log(job_id: str, worker_id: str, phase: str, event: str, **fields: Any) -> None:
    """One structured line per state change: job, worker, phase, event, and its details."""
    details = " ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
    )
    logger.info("job=%s worker=%s phase=%s event=%s %s", job_id, worker_id, phase, event, details)


@contextmanager
def stop_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """The first of ``signals`` asks for a clean stop, the second stops at once; later ones are
    ignored.

    A clean stop (:func:`lrtune.training.request_stop`) ends the running unit at its next epoch
    boundary or within ``Settings.unit_check_s`` seconds mid-epoch, and a range test at its
    next step (see the module); stopping at once raises
    KeyboardInterrupt in the main thread, abandoning the unit mid-epoch. A signal after that is
    ignored, so that the hand-back completes.
    """
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        received.append(signum)
        if len(received) == 1:
            logger.info("event=signal signal=%s: stopping the running unit at its next look", name)
            request_stop()
        elif len(received) == 2:
            logger.info("event=signal signal=%s: stopping now", name)
            raise KeyboardInterrupt
        else:
            logger.info("event=signal signal=%s: already stopping", name)

    previous = {signum: signal.signal(signum, handle) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
