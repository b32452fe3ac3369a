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
  recommendation) belong to the one worker holding the job's lease (``holder_worker_id``
  until ``lease_expires_at``, by the database's clock). Every change of holder increases
  ``fencing_token``, and every write a worker makes under the lease must be conditional on the
  token it was given; a worker whose write matches no row has lost the job and must stop.
  (Claiming, renewing and releasing leases, progress and the state advances come with the
  worker loop; they follow this paragraph.)
- ``searching``/``confirming`` units are shared by several workers through the job's Optuna
  study (its own trial queue and heartbeat), not through this lease.
- Anyone may :meth:`JobStore.cancel` a job that has not finished: it becomes ``cancelled``,
  loses its holder and its fencing token grows, so no worker's later write lands. Cancelling a
  finished job is a :class:`~lrtune.exceptions.ConflictError`.
- ``succeeded``, ``failed`` and ``cancelled`` are final. Only a finished job may be
  :meth:`JobStore.delete`-d; deleting removes its results, events and Optuna study.
- Events are append-only. Within a job their ids grow in commit order (appending locks the
  job's row), so :meth:`JobStore.events` with the last id seen never misses one.

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
"""

from __future__ import annotations

import builtins
import uuid
from typing import Any

from sqlalchemy import delete, inspect, select, text, tuple_, update
from sqlalchemy.orm import Session

from lrtune.exceptions import ConflictError, InvalidInputError, NotFoundError
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
    Provenance,
    StoredRecommendation,
)
from lrtune.jobs.settings import Settings
from lrtune.recommendation import Recommendation
from lrtune.spec import JobSpec

MAX_PAGE = 500
MAX_NAME_LENGTH = 120


class JobStore:
    """Jobs, their events and results in the database at ``url`` (see the module's contract).

    Raises:
        InvalidInputError: ``url`` is not a usable database URL.
        StorageUnavailableError: the database cannot be reached, or its schema is out of date
            (run ``lrtune db upgrade``).
    """

    def __init__(self, url: str | None = None, *, settings: Settings | None = None) -> None:
        settings = settings or Settings.from_env()
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

    def append_event(self, job_id: str, kind: str, payload: dict[str, Any]) -> JobEvent:
        """Add an event to the job's feed and return it (with its id, the reader's cursor)."""
        with session(self._engine, write=True) as s:
            _find(s, job_id, for_update=True)  # serialises a job's events: ids in commit order
            row = _add_event(s, job_id, kind, payload)
            s.flush()
            s.refresh(row)
            return JobEvent.model_validate(row, from_attributes=True)

    def save_recommendation(
        self, job_id: str, recommendation: Recommendation, provenance: Provenance
    ) -> StoredRecommendation:
        """Store the job's recommendation (one per job; a second is a :class:`ConflictError`).

        The lease-fenced write a worker makes at the end of a job will go through this.
        """
        with session(self._engine, write=True) as s:
            job = _find(s, job_id, for_update=True)
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


def _job_record(row: tables.Job) -> JobRecord:
    return JobRecord.model_validate({name: getattr(row, name) for name in JobRecord.model_fields})


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
