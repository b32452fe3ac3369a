"""The service's side of agents: their jobs' phases and units, handed out over HTTP.

An agent (:mod:`lrtune.agent`) trains on the user's machine and reaches the service by URL
only; :class:`AgentBroker` does, for one agent, what a database worker does for itself
(:class:`~lrtune.workers.loop.Worker`, whose code it runs), except the training:

- a job to start (``queued``, or whose lease expired while ``finding``): the broker claims its
  lease in the agent's name and hands out the range test (:class:`RangeTestWork`); the agent
  renews the lease and sends the result back, and the broker prepares the study with it (the
  run's shape the agent measured stands in for the task: :meth:`TrainingSetup.of_shape`) and
  moves the job to ``searching``;
- a shared job: the broker pops a queued unit as Optuna would for a worker (the job's gate:
  ``max_parallel``, target, timeout), plans it (the sampler runs here), records the trial's
  heartbeat for the agent, and hands it out (:class:`UnitWork`); the agent's epoch reports
  are the pruner's, and its completion tells the trial;
- a job whose queue is done: the broker moves it on itself, as a worker's ``move_on`` would
  (ending the search; writing the recommendation, or queueing more confirmation seeds): no
  training, so no agent is needed.

Fencing: a unit is the agent's while its trial is RUNNING; an agent that went silent past the
storage's grace period finds its trial failed and cloned for another (the storage's retry),
and its reports are refused (:class:`~lrtune.exceptions.ConflictError`, 409), so a trial is
never counted twice. A range test's writes are fenced by the lease, as a worker's are.
"""

from __future__ import annotations

import time
import warnings
from datetime import datetime, timezone
from typing import Any

import optuna
from optuna.trial import TrialState

from lrtune._optuna import (
    ATTR_FAIL_REASON,
    ATTR_RUN_SHAPE,
    fail_stale_trials,
    has_unfinished,
    heartbeat_interval,
    storage_of,
)
from lrtune.agent_protocol import (
    AgentWork,
    EpochReport,
    NoWork,
    RangeTestDone,
    RangeTestWork,
    ReportAnswer,
    UnitDone,
    UnitFailure,
    UnitWork,
)
from lrtune.exceptions import ConflictError, NotFoundError
from lrtune.jobs import JobRecord, JobStatus, JobStore, Lease
from lrtune.search import JobSearch, UnitOptions
from lrtune.search.queues import INTERRUPTED
from lrtune.search.units import Unit, UnitPlan
from lrtune.training import StopTraining, TrainingSetup
from lrtune.workers.dispatch import log_event, phase_of
from lrtune.workers.loop import ENDED_POLL_S, Worker
from lrtune.workers.reporting import UnitProgress

NO_WORK_RETRY_S = 2.0
"""How long an agent with nothing to do waits before asking again."""


class AgentBroker(Worker):
    """Hands one agent's work out and takes its results in (see the module).

    ``worker_id`` is the agent's id (its row in the workers table), ``tasks`` the names of the
    tasks it published, ``device`` its device.
    """

    def __init__(
        self, store: JobStore, worker_id: str, *, device: str, tasks: list[str], lease_s: float
    ) -> None:
        super().__init__(store, device="cpu", worker_id=worker_id, lease_s=lease_s)
        self.device = device  # the agent's, for the store's routing (not resolved here)
        self.task_names = list(tasks)
        self._moved = False
        self._jobs: dict[str, tuple[float, JobRecord]] = {}

    # --- handing out -------------------------------------------------------------------------

    def next_work(self, job_id: str | None = None) -> AgentWork:
        """The agent's next piece of work; moving a job on needs none, and happens here."""
        for _ in range(8):  # each pass moves a job on or hands out; bounded per request
            lease = self._claim(job_id) if self._may_start(job_id) else None
            if lease is not None:
                if lease.status is JobStatus.FINDING:
                    return RangeTestWork(
                        spec=self.store.get(lease.job_id).spec, lease=lease, lease_s=self.lease_s
                    )
                self._exclusive(lease)  # ends a search, or writes the answer
                continue
            shared = self.store.shared_jobs(
                device=self.device, tasks=self.task_names, registry_jobs=False
            )
            self._moved = False
            for job in shared:
                if job_id is not None and job.id != job_id:
                    continue
                work = self._next_unit(job)
                if work is not None:
                    return work
            if not self._moved:  # else a job moved on (to confirming): it may have units now
                pending = self.store.unfinished_task_jobs(self.task_names, job_id) > 0
                return NoWork(retry_after_s=NO_WORK_RETRY_S, pending=pending)
        return NoWork(retry_after_s=0.0)

    def _may_start(self, job_id: str | None) -> bool:
        """Whether to claim an exclusive phase: any job's (``job_id`` None), else only that
        job's range test (queued, or its holder's lease expired while ``finding``); a shared
        job's phase is claimed only to move it on, when its queue is done."""
        if job_id is None:
            return True
        job = self.store.get(job_id)
        if job.status is JobStatus.QUEUED:
            return True
        expired = job.lease_expires_at is None or job.lease_expires_at < datetime.now(timezone.utc)
        return job.status is JobStatus.FINDING and expired

    def _claim(self, job_id: str | None = None) -> Lease | None:
        lease = self.store.claim(
            self.id,
            self.lease_s,
            job_id=job_id,
            device=self.device,
            tasks=self.task_names,
            registry_jobs=False,
        )
        if lease is not None:
            log_event(lease.job_id, self.id, lease.status.value, "claimed", attempts=lease.attempts)
        return lease

    def _next_unit(self, job: JobRecord) -> UnitWork | None:
        """Pop and plan one of ``job``'s queued units for the agent; None if there is none (a
        job whose queue is done is moved on, one whose unit failed is failed)."""
        search, phase = self.search(job), phase_of(job)
        queue = search.queue(phase)
        fail_stale_trials(queue)  # an agent gone silent must not hold a place
        failure = search.unit_failure(phase)
        if failure is not None:
            self.fail_job(job.id, failure)
            return None
        if not has_unfinished(queue):
            self._moved = self.move_on(job) or self._moved
            return None
        if search.startable(phase) < 1:
            return None
        queue.gate = self._gate(job)
        setup = self._setup(job)
        while True:
            try:
                with warnings.catch_warnings():  # "heartbeat is for Study.optimize": we beat
                    warnings.simplefilter("ignore", UserWarning)
                    trial = queue.ask()
            except Exception:  # QueueEmpty, or the gate said no (target reached, timed out)
                return None
            _read_running(queue)
            unit = _unit(trial, phase, setup, search)
            try:
                plan = unit.plan()
            except optuna.TrialPruned:  # a finalist that is not, or is a baseline: next
                queue.tell(trial, state=TrialState.PRUNED)
                continue
            storage_of(queue).record_heartbeat(trial._trial_id)
            log_event(job.id, self.id, job.status.value, "handed_out", trial=trial.number)
            return UnitWork(
                job_id=job.id,
                spec=job.spec,
                queue=phase,
                trial_id=trial._trial_id,
                number=trial.number,
                schedule=plan.schedule,
                base_lr=plan.base_lr,
                seed=plan.seed,
                lr_free=plan.lr_free,
                heartbeat_s=heartbeat_interval(queue) or 60.0,
            )

    def _setup(self, job: JobRecord) -> TrainingSetup:
        """The job's runs' shape, as the agent that ran its range test measured it."""
        if job.id not in self._setups:
            shape = self.search(job).study.user_attrs[ATTR_RUN_SHAPE]
            self._setups[job.id] = TrainingSetup.of_shape(
                job.spec, shape["steps_per_epoch"], shape["group_multipliers"]
            )
        return self._setups[job.id]

    # --- taking results in -------------------------------------------------------------------

    def range_test_done(self, done: RangeTestDone) -> None:
        """Prepare the job's study with the agent's range test, and move the job on.

        Raises:
            LeaseLost: the lease is no longer the agent's (it expired, the job was cancelled).
        """
        lease = self.store.renew(done.lease, self.lease_s)
        job = self.store.get(lease.job_id)
        setup = TrainingSetup.of_shape(job.spec, done.steps_per_epoch, done.group_multipliers)
        search = JobSearch.prepare(
            job.spec,
            self._optuna_storage(),
            setup=setup,
            progress=False,
            study_name=job.study_name,
            fence=lambda: self.store.renew(lease, self.lease_s),
            range_test_result=done.result,
            earlier_winners=[
                (c.job_id, c.recommendation) for c in self.store.warm_start_candidates(job.spec)
            ],
        )
        self._start_search(job, lease, search, len(done.result.lrs))
        log_event(job.id, self.id, "finding", "done", by="agent")

    def fail_range_test(self, lease: Lease, reason: str) -> None:
        """The job's range test failed on the agent (its task raised): the job fails."""
        self._fail_with(lease, reason)

    def renew(self, lease: Lease) -> Lease:
        return self.store.renew(lease, self.lease_s)

    def hand_back(self, lease: Lease) -> None:
        """The agent stops before its range test ends: the next claimer runs it again."""
        self._hand_back(lease)

    def report(self, job_id: str, trial_id: int, report: EpochReport) -> ReportAnswer:
        """A unit's epoch: the pruner's verdict (search trials), then whether its job ended."""
        job, queue, trial = self._running(job_id, trial_id)
        if queue is self.search(job).study:  # a search trial: the pruner decides
            unit = _unit(trial, "search", self._setup(job), self.search(job))
            try:
                unit.report(report.epoch, report.record)
            except StopTraining as stop:
                return ReportAnswer(stop=str(stop))
        if job.status.finished:
            return ReportAnswer(stop=f"stopped: the job was {job.status.value}")
        return ReportAnswer()

    def beat(self, job_id: str, trial_id: int) -> None:
        """The agent is still training the unit: its trial's heartbeat."""
        self._running(job_id, trial_id)

    def complete(self, job_id: str, trial_id: int, done: UnitDone) -> None:
        """Store the unit's run and tell its trial COMPLETE (or PRUNED: stopped, diverged)."""
        job, queue, trial = self._running(job_id, trial_id)
        phase = "search" if queue is self.search(job).study else "confirmation"
        unit = _unit(trial, phase, self._setup(job), self.search(job))
        no_checkpoint = UnitPlan(None, 0.0, None, None, None)  # type: ignore[arg-type]
        try:
            value = unit.complete(done.run, no_checkpoint)
        except optuna.TrialPruned:
            queue.tell(trial, state=TrialState.PRUNED)
        else:
            queue.tell(trial, value)
        UnitProgress(self.store, job, self.search(job).study).record()
        log_event(job.id, self.id, job.status.value, "unit_done", trial=trial.number)

    def fail(self, job_id: str, trial_id: int, failure: UnitFailure) -> None:
        """The agent could not finish the unit: queued again when it was interrupted, else
        FAILED with the reason (the job then fails with it)."""
        job, queue, trial = self._running(job_id, trial_id)
        reason = f"{INTERRUPTED} (agent {self.id})" if failure.interrupted else failure.reason
        trial.set_user_attr(ATTR_FAIL_REASON, reason)
        queue.tell(trial, state=TrialState.FAIL)
        if failure.interrupted:
            self._requeue(job)
        log_event(job.id, self.id, job.status.value, "failed_unit", trial=trial.number)

    def _job(self, job_id: str) -> JobRecord:
        """The job as stored, read at most every ``ENDED_POLL_S`` seconds (its state is what
        a report needs: whether it was cancelled), as a worker's unit reads it."""
        now = time.monotonic()
        cached = self._jobs.get(job_id)
        if cached is None or now - cached[0] > ENDED_POLL_S:
            cached = self._jobs[job_id] = (now, self.store.get(job_id))
        return cached[1]

    def _running(self, job_id: str, trial_id: int) -> tuple[JobRecord, Any, optuna.Trial]:
        """The job, the queue and the trial of a unit the agent holds, its heartbeat recorded.

        Raises:
            NotFoundError: no such unit in the job.
            ConflictError: the unit is no longer the agent's (not RUNNING: its heartbeat went
                stale and it was queued again, or the job was deleted).
        """
        job = self._job(job_id)
        search = self.search(job)
        for queue in (search.study, search.confirmation):
            # Reads the queue's trials into the storage's cache too: Optuna's cached RDB
            # storage writes reports only for trials it has read.
            frozen = {t._trial_id: t for t in queue.get_trials(deepcopy=False)}.get(trial_id)
            if frozen is None:
                continue
            if frozen.state is not TrialState.RUNNING:
                raise ConflictError(
                    f"unit {frozen.number} of job {job_id} is {frozen.state.name.lower()}, not "
                    "yours any more (no heartbeat in time: it was queued again): stop it"
                )
            storage_of(queue).record_heartbeat(trial_id)
            return job, queue, optuna.Trial(queue, trial_id)
        raise NotFoundError(f"no unit {trial_id} in job {job_id}")


def _unit(trial: optuna.Trial, phase: str, setup: TrainingSetup, search: JobSearch) -> Unit:
    kind = "trial" if phase == "search" else "confirm"
    finalists: list[Any] = []

    def finalist_trials() -> list[Any]:
        if not finalists:
            from lrtune.search.queues import finalist_trials as read

            finalists.extend(read(search.study, setup.spec.search))
        return finalists

    return Unit(trial, kind, setup, search.study, search.bounds, UnitOptions(), finalist_trials)


def _read_running(queue: optuna.Study) -> None:
    """Read the queue's running trials into its storage's cache: Optuna's cached RDB storage
    writes a trial's params and reports only for trials it has read (a worker's ``optimize``
    reads them all first)."""
    queue.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
