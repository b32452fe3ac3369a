"""The job store: the only way the HTTP API and the workers touch lrtune's database.

A :class:`JobStore` opens the database at a URL (default: ``Settings.database_url``), on the
process's shared engine (:mod:`lrtune.jobs.db`), after checking its schema revision
(:mod:`lrtune.jobs.schema`: an embedded SQLite file upgrades itself, any other database out of
date refuses to open). It returns pydantic models (:mod:`lrtune.jobs.schemas`), never ORM rows,
and raises only :mod:`lrtune.exceptions` classes: an unknown job id is a
:class:`~lrtune.exceptions.NotFoundError`, a request the job's state forbids a
:class:`~lrtune.exceptions.ConflictError`, a database that cannot be reached or used a
:class:`~lrtune.exceptions.StorageUnavailableError` (its message hides the password).

Every job has its own Optuna study, named ``lrtune-job-<id>`` in the same database, so two jobs
with the same spec or name never share trials.

Contract (who may change a job, in which state):

- :meth:`JobStore.submit` creates a job ``queued``, with no holder and fencing token 0.
- The exclusive phases (``finding``: preparing the study and the range test; writing the
  recommendation, while ``confirming``) belong to the one worker holding the job's lease
  (``holder_worker_id`` until ``lease_expires_at``, by the database's clock). Every change of
  holder increases ``fencing_token``, and every write a worker makes under the lease is
  conditional on the token it was given: :meth:`JobStore.renew`, :meth:`JobStore.advance` and
  :meth:`JobStore.release` raise :class:`~lrtune.exceptions.LeaseLost` when it moved on (the
  lease expired and another worker claimed the job, or the job was cancelled), and the worker
  must stop working on the job. A lease that expired but that nobody has claimed yet is still
  its holder's: renewing it succeeds.
- :meth:`JobStore.claim` takes the oldest job that is ``queued`` (it becomes ``finding``), or
  that is ``finding`` or ``confirming`` under a lease that expired (its worker died; the phase
  is re-run from its start). ``claim(..., job_id=...)`` takes one named unfinished job that no
  live lease holds, in whatever state it is (e.g. the worker that finished a ``searching``
  job's last unit takes it to move it on and write the recommendation). ``attempts`` counts
  the claims since the job last completed a phase (a release that changes its state resets it
  to 0; a release that hands the job back unchanged does not count); a claim that finds it at
  ``Settings.max_attempts`` fails the job with the reason instead.
- A lease holder moves the job along ``queued -> finding -> searching -> confirming ->
  succeeded`` one step at a time, or to ``failed`` (with the reason) from any unfinished
  state; :meth:`JobStore.advance` keeps the lease, :meth:`JobStore.release` gives it up (to a
  final state, to the next shared phase, or, with no state, hands the job back: a ``finding``
  job becomes ``queued`` again). Any other change is a
  :class:`~lrtune.exceptions.ConflictError`. Each change of state appends a ``status`` event
  in the same transaction.
- ``searching``/``confirming`` units are shared by several workers through the job's Optuna
  study (its own trial queue and heartbeat), not through this lease.
- Anyone may :meth:`JobStore.cancel` a job that has not finished: it becomes ``cancelled``,
  loses its holder and its fencing token grows, so no worker's later write lands. Cancelling a
  finished job is a :class:`~lrtune.exceptions.ConflictError`.
- ``succeeded``, ``failed`` and ``cancelled`` are final. Only a finished job may be
  :meth:`JobStore.delete`-d; deleting removes its results, events and Optuna study.
- Events are append-only. Within a job their ids grow in commit order (appending locks the
  job's row), so :meth:`JobStore.events` with the last id seen never misses one.

Workers register themselves (:meth:`JobStore.register_worker`), beat a heartbeat saying what
they hold (:meth:`JobStore.beat`) and mark themselves stopped on a clean exit
(:meth:`JobStore.stop_worker`); :meth:`JobStore.list_workers` lists the live ones and
:meth:`JobStore.known_registry` merges the plugin registries they serve. Only a worker writes
its own row.

Reads never take SQLite's write lock, so the API and the dashboard's feed do not wait behind
a worker; writes begin IMMEDIATE there, and lock the job's row on PostgreSQL.

Example:
    >>> import tempfile, pathlib
    >>> from lrtune.spec import JobSpec
    >>> store = JobStore(f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}")
    >>> spec = JobSpec.model_validate({"model": {"name": "mlp"}, "dataset": {"name": "digits"}})
    >>> job = store.submit(spec, name="digits-mlp")
    >>> job.status.value, job.study_name == f"lrtune-job-{job.id}"
    ('queued', True)
    >>> store.cancel(job.id).status.value
    'cancelled'
    >>> [event.kind for event in store.events(job.id)]
    ['submitted', 'status']
    >>> [j.id for j in store.list().data] == [job.id]
    True

    A worker's lease:

    >>> job = store.submit(spec)
    >>> lease = store.claim("worker-1", lease_s=30)
    >>> lease.job_id == job.id, lease.status.value, lease.attempts
    (True, 'finding', 1)
    >>> lease = store.renew(lease, lease_s=30)  # from the worker's heartbeat
    >>> store.release(lease, status="searching").status.value
    'searching'
    >>> try:  # released: the token moved on, so the old lease writes nothing
    ...     store.advance(lease, "confirming")
    ... except LeaseLost:
    ...     print("lease lost")
    lease lost

    A worker's presence:

    >>> me = WorkerRegistration(id="w1", host="gpu-7", device="cuda:0", pid=4242,
    ...     version="0.1", heartbeat_s=10, plugin_registry=PluginRegistry.of_this_process())
    >>> store.register_worker(me).live
    True
    >>> store.beat("w1", [WorkerActivity(job_id=job.id, phase="searching", lease=False)])
    >>> [(w.id, w.activity[0].phase.value) for w in store.list_workers().data]
    [('w1', 'searching')]
    >>> "logreg" in store.known_registry().models
    True
    >>> store.stop_worker("w1")
    >>> store.list_workers().data, store.list_workers(live_only=False).data[0].live
    ([], False)
"""

from __future__ import annotations

import builtins
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import and_, delete, func, inspect, or_, select, text, tuple_, update
from sqlalchemy.orm import Session

from lrtune.exceptions import ConflictError, InvalidInputError, LeaseLost, NotFoundError
from lrtune.jobs import tables
from lrtune.jobs.db import get_engine, safe_url, session
from lrtune.jobs.schema import ensure_current
from lrtune.jobs.schemas import (
    RESULT_FORMAT_VERSION,
    SPEC_FORMAT_VERSION,
    JobEvent,
    JobPage,
    JobProgress,
    JobRecord,
    JobStatus,
    Lease,
    PluginRegistry,
    Provenance,
    StoredRecommendation,
    WorkerActivity,
    WorkerList,
    WorkerRecord,
    WorkerRegistration,
)
from lrtune.jobs.settings import LIVE_HEARTBEATS, Settings
from lrtune.recommendation import Recommendation
from lrtune.spec import JobSpec

MAX_PAGE = 500
MAX_NAME_LENGTH = 120
MAX_WORKER_ID_LENGTH = 64

NEXT_STATUS = {
    JobStatus.QUEUED: JobStatus.FINDING,
    JobStatus.FINDING: JobStatus.SEARCHING,
    JobStatus.SEARCHING: JobStatus.CONFIRMING,
    JobStatus.CONFIRMING: JobStatus.SUCCEEDED,
}
"""The one step a lease holder may move an unfinished job on; ``failed`` is also allowed."""

EXCLUSIVE_STATUSES = (JobStatus.FINDING, JobStatus.CONFIRMING)
"""States whose work a lease holds; an expired lease in them is claimed again."""


class JobStore:
    """Jobs, their events and results in the database at ``url`` (see the module's contract).

    Raises:
        InvalidInputError: ``url`` is not a usable database URL.
        StorageUnavailableError: the database cannot be reached, or its schema is out of date
            (run ``lrtune db upgrade``).
    """

    def __init__(self, url: str | None = None, *, settings: Settings | None = None) -> None:
        settings = settings or Settings.from_env()
        self.settings = settings
        self.url = url or settings.database_url
        self._engine = get_engine(self.url, settings)
        ensure_current(self.url)

    def __repr__(self) -> str:
        return f"JobStore({safe_url(self.url)!r})"

    def submit(self, spec: JobSpec, name: str | None = None) -> JobRecord:
        """Queue a new job for ``spec``, named ``name`` (default: the spec's name)."""
        name = name if name is not None else spec.name
        if name is not None and not 1 <= len(name) <= MAX_NAME_LENGTH:
            raise InvalidInputError(f"job name must be 1 to {MAX_NAME_LENGTH} characters")
        job_id = str(uuid.uuid4())
        row = tables.Job(
            id=job_id,
            name=name,
            spec=spec.model_dump(mode="json"),
            spec_format_version=SPEC_FORMAT_VERSION,
            fingerprint=spec.fingerprint(),
            study_name=f"lrtune-job-{job_id}",
            status=JobStatus.QUEUED.value,
            progress=JobProgress().model_dump(mode="json"),
            attempts=0,
            fencing_token=0,
        )
        with session(self._engine, write=True) as s:
            s.add(row)
            s.flush()
            _add_event(s, job_id, "submitted", {"status": JobStatus.QUEUED.value})
            s.flush()
            s.refresh(row)
            return _job_record(row)

    def get(self, job_id: str) -> JobRecord:
        """The job ``job_id``; :class:`NotFoundError` if there is none."""
        with session(self._engine, write=False) as s:
            return _job_record(_find(s, job_id))

    def list(
        self, status: JobStatus | str | None = None, limit: int = 50, after: str | None = None
    ) -> JobPage:
        """Jobs newest first, ``limit`` a page, optionally only those in ``status``.

        ``after`` is the ``next_after`` of the previous page (a job id): pages are keyed on
        ``(created_at, id)``, so jobs submitted while a client pages through neither shift nor
        repeat what it has not seen yet.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be 1 to {MAX_PAGE}, got {limit}")
        wanted = _status(status) if status is not None else None
        query = select(tables.Job)
        if wanted is not None:
            query = query.where(tables.Job.status == wanted.value)
        with session(self._engine, write=False) as s:
            if after is not None:
                cursor = _find(s, after)
                query = query.where(
                    tuple_(tables.Job.created_at, tables.Job.id)
                    < tuple_(cursor.created_at, cursor.id)
                )
            order = (tables.Job.created_at.desc(), tables.Job.id.desc())
            rows = s.scalars(query.order_by(*order).limit(limit + 1)).all()
            page = [_job_record(row) for row in rows[:limit]]
        next_after = page[-1].id if len(rows) > limit else None
        return JobPage(data=page, next_after=next_after)

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job that has not finished; :class:`ConflictError` if it has."""
        with session(self._engine, write=True) as s:
            row = _find(s, job_id, for_update=True)
            was = JobStatus(row.status)
            if was.finished:
                raise ConflictError(
                    f"job {job_id} is already {was.value}: only an unfinished job can be cancelled"
                )
            s.execute(
                update(tables.Job)
                .where(tables.Job.id == job_id)
                .values(
                    status=JobStatus.CANCELLED.value,
                    finished_at=tables.utcnow(),
                    updated_at=tables.utcnow(),
                    holder_worker_id=None,
                    lease_expires_at=None,
                    fencing_token=tables.Job.fencing_token + 1,
                )
            )
            _add_event(s, job_id, "status", {"from": was.value, "to": JobStatus.CANCELLED.value})
            s.flush()
            s.refresh(row)
            return _job_record(row)

    def events(self, job_id: str, after_id: int = 0, limit: int = 100) -> builtins.list[JobEvent]:
        """The job's events with ids above ``after_id``, oldest first, at most ``limit``."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be 1 to {MAX_PAGE}, got {limit}")
        with session(self._engine, write=False) as s:
            _find(s, job_id)
            rows = s.scalars(
                select(tables.JobEvent)
                .where(tables.JobEvent.job_id == job_id, tables.JobEvent.id > after_id)
                .order_by(tables.JobEvent.id)
                .limit(limit)
            ).all()
            return [JobEvent.model_validate(row, from_attributes=True) for row in rows]

    def shared_jobs(self, limit: int = 50) -> builtins.list[JobRecord]:
        """Jobs in a shared phase (``searching``, ``confirming``), oldest first: a read.

        A free worker helps the first of them that has a unit it may take, so one huge job
        does not starve the ones submitted after it.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be 1 to {MAX_PAGE}, got {limit}")
        shared = [JobStatus.SEARCHING.value, JobStatus.CONFIRMING.value]
        query = (
            select(tables.Job)
            .where(tables.Job.status.in_(shared))
            .order_by(tables.Job.created_at, tables.Job.id)
            .limit(limit)
        )
        with session(self._engine, write=False) as s:
            return [_job_record(row) for row in s.scalars(query).all()]

    def append_event(self, job_id: str, kind: str, payload: dict[str, Any]) -> JobEvent:
        """Add an event to the job's feed and return it (with its id, the reader's cursor)."""
        with session(self._engine, write=True) as s:
            _find(s, job_id, for_update=True)  # serialises a job's events: ids in commit order
            row = _add_event(s, job_id, kind, payload)
            s.flush()
            s.refresh(row)
            return JobEvent.model_validate(row, from_attributes=True)

    def claim(self, worker_id: str, lease_s: float, *, job_id: str | None = None) -> Lease | None:
        """Take a job's exclusive phase for ``lease_s`` seconds; ``None`` if there is none.

        Without ``job_id``: the oldest job that is ``queued`` (it becomes ``finding``) or whose
        lease expired while ``finding`` or ``confirming``. With ``job_id``: that job, if it is
        unfinished and no live lease holds it. Atomic across workers (``FOR UPDATE SKIP
        LOCKED`` on PostgreSQL, an IMMEDIATE transaction on SQLite): each job has one holder.
        A job claimed ``Settings.max_attempts`` times without completing its phase is failed
        with the reason instead, and the next candidate is tried.

        Raises:
            InvalidInputError: ``lease_s`` is not positive, or ``worker_id`` is empty or longer
                than 64 characters.
            NotFoundError: no job ``job_id``.
        """
        _check_lease_args(worker_id, lease_s)
        with session(self._engine, write=True) as s:
            if job_id is not None:
                _find(s, job_id)
            while True:
                row = s.scalars(_claim_query(job_id)).first()
                if row is None:
                    return None
                if row.attempts >= self.settings.max_attempts:
                    self._fail_exhausted(s, row)
                    if job_id is not None:
                        return None
                    continue
                return _take(s, row, worker_id, lease_s)

    def renew(self, lease: Lease, lease_s: float) -> Lease:
        """Extend the lease to ``lease_s`` seconds from now (the worker's heartbeat).

        Raises:
            LeaseLost: another worker claimed the job, or it was cancelled or released.
        """
        _check_lease_args(lease.worker_id, lease_s)
        with session(self._engine, write=True) as s:
            row = _fenced(s, lease)
            _fenced_update(s, lease, lease_expires_at=tables.utc_after(lease_s))
            s.refresh(row)
            return Lease.model_validate({**dict(lease), "expires_at": row.lease_expires_at})

    def advance(
        self,
        lease: Lease,
        status: JobStatus | str | None = None,
        progress: JobProgress | None = None,
    ) -> JobRecord:
        """Move the job on to ``status`` and/or record ``progress``, keeping the lease.

        ``status`` must be the job's next state (see the module) and not a final one: a final
        state is reached through :meth:`release`. Progress appends a ``progress`` event.

        Raises:
            LeaseLost: the lease moved on (see :meth:`renew`); nothing was written.
            ConflictError: the job may not move from its state to ``status``.
            InvalidInputError: ``status`` is final.
        """
        wanted = _status(status) if status is not None else None
        if wanted is not None and wanted.finished:
            raise InvalidInputError(
                f"advance cannot finish a job ({wanted.value}): release the lease with the status"
            )
        with session(self._engine, write=True) as s:
            row = _fenced(s, lease)
            values: dict[str, Any] = {}
            was = JobStatus(row.status)
            if wanted is not None and wanted is not was:
                _check_transition(lease.job_id, was, wanted)
                values["status"] = wanted.value
            return _write(s, lease, row, was, values, progress)

    def release(
        self,
        lease: Lease,
        status: JobStatus | str | None = None,
        progress: JobProgress | None = None,
        error: str | None = None,
    ) -> JobRecord:
        """Give the lease up, moving the job on to ``status``; its token grows.

        With no ``status`` the job is handed back as it is (a ``finding`` job becomes
        ``queued``, its range test to be re-run) and the claim does not count as an attempt;
        with one, it must be the next state or ``failed``, which needs ``error``.

        Raises:
            LeaseLost: the lease moved on (see :meth:`renew`); nothing was written.
            ConflictError: the job may not move from its state to ``status``.
            InvalidInputError: ``failed`` without an ``error``.
        """
        wanted = _status(status) if status is not None else None
        if wanted is JobStatus.FAILED and not error:
            raise InvalidInputError("a job released as failed needs the error that failed it")
        with session(self._engine, write=True) as s:
            row = _fenced(s, lease)
            was = JobStatus(row.status)
            values: dict[str, Any] = {
                "holder_worker_id": None,
                "lease_expires_at": None,
                "fencing_token": tables.Job.fencing_token + 1,
            }
            if wanted is None or wanted is was:
                values["attempts"] = tables.Job.attempts - 1
                if was is JobStatus.FINDING:
                    values["status"] = JobStatus.QUEUED.value
            else:
                _check_transition(lease.job_id, was, wanted)
                values.update(status=wanted.value, attempts=0)
                if wanted.finished:
                    values["finished_at"] = tables.utcnow()
            if error is not None:
                values["error"] = error
            record = _write(s, lease, row, was, values, progress)
            if "status" not in values:
                _add_event(s, lease.job_id, "released", {"worker_id": lease.worker_id})
            return record

    def _fail_exhausted(self, s: Session, row: tables.Job) -> None:
        limit = self.settings.max_attempts
        reason = (
            f"retry limit reached: the job's {row.status} phase was claimed {row.attempts} "
            f"times and its lease expired each time (its worker stopped; the limit is "
            f"LRTUNE_MAX_ATTEMPTS={limit})"
        )
        s.execute(
            update(tables.Job)
            .where(tables.Job.id == row.id)
            .values(
                status=JobStatus.FAILED.value,
                error=reason,
                finished_at=tables.utcnow(),
                updated_at=tables.utcnow(),
                holder_worker_id=None,
                lease_expires_at=None,
                fencing_token=tables.Job.fencing_token + 1,
            )
        )
        payload = {"from": row.status, "to": JobStatus.FAILED.value, "error": reason}
        _add_event(s, row.id, "status", payload)

    def save_recommendation(
        self,
        job_id: str,
        recommendation: Recommendation,
        provenance: Provenance,
        *,
        lease: Lease | None = None,
    ) -> StoredRecommendation:
        """Store the job's recommendation (one per job; a second is a :class:`ConflictError`).

        A worker passes its ``lease``: the write then lands only while the lease holds the job
        (:class:`~lrtune.exceptions.LeaseLost` otherwise, and nothing is written).
        """
        if lease is not None and lease.job_id != job_id:
            raise InvalidInputError(f"the lease is for job {lease.job_id}, not {job_id}")
        with session(self._engine, write=True) as s:
            job = _fenced(s, lease) if lease is not None else _find(s, job_id, for_update=True)
            row = tables.Recommendation(
                job_id=job_id,
                fingerprint=job.fingerprint,
                format_version=RESULT_FORMAT_VERSION,
                result=recommendation.model_dump(mode="json"),
                lrtune_version=provenance.lrtune_version,
                rule=provenance.rule,
                lr_min=provenance.lr_min,
                lr_max=provenance.lr_max,
                device=provenance.device,
                search_config=provenance.search and provenance.search.model_dump(mode="json"),
            )
            s.add(row)
            s.flush()
            s.refresh(row)
            return _stored_recommendation(row)

    def recommendation(self, job_id: str) -> StoredRecommendation:
        """The recommendation a job wrote.

        Raises:
            NotFoundError: no job has this id, or the job has written no recommendation (yet).
        """
        job = self.get(job_id)  # NotFoundError for an unknown id
        query = (
            select(tables.Recommendation)
            .where(tables.Recommendation.job_id == job_id)
            .order_by(tables.Recommendation.created_at.desc(), tables.Recommendation.id.desc())
            .limit(1)
        )
        with session(self._engine, write=False) as s:
            row = s.scalars(query).first()
            if row is None:
                raise NotFoundError(
                    f"job {job_id!r} has no recommendation: it is {job.status.value}"
                )
            return _stored_recommendation(row)

    def latest_recommendation(self, fingerprint: str) -> StoredRecommendation | None:
        """The newest recommendation of a succeeded job with this fingerprint, if any."""
        query = (
            select(tables.Recommendation)
            .join(tables.Job, tables.Job.id == tables.Recommendation.job_id)
            .where(
                tables.Recommendation.fingerprint == fingerprint,
                tables.Job.status == JobStatus.SUCCEEDED.value,
            )
            .order_by(tables.Recommendation.created_at.desc(), tables.Recommendation.id.desc())
            .limit(1)
        )
        with session(self._engine, write=False) as s:
            row = s.scalars(query).first()
            return _stored_recommendation(row) if row is not None else None

    def delete(self, job_id: str) -> None:
        """Delete a finished job with its results, events and Optuna study.

        Raises:
            NotFoundError: no such job.
            ConflictError: the job has not finished (cancel it first).
        """
        with session(self._engine, write=True) as s:
            row = _find(s, job_id, for_update=True)
            if not JobStatus(row.status).finished:
                raise ConflictError(f"job {job_id} is {row.status}: cancel it before deleting it")
            study_name = row.study_name
            s.execute(delete(tables.Job).where(tables.Job.id == job_id))
        self._delete_study(study_name)

    def _delete_study(self, study_name: str) -> None:
        """Delete the job's Optuna study if one was created (imports Optuna only then)."""
        if not inspect(self._engine).has_table("studies"):
            return
        with session(self._engine, write=False) as s:
            exists = s.execute(
                text("SELECT 1 FROM studies WHERE study_name = :name"), {"name": study_name}
            ).first()
        if exists:
            import optuna

            from lrtune.storage import open_storage

            optuna.delete_study(study_name=study_name, storage=open_storage(self.url))

    # --- workers: who is out there, what each holds, which plugins they serve -----------------

    def register_worker(self, worker: WorkerRegistration) -> WorkerRecord:
        """Record a worker that starts (replacing an earlier row with its id); return it.

        Its heartbeat starts now, by the database's clock; it then calls :meth:`beat` every
        ``worker.heartbeat_s`` seconds and :meth:`stop_worker` when it exits cleanly.

        """
        values = worker.model_dump(mode="json")
        with session(self._engine, write=True) as s:
            s.execute(delete(tables.Worker).where(tables.Worker.id == worker.id))
            s.add(tables.Worker(**values, activity=[]))
        return self._worker(worker.id)

    def beat(self, worker_id: str, activity: builtins.list[WorkerActivity]) -> None:
        """The worker's heartbeat: it is alive now, doing ``activity`` (empty: idle).

        Raises:
            NotFoundError: no live row for the worker (never registered, or stopped): register
                again.
        """
        with session(self._engine, write=True) as s:
            done = s.execute(
                update(tables.Worker)
                .where(tables.Worker.id == worker_id, tables.Worker.stopped_at.is_(None))
                .values(
                    last_heartbeat=tables.utcnow(),
                    activity=[a.model_dump(mode="json") for a in activity],
                )
            )
            if done.rowcount != 1:
                raise NotFoundError(
                    f"no running worker {worker_id!r} in the job store: register it first"
                )

    def stop_worker(self, worker_id: str) -> None:
        """Mark the worker stopped (a clean exit): it holds nothing and is no longer live.

        Raises:
            NotFoundError: no worker ``worker_id``.
        """
        with session(self._engine, write=True) as s:
            done = s.execute(
                update(tables.Worker)
                .where(tables.Worker.id == worker_id)
                .values(
                    stopped_at=func.coalesce(tables.Worker.stopped_at, tables.utcnow()),
                    activity=[],
                )
            )
            if done.rowcount != 1:
                raise NotFoundError(f"no worker {worker_id!r} in the job store")

    def list_workers(self, *, live_only: bool = True) -> WorkerList:
        """Workers, most recent heartbeat first; by default only the live ones.

        A worker is live while it has not stopped and its last heartbeat is younger than
        ``LIVE_HEARTBEATS`` (3) of its own heartbeat intervals, by the database's clock (a
        worker killed with SIGKILL drops out after that). With ``live_only=False``, stopped
        and silent workers too (their ``live`` is False).
        """
        query = select(tables.Worker, tables.utcnow()).order_by(
            tables.Worker.last_heartbeat.desc(), tables.Worker.id
        )
        if live_only:
            query = query.where(tables.Worker.stopped_at.is_(None))
        with session(self._engine, write=False) as s:
            rows = s.execute(query).all()
        workers = [_worker_record(row, now) for row, now in rows]
        return WorkerList(data=[w for w in workers if w.live or not live_only])

    def known_registry(self) -> PluginRegistry:
        """The models and datasets the live workers can build, merged (see
        :class:`PluginRegistry`): a job naming one of them has a worker to run it.

        Where two workers give a name different schemas, the one with the latest heartbeat
        wins.
        """
        known = PluginRegistry()
        for worker in self.list_workers().data:
            known = known.merged(worker.plugin_registry)
        return known

    def _worker(self, worker_id: str) -> WorkerRecord:
        with session(self._engine, write=False) as s:
            row, now = s.execute(
                select(tables.Worker, tables.utcnow()).where(tables.Worker.id == worker_id)
            ).one()
            return _worker_record(row, now)


def _status(status: JobStatus | str) -> JobStatus:
    try:
        return JobStatus(status)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidInputError(f"unknown job status {status!r}: use one of {known}") from None


def _find(s: Session, job_id: str, *, for_update: bool = False) -> tables.Job:
    row = s.get(tables.Job, job_id, with_for_update=for_update)
    if row is None:
        raise NotFoundError(f"no job {job_id!r} in the job store")
    return row


def _add_event(s: Session, job_id: str, kind: str, payload: dict[str, Any]) -> tables.JobEvent:
    row = tables.JobEvent(job_id=job_id, kind=kind, payload=payload)
    s.add(row)
    return row


def _check_lease_args(worker_id: str, lease_s: float) -> None:
    if not 1 <= len(worker_id) <= MAX_WORKER_ID_LENGTH:
        raise InvalidInputError(f"worker id must be 1 to {MAX_WORKER_ID_LENGTH} characters")
    if not lease_s > 0:
        raise InvalidInputError(f"lease_s must be a positive number of seconds, got {lease_s}")


def _claim_query(job_id: str | None) -> Any:
    """The oldest claimable job, locked for this transaction (others skip it)."""
    job = tables.Job
    expired = and_(job.holder_worker_id.is_not(None), job.lease_expires_at < tables.utcnow())
    if job_id is None:
        exclusive = [status.value for status in EXCLUSIVE_STATUSES]
        claimable = or_(
            job.status == JobStatus.QUEUED.value, and_(job.status.in_(exclusive), expired)
        )
    else:
        unfinished = [status.value for status in JobStatus if not status.finished]
        free = or_(job.holder_worker_id.is_(None), expired)
        claimable = and_(job.id == job_id, job.status.in_(unfinished), free)
    return (
        select(job)
        .where(claimable)
        .order_by(job.created_at, job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


def _take(s: Session, row: tables.Job, worker_id: str, lease_s: float) -> Lease:
    was = JobStatus(row.status)
    previous_holder = row.holder_worker_id
    now = JobStatus.FINDING if was is JobStatus.QUEUED else was
    s.execute(
        update(tables.Job)
        .where(tables.Job.id == row.id)
        .values(
            status=now.value,
            holder_worker_id=worker_id,
            lease_expires_at=tables.utc_after(lease_s),
            fencing_token=tables.Job.fencing_token + 1,
            attempts=tables.Job.attempts + 1,
            updated_at=tables.utcnow(),
            started_at=row.started_at or tables.utcnow(),
        )
    )
    s.refresh(row)
    claimed = {"worker_id": worker_id, "attempts": row.attempts, "took_over": previous_holder}
    _add_event(s, row.id, "claimed", claimed)
    if now is not was:
        moved = {"from": was.value, "to": now.value, "worker_id": worker_id}
        _add_event(s, row.id, "status", moved)
    return Lease(
        job_id=row.id,
        worker_id=worker_id,
        fencing_token=row.fencing_token,
        expires_at=row.lease_expires_at,
        status=now,
        attempts=row.attempts,
    )


def _fenced(s: Session, lease: Lease) -> tables.Job:
    """The leased job's row, locked; :class:`LeaseLost` unless ``lease`` still holds it."""
    row = s.get(tables.Job, lease.job_id, with_for_update=True)
    if (
        row is None
        or row.fencing_token != lease.fencing_token
        or row.holder_worker_id != lease.worker_id
    ):
        raise LeaseLost(
            f"worker {lease.worker_id!r} no longer holds the lease of job {lease.job_id} "
            f"(token {lease.fencing_token}): it expired and another worker claimed the job, "
            "or the job was cancelled or released; stop working on it"
        )
    return row


def _fenced_update(s: Session, lease: Lease, **values: Any) -> None:
    """UPDATE the job only where the lease's token still holds (a second line of defence)."""
    result = s.execute(
        update(tables.Job)
        .where(
            tables.Job.id == lease.job_id,
            tables.Job.fencing_token == lease.fencing_token,
            tables.Job.holder_worker_id == lease.worker_id,
        )
        .values(updated_at=tables.utcnow(), **values)
    )
    if result.rowcount != 1:
        raise LeaseLost(f"worker {lease.worker_id!r} lost the lease of job {lease.job_id}")


def _check_transition(job_id: str, was: JobStatus, wanted: JobStatus) -> None:
    if was.finished or wanted not in (NEXT_STATUS.get(was), JobStatus.FAILED):
        allowed = "nothing" if was.finished else f"{NEXT_STATUS[was].value} or failed"
        raise ConflictError(
            f"job {job_id} is {was.value}: it cannot become {wanted.value} (allowed: {allowed})"
        )


def _write(
    s: Session,
    lease: Lease,
    row: tables.Job,
    was: JobStatus,
    values: dict[str, Any],
    progress: JobProgress | None,
) -> JobRecord:
    """One fenced write of a lease holder, with its ``status`` and ``progress`` events."""
    if progress is not None:
        values["progress"] = progress.model_dump(mode="json")
    _fenced_update(s, lease, **values)
    status = values.get("status")
    if status is not None and status != was.value:
        payload: dict[str, Any] = {"from": was.value, "to": status, "worker_id": lease.worker_id}
        if values.get("error") is not None:
            payload["error"] = values["error"]
        _add_event(s, lease.job_id, "status", payload)
    if progress is not None:
        _add_event(s, lease.job_id, "progress", progress.model_dump(mode="json"))
    s.flush()
    s.refresh(row)
    return _job_record(row)


def _job_record(row: tables.Job) -> JobRecord:
    return JobRecord.model_validate({name: getattr(row, name) for name in JobRecord.model_fields})


def _worker_record(row: tables.Worker, now: datetime) -> WorkerRecord:
    """The row as a record, its heartbeat's age and liveness by the database clock ``now``."""
    fields = {name: getattr(row, name) for name in WorkerRecord.model_fields if hasattr(row, name)}
    fields["activity"] = row.activity or []
    age = (_utc(now) - _utc(row.last_heartbeat)).total_seconds()
    live = row.stopped_at is None and age < LIVE_HEARTBEATS * row.heartbeat_s
    return WorkerRecord.model_validate({**fields, "heartbeat_age_s": max(age, 0.0), "live": live})


def _utc(value: datetime | str) -> datetime:
    """A time read from the database, as an aware UTC datetime (SQLite returns naive ones, and
    a bare ``SELECT`` of its clock returns text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _stored_recommendation(row: tables.Recommendation) -> StoredRecommendation:
    provenance = Provenance(
        lrtune_version=row.lrtune_version,
        rule=row.rule,
        lr_min=row.lr_min,
        lr_max=row.lr_max,
        device=row.device,
        search=row.search_config,
    )
    return StoredRecommendation(
        job_id=row.job_id,
        fingerprint=row.fingerprint,
        format_version=row.format_version,
        provenance=provenance,
        recommendation=Recommendation.model_validate(row.result),
        created_at=row.created_at,
    )
