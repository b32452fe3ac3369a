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

With nothing to do it waits ``poll_s`` before looking again; on PostgreSQL a job submitted or
changing status (another worker's range test done, its search open) ends the wait at once
(:mod:`lrtune.jobs.changes`).

While a worker holds a lease, a daemon thread renews it every ``lease_s / 3`` seconds, so a
long training step never lets it expire. A renewal that meets
:class:`~lrtune.exceptions.LeaseLost` (the lease expired and another worker took the job, or
the job was cancelled) stops the range test at its next step, and nothing more is written;
so does a lease whose last successful renewal is older than ``lease_s`` (the store was out of
reach for longer than the lease: another worker may hold the job now). The range test's study
writes happen right after a successful renewal (``prepare_study``'s ``fence``).
An unavailable store is retried with exponential backoff and jitter (``StoreSettings.retry_*``,
:mod:`lrtune.workers.backoff`), by the loop and by the lease's renewals.
Progress goes to the store as work goes (:mod:`lrtune.workers.reporting`): range-test steps
a few times a second, and after each finished unit its trials or confirmation runs done; the
range test and its LR bounds are stored before the job starts searching, and a succeeded
job's checkpoints are removed.
A unit of a job that is cancelled (or fails) while it runs stops within
``StoreSettings.unit_check_s`` seconds (``LRTUNE_UNIT_CHECK_S``; it looks within its epochs too,
and reads the job at most every ``ENDED_POLL_S`` seconds), recorded PRUNED with the reason, on
every worker and child on the job; the rest of the queue is left, and what finished stays readable.
An error inside a phase fails the job with the reason, and so does a unit that fails for a
reason of its own (:func:`lrtune.search.unit_failure`): it is not retried, and the job must not
succeed short of its budget.

Presence: :meth:`Worker.run` registers the worker in the store's workers table (host, device,
pid, version, concurrency, threads, and the plugin registry this process serves), beats its
heartbeat every ``StoreSettings.worker_heartbeat_s`` seconds from a daemon thread (separate from
the per-lease heartbeat) with what it holds (``lrtune workers`` shows it), and marks itself
stopped when it exits cleanly.

Concurrency: with ``concurrency`` 1 everything runs in this process, as above. With N > 1 the
units run in N child processes (:mod:`lrtune.workers.pool`, one unit per task, handed out by a
:class:`~lrtune.workers.dispatch.Dispatcher`): this process
keeps the heartbeat and every lease (claims, range tests, moving jobs on, recommendations) and
hands each free child one queued unit of the oldest shared job that has queued units; during
a range test it keeps handing out units from the range test's step callback. A child that
dies is replaced, and its trial is retried through Optuna's heartbeat (with ``once``, the
worker waits for that trial to go stale before it leaves). While a range test runs here,
N + 1 units train on the device.

Threads: :func:`~lrtune.workers.threads.threads_per_unit` picks the torch threads of each unit:
``--threads`` (or ``LRTUNE_TORCH_THREADS``) if given, else the cores this process may use
divided by the concurrency (at least 1), and says why in the log. Several workers on one machine
each take every core that way: give each ``--threads``.

Stopping: the first SIGTERM or SIGINT (:func:`~lrtune.workers.signals.stop_on_signals`) asks for
a clean stop (:func:`lrtune.training.request_stop`): a running trial or confirmation run stops
at its next epoch boundary or, within an epoch, within ``StoreSettings.unit_check_s`` seconds, the
checkpoint of its last finished epoch on disk; Optuna records it FAILED as interrupted and the
worker queues it again, so another worker resumes it from the checkpoint
(``TrainingRun.resumed_from``; an epoch it stopped in is redone from its start); a range test
stops at its next step and its lease is handed back (the next claimer re-runs it from the
start); no new unit starts; children stop the same way; the worker exits with status 0. A second
signal stops at once (the unit is abandoned mid-epoch, still recorded as interrupted and queued
again); later ones are ignored so that the hand-back completes.

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
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import optuna

from lrtune import __version__
from lrtune._optuna import fail_stale_trials, has_unfinished, one_read, storage_errors
from lrtune.device import resolve_device
from lrtune.exceptions import (
    ConflictError,
    InvalidInputError,
    LeaseLost,
    LRTuneError,
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
from lrtune.jobs.store import remove_checkpoints
from lrtune.jobs.uploads import UPLOADED
from lrtune.optuna_storage import open_storage
from lrtune.search import (
    JobSearch,
    UnitGate,
    UnitOptions,
    stop_progress,
    timeout_passed,
)
from lrtune.spec import JobSpec
from lrtune.training import (
    TrainingSetup,
    check_stop,
    stop_requested,
    wait_for_stop,
)
from lrtune.workers.backoff import Backoff
from lrtune.workers.dispatch import Dispatcher, children, log_event, one_line, phase_of
from lrtune.workers.lease import LeaseHeartbeat
from lrtune.workers.pool import ChildConfig, UnitOutcome
from lrtune.workers.presence import Presence
from lrtune.workers.reporting import RangeTestProgress, UnitProgress, save_range_test
from lrtune.workers.tasks import LoadedTask, load_named
from lrtune.workers.threads import torch_threads

logger = logging.getLogger("lrtune.workers")

DEFAULT_LEASE_S = 60.0
"""Seconds a lease lasts without renewal: how long a dead worker's exclusive phase waits."""
IDLE_POLL_S = 1.0
"""Seconds an idle worker waits before looking for work again (on PostgreSQL it looks at once
when a job is submitted or changes status: :mod:`lrtune.jobs.changes`)."""
ENDED_POLL_S = 0.5
"""Seconds between a running unit's reads of whether its job was cancelled (or failed)."""
SETUPS_KEPT = 4
"""Jobs whose loaded data a worker keeps, so that helping them again does not reload it."""
SUGGESTION_RULE = "consensus"
"""The range test's rule whose suggestion and bounds a job's search uses."""


class Worker:
    """One worker process's loop over the job store (see the module).

    Args:
        store: the job store; the jobs' Optuna studies live in the same database.
        device: where it trains (``auto``, ``cpu``, ``cuda:N``).
        lease_s: how long a lease lasts without renewal.
        worker_id: its name in the store (default: ``host-pid``).
        artifact_dir: where trials checkpoint each epoch, so that an interrupted trial resumes
            (a directory every worker that may resume it can read), one folder per job;
            None: the store's ``StoreSettings.artifact_dir`` (``LRTUNE_ARTIFACT_DIR``).
        poll_s: how long it waits, idle, before looking for work again (on PostgreSQL, at
            most: a job submitted or changing status ends the wait).
        concurrency: units run at once; above 1, in that many child processes.
        threads: torch CPU threads per unit (children pin it; reported in the workers table;
            default: what this process's torch uses).
        tasks: the tasks it runs, by name (:mod:`lrtune.workers.tasks`): it publishes them and
            claims their jobs besides registry jobs; another task's jobs it never takes.
        population: search trials of one job trained at once as a population, at most
            (:mod:`lrtune.search.populations`; fewer where the device's memory holds fewer, one
            at a time for a task that cannot be trained so); per unit slot.
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
        tasks: Mapping[str, LoadedTask] | None = None,
        population: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if population < 1:
            raise ValueError(f"population must be >= 1, got {population}")
        self.store = store
        self.device = str(resolve_device(device))
        self.lease_s = lease_s
        self.id = (worker_id or f"{socket.gethostname()}-{os.getpid()}")[:64]
        self.artifact_dir = Path(artifact_dir or store.settings.artifact_dir)
        self.poll_s = poll_s
        self.concurrency = concurrency
        self.threads = threads
        self.tasks = dict(tasks or {})
        self.population = population
        self._storage: optuna.storages.BaseStorage | None = None
        self._setups: dict[str, TrainingSetup] = {}
        self._dispatcher: Dispatcher | None = None
        self._holding: dict[str, WorkerActivity] = {}  # "lease", "unit": what it does here
        self._searches: dict[str, JobSearch] = {}  # the dispatcher's, per job
        self._worked: set[str] = set()  # the jobs run() has worked on, and its max_jobs
        self._max_jobs: int | None = None

    def run(self, *, max_jobs: int | None = None, once: bool = False) -> int:
        """Work until interrupted; return how many jobs it worked on.

        ``once``: return as soon as no job has work this worker may take. ``max_jobs``: work on
        at most that many distinct jobs, and return when they have none left for it.
        """
        worked: set[str] = set()
        self._worked, self._max_jobs = worked, max_jobs
        construct_a_first_optimizer()
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
                    self.store.changes.wait(self.poll_s, sleep=wait_for_stop)
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
                log_event(job.id, self.id, job.status.value, "requeue_failed", reason=str(exc))
            return UnitOutcome(job_id=job.id, interrupted=True)
        except StorageUnavailableError as exc:
            return UnitOutcome(job_id=job.id, storage_error=str(exc))
        except Exception as exc:  # the job's own error: the parent fails the job
            return UnitOutcome(job_id=job.id, error=one_line(exc))
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
            plugin_registry=PluginRegistry.of_this_process(
                {name: task.info for name, task in self.tasks.items()}
            ),
        )
        with Presence(self.store, registration, self._doing):
            yield

    def _doing(self) -> list[WorkerActivity]:
        """What this worker holds now: its lease, its in-process unit, its children's units."""
        doing = list(self._holding.values())
        if self._dispatcher is not None:
            doing += [
                WorkerActivity(job_id=job.id, phase=job.status, lease=False)
                for job in self._dispatcher.running()
            ]
        return doing

    @contextmanager
    def _units(self) -> Iterator[None]:
        """The pool of child processes and its dispatcher while in the ``with`` (none with
        concurrency 1)."""
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
            task_paths=tuple(task.path for task in self.tasks.values()),
            population=self.population,
        )
        with children(self, config, self.concurrency, unit_runner) as self._dispatcher:
            try:
                yield
            finally:
                self._dispatcher = None

    def _backoff(self) -> Backoff:
        """Waits between tries of an unavailable store (``StoreSettings.retry_*``)."""
        return Backoff.of(self.store.settings)

    def _step(self, may_start: bool, worked: set[str]) -> str | None:
        """Do one piece of work; return the id of the job it was for, None if there was none."""
        if self._dispatcher is not None:
            return self._dispatcher.step(may_start, worked)
        if may_start:
            claimed = self.take_exclusive()
            if claimed is not None:
                return claimed
        for job in self.store.shared_jobs(device=self.device, tasks=self.tasks):
            if (may_start or job.id in worked) and self._help(job):
                return job.id
        return None

    def search(self, job: JobRecord) -> JobSearch:
        """The job's search, opened once per job (for the dispatcher)."""
        if job.id not in self._searches:
            if len(self._searches) >= 4 * SETUPS_KEPT:
                del self._searches[next(iter(self._searches))]
            self._searches[job.id] = self._open_search(job)
        return self._searches[job.id]

    def _open_search(self, job: JobRecord) -> JobSearch:
        return JobSearch.open(job.spec, self._optuna_storage(), job.study_name)

    def move_on(self, job: JobRecord) -> bool:
        """Claim a shared job whose queue is done and move it on; True if this worker did."""
        if stop_requested():  # the next worker will
            return False
        return self.take_exclusive(job.id) is not None

    def take_exclusive(self, job_id: str | None = None) -> str | None:
        """Claim a job's exclusive phase (the oldest claimable, or ``job_id``'s) and run it;
        the job's id, or None if there was none to claim."""
        lease = self._claim(job_id)
        if lease is None:
            return None
        self._exclusive(lease)
        return lease.job_id

    def fail_job(self, job_id: str, reason: str) -> None:
        lease = self._claim(job_id)
        if lease is not None:
            self._fail_with(lease, reason)

    def _claim(self, job_id: str | None = None) -> Lease | None:
        lease = self.store.claim(
            self.id, self.lease_s, job_id=job_id, device=self.device, tasks=self.tasks
        )
        if lease is not None:
            log_event(lease.job_id, self.id, lease.status.value, "claimed", attempts=lease.attempts)
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
            heartbeat = LeaseHeartbeat(self.store, lease, self.lease_s, self._backoff())
            with heartbeat, storage_errors():
                if lease.status is JobStatus.FINDING:
                    self._find(job, lease, heartbeat)
                elif lease.status is JobStatus.SEARCHING:
                    self._end_search(job, lease, heartbeat)
                else:
                    self._finish(job, lease, heartbeat)
        except LeaseLost as exc:
            log_event(job.id, self.id, lease.status.value, "abandoned", reason=str(exc))
        except (KeyboardInterrupt, StorageUnavailableError):  # not the job's fault: hand it back
            self._hand_back(lease)
            raise
        except Exception as exc:
            self._fail(lease, exc)
        else:
            log_event(job.id, self.id, lease.status.value, "done", s=time.monotonic() - started)
        finally:
            self._holding.pop("lease", None)

    def _find(self, job: JobRecord, lease: Lease, heartbeat: LeaseHeartbeat) -> None:
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
        heartbeat.stop()
        heartbeat.check()
        self._start_search(job, lease, search, steps.total)

    def _start_search(self, job: JobRecord, lease: Lease, search: JobSearch, steps: int) -> None:
        """Store the prepared study's range test under ``lease`` and move the job on to
        ``searching``, with its units counted (``steps``: the range test's, maybe fewer than
        asked when it stopped at divergence)."""
        save_range_test(self.store, lease, search.study, self._provenance(job, search))
        progress = job.progress.model_copy(
            update={
                "range_test_steps_done": steps,
                "range_test_steps_total": steps,
                "trials_total": len(search.study.get_trials(deepcopy=False)),
                "confirmations_total": len(search.confirmation.get_trials(deepcopy=False)),
            }
        )
        self.store.release(lease, status=JobStatus.SEARCHING, progress=progress)

    def _range_test_step(self, heartbeat: LeaseHeartbeat) -> Callable[..., None]:
        """The range test's step callback: stop on a lost lease or a requested stop, and keep
        the children busy meanwhile."""

        def step(*_step: Any) -> None:
            heartbeat.check()
            check_stop("during the range test")
            if self._dispatcher is not None:
                worked, max_jobs = self._worked, self._max_jobs
                self._dispatcher.keep_busy(max_jobs is None or len(worked) < max_jobs, worked)

        return step

    def _end_search(self, job: JobRecord, lease: Lease, heartbeat: LeaseHeartbeat) -> None:
        """Move a ``searching`` job whose search is over to ``confirming``."""
        search = self._open_search(job)
        search.check_units("search")
        heartbeat.stop()
        if has_unfinished(search.study):  # a unit was re-queued meanwhile: still searching
            self.store.release(lease)
            return
        self.store.release(lease, status=JobStatus.CONFIRMING, progress=_progress(job, search))

    def _finish(self, job: JobRecord, lease: Lease, heartbeat: LeaseHeartbeat) -> None:
        """Write the recommendation of a job whose confirmation is over; it succeeds."""
        search = self._open_search(job)
        search.check_units("confirmation")
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
            log_event(job.id, self.id, "confirming", "recommendation_exists")
        progress = _progress(job, search)
        self.store.release(lease, status=JobStatus.SUCCEEDED, progress=progress)
        remove_checkpoints(self.artifact_dir / job.study_name)  # no unit will resume

    def _help(self, job: JobRecord) -> bool:
        """Run the queued units of a shared job; move it on if none is left. True if it worked."""
        try:
            with storage_errors():
                search, phase = self._open_search(job), phase_of(job)
                fail_stale_trials(search.queue(phase))  # a dead worker's unit must not hold a place
                search.check_units(phase)
                worked = search.startable(phase) > 0 and self._run_units(job, search)
                search.check_units(phase)
                unfinished = has_unfinished(search.queue(phase))
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
        return self.move_on(job) or worked

    def _gate(self, job: JobRecord) -> UnitGate:
        """The job's search.max_parallel (under the store's unit lock), target and timeout."""
        search = job.spec.search

        def timed_out() -> str | None:
            return timeout_passed(search, self.store.searching_for_s(job.id))

        return UnitGate(
            search,
            lock=lambda: self.store.unit_lock(job.id),
            stop_reason=timed_out if search.timeout_s is not None else None,  # a read a unit
        )

    def _run_units(self, job: JobRecord, search: JobSearch, *, one: bool = False) -> bool:
        """Run the job's queued units here until none is left (``one``: a single unit), the
        job ends, or a stop is requested; True if any ran."""
        phase = phase_of(job)
        report = UnitProgress(self.store, job, search.study)
        ran: list[bool] = []

        def should_stop() -> bool:  # asked after each unit
            ran.append(True)
            with one_read(search.study):  # the report's counts and best, and the failures
                ended = self._has_ended(job.id, report.record())
                failed = search.unit_failure(phase) is not None  # fails the job: stop now
            return one or stop_requested() or ended or failed

        options = UnitOptions(
            artifact_dir=self.artifact_dir,
            wait_for_others=False,
            progress=False,
            should_stop=should_stop,
            gate=self._gate(job),
            stop_unit=self._stop_when_ended(job.id),
            unit_check_s=self.store.settings.unit_check_s,
            population=self.population,
        )
        log_event(job.id, self.id, job.status.value, "helping")
        self._holding["unit"] = WorkerActivity(job_id=job.id, phase=job.status, lease=False)
        try:
            search.run_units(phase, self._setup(job), options)
        finally:
            self._holding.pop("unit", None)
        return bool(ran)

    def _stop_when_ended(self, job_id: str) -> Callable[[], str | None]:
        """Asked after each epoch of a unit and within it every ``StoreSettings.unit_check_s``
        seconds: why to stop it now (its job was cancelled or failed), else None. Reads the job
        at most every ``ENDED_POLL_S`` seconds, so a unit of a cancelled job stops within
        ``unit_check_s`` or ``ENDED_POLL_S``, whichever is longer (plus one batch)."""
        checked = [time.monotonic()]

        def why() -> str | None:
            if time.monotonic() - checked[0] < ENDED_POLL_S:
                return None
            checked[0] = time.monotonic()
            try:
                status = self.store.status(job_id)
            except StorageUnavailableError:  # keep training: the heartbeats handle outages
                return None
            return f"stopped: the job was {status.value}" if status.finished else None

        return why

    def _has_ended(self, job_id: str, status: JobStatus | None = None) -> bool:
        """Whether the job ended (was cancelled, or failed) while this worker ran its units.

        ``status``: the job's as just read (e.g. by a progress report); None: read it now.
        """
        ended = (status if status is not None else self.store.status(job_id)).finished
        if ended:
            log_event(job_id, self.id, "shared", "stopped", reason="the job has ended")
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
        log_event(job.id, self.id, job.status.value, "interrupted", requeued=retried)

    def _hand_back(self, lease: Lease) -> None:
        try:
            self.store.release(lease)
            log_event(lease.job_id, self.id, lease.status.value, "handed_back")
        except LRTuneError as exc:  # lost or unreachable: the lease expires on its own
            log_event(
                lease.job_id, self.id, lease.status.value, "hand_back_failed", reason=str(exc)
            )

    def _fail(self, lease: Lease, exc: BaseException) -> None:
        self._fail_with(lease, one_line(exc))

    def _fail_with(self, lease: Lease, reason: str) -> None:
        try:
            with suppress(UnreadableRecordError):  # failed all the same
                self.store.release(lease, status=JobStatus.FAILED, error=reason)
            log_event(lease.job_id, self.id, lease.status.value, "failed", reason=reason)
        except LeaseLost:
            log_event(lease.job_id, self.id, lease.status.value, "abandoned", reason=reason)

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
        """A job's setup; an uploaded dataset is read from this worker's job store, a task is
        made from what this worker loaded with the job's params."""
        if spec.task is not None:
            loaded = self.tasks.get(spec.task.name)
            if loaded is None:
                raise InvalidInputError(f"this worker does not run task {spec.task.name!r}")
            return TrainingSetup.from_spec(spec, self.device, task=loaded.make(spec.task.params))
        dataset = spec.dataset
        if dataset.name != UPLOADED:
            return TrainingSetup.from_spec(spec, self.device)
        params = {key: value for key, value in dataset.params.items() if key != "id"}
        bundle = self.store.uploads.bundle(str(dataset.params.get("id")), params)
        return TrainingSetup.from_bundle(spec, bundle, resolve_device(self.device))

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


def construct_a_first_optimizer() -> None:
    """Construct a throwaway torch optimizer, so that what the first one imports is imported.

    torch.optim's first optimizer in a process imports ``torch._dynamo``: 1.1-1.8 s on one of
    this machine's cores, which a worker's first unit would otherwise spend inside its trial
    (a helper's first trial took 3x as long as its next), after the search had opened. A worker
    and each pool child do it when they start, before they look for work.
    """
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def unit_runner(config: ChildConfig, worker_id: str) -> Callable[[JobRecord], UnitOutcome]:
    """In a pool child: a worker like its parent, whose :meth:`Worker.run_unit` runs a task."""
    construct_a_first_optimizer()
    worker = Worker(
        JobStore(config.database_url),
        device=config.device,
        lease_s=config.lease_s,
        worker_id=worker_id,
        artifact_dir=config.artifact_dir,
        tasks=load_named(config.task_paths),
        population=config.population,
    )
    return worker.run_unit
