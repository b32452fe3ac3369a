"""The job store: the only way the HTTP API and the workers touch lrtune's database.

A :class:`JobStore` opens the database at a URL (default: ``StoreSettings.database_url``), on the
process's shared engine (:mod:`lrtune.jobs.db`), after checking its schema revision
(:mod:`lrtune.jobs.revision`: an embedded SQLite file upgrades itself, any other database out of
date refuses to open). It returns pydantic models (:mod:`lrtune.jobs.records`), never ORM rows,
and raises only :mod:`lrtune.exceptions` classes: an unknown job id is a
:class:`~lrtune.exceptions.NotFoundError`, a request the job's state forbids a
:class:`~lrtune.exceptions.ConflictError`, a database that cannot be reached or used a
:class:`~lrtune.exceptions.StorageUnavailableError` (its message hides the password).

Every job has its own Optuna study, named ``lrtune-job-<id>`` in the same database, so two jobs
with the same spec or name never share trials.

Every method that takes a job id also takes a unique prefix of one (the dashboard shows ids'
first 8 characters): a prefix that no id starts with is a
:class:`~lrtune.exceptions.NotFoundError`, one that several start with an
:class:`~lrtune.exceptions.InvalidInputError` that says how many
(:func:`~lrtune.jobs.rows.find_job` resolves it, for every method).

Contract (who may change a job, in which state):

- :meth:`JobStore.submit` admits the spec (:mod:`lrtune.jobs.admission`, the same checks for
  every way in) and creates a job ``queued``, with no holder and fencing token 0, unless reuse
  (the default) finds an earlier succeeded job that already answers the spec
  (:meth:`JobStore.reusable`): then nothing is created and that job is the answer.
- Jobs are queued in the order they were submitted (``submit_seq``, which grows with every
  submit, even within one clock tick): claims, :meth:`JobStore.shared_jobs` and
  :meth:`JobStore.list_jobs` order by it.
- The workers' part, leases (the exclusive phases, fencing tokens, claims and attempts, the
  steps a lease holder may move a job on, the shared phases' units, CUDA jobs, progress), is
  written in :mod:`lrtune.jobs.leases`; results (range tests and recommendations, stored once
  by the lease holder) in :mod:`lrtune.jobs.results`.
- Anyone may :meth:`JobStore.cancel` a job that has not finished: it becomes ``cancelled``,
  loses its holder and its fencing token grows, so no worker's later write lands. Cancelling a
  finished job is a :class:`~lrtune.exceptions.ConflictError`.
- ``succeeded``, ``failed`` and ``cancelled`` are final. Only a finished job may be
  :meth:`JobStore.delete`-d; deleting removes its results, events, Optuna study and
  checkpoints (its folder under ``StoreSettings.artifact_dir``; the worker that writes a job's
  success removes them then). :meth:`JobStore.prune` deletes the jobs finished longer ago
  than a given age.
- Events are append-only. Within a job their ids grow in commit order (appending locks the
  job's row), so :meth:`JobStore.events` with the last id seen never misses one.

Workers' presence (registering, heartbeats, the live workers and the plugins they serve) is
:mod:`lrtune.jobs.presence`'s; only a worker writes its own row.

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
    >>> [j.id for j in store.list_jobs().data] == [job.id]
    True

The store is one class built from rooms, one concern per module: :class:`JobStore` here (jobs:
submit, read, list, cancel, delete, events) is also a :class:`~lrtune.jobs.leases.Leases`, a
:class:`~lrtune.jobs.results.Results` and a :class:`~lrtune.jobs.presence.Presence`. Each room
is a base class holding its methods' code and docstrings, sharing the store's engine, URL and
settings, so users keep calling every method on ``JobStore`` (and ``help(JobStore.claim)``
shows its contract) while each file holds one concern. Base classes rather than small objects
that ``JobStore`` delegates to: a delegating method would repeat each docstring (the contract)
in a second place, where the two copies drift. Helpers that every room needs (finding
a job by id or prefix, appending an event, reading a row back) are :mod:`lrtune.jobs.rows`'.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Collection, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update

from lrtune import footprint
from lrtune._rdb import held_connection, parse_url
from lrtune.exceptions import ConflictError, InvalidInputError, NotFoundError
from lrtune.jobs import admission, tables
from lrtune.jobs.changes import JobChanges
from lrtune.jobs.db import get_engine, reading, safe_url, session, translate_errors
from lrtune.jobs.leases import Leases
from lrtune.jobs.presence import Presence
from lrtune.jobs.records import (
    SPEC_FORMAT_VERSION,
    DatasetUpload,
    JobEvent,
    JobPage,
    JobProgress,
    JobRecord,
    JobStats,
    JobStatus,
    Submission,
)
from lrtune.jobs.results import Results
from lrtune.jobs.revision import ensure_current
from lrtune.jobs.row_versions import RowVersions
from lrtune.jobs.rows import (
    MAX_PAGE,
    add_event,
    check_limit,
    find_job,
    job_record,
    parse_status,
    readable_records,
    utc,
)
from lrtune.jobs.settings import StoreSettings
from lrtune.jobs.uploads import UPLOADED, DatasetUploads, hold_upload
from lrtune.registry import dataset_shapes
from lrtune.spec import JobSpec

__all__ = ["FINISHED_STATUSES", "MAX_NAME_LENGTH", "MAX_PAGE", "JobStore", "remove_checkpoints"]

MAX_NAME_LENGTH = 120

FINISHED_STATUSES = tuple(status for status in JobStatus if status.finished)


class JobStore(Leases, Results, Presence):
    """Jobs, their events and results in the database at ``url`` (see the module's contract).

    ``create=False`` opens only a store that exists: a SQLite file that is not there is a
    :class:`NotFoundError` instead of a new, empty store (what a command that only reads, or
    cancels, must not leave behind).

    Raises:
        InvalidInputError: ``url`` is not a usable database URL.
        NotFoundError: with ``create=False``, ``url`` names a SQLite file that does not exist.
        StorageUnavailableError: the database cannot be reached, or its schema is out of date
            (run ``lrtune db upgrade``).
    """

    def __init__(
        self, url: str | None = None, *, settings: StoreSettings | None = None, create: bool = True
    ) -> None:
        settings = settings or StoreSettings.from_env()
        self.settings = settings
        self.url = url or settings.database_url
        if not create:
            _check_exists(self.url)
        self._engine = get_engine(self.url, settings)
        self._studies: Any = None  # the Optuna storage, opened by the first delete of a study
        ensure_current(self.url)
        self.uploads = DatasetUploads(self._engine)
        """The uploaded datasets (:mod:`lrtune.jobs.uploads`)."""
        self.row_versions = RowVersions(self._engine)
        """Each job's row version, one cheap read (:mod:`lrtune.jobs.row_versions`)."""
        self.changes = JobChanges(self._engine)
        """A wait for a job to be submitted or change status (:mod:`lrtune.jobs.changes`)."""

    def __repr__(self) -> str:
        return f"JobStore({safe_url(self.url)!r})"

    def submit(self, spec: JobSpec, name: str | None = None, *, reuse: bool = True) -> Submission:
        """Queue a new job for ``spec``, named ``name`` (default: the spec's name).

        With ``reuse`` (the default), a spec that an earlier succeeded job already answered
        (:meth:`reusable`) queues nothing: the answer is that job, with ``reused_from`` set to
        its id and its stored ``recommendation``. ``reuse=False`` always queues a new job.

        Raises:
            InvalidInputError: the spec is refused at admission (:mod:`lrtune.jobs.admission`;
                ``loc`` is the field to change): a NUL character, a model or dataset no one can
                build or whose params misfit, an uploaded dataset that is not (or no longer)
                in the store (a delete racing this submit either refuses or happens first:
                :mod:`lrtune.jobs.uploads`).
            QueueFullError: ``StoreSettings.max_queued_jobs`` jobs are queued already.
            JobTooLargeError: the job's estimated memory or compute is above
                ``StoreSettings.max_job_gb`` or ``StoreSettings.max_job_tflops``
                (:func:`lrtune.footprint.check_admission`).
        """
        name = name if name is not None else spec.name
        if name is not None and not 1 <= len(name) <= MAX_NAME_LENGTH:
            raise InvalidInputError(f"job name must be 1 to {MAX_NAME_LENGTH} characters")
        spec, upload = self._admit(spec)
        if reuse:
            earlier = self.reusable(spec)
            if earlier is not None:
                record = self.get(earlier.job_id).model_dump()
                return Submission(**record, reused_from=earlier.job_id, recommendation=earlier)
        admission.check_queue_room(self.count(JobStatus.QUEUED), self.settings.max_queued_jobs)
        sizes = self._dataset_sizes(spec, upload)
        if sizes is not None:
            footprint.check_admission(
                spec,
                *sizes,
                max_gb=self.settings.max_job_gb,
                max_tflops=self.settings.max_job_tflops,
            )
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
            needs_cuda=spec.needs_cuda,
            task_name=spec.task.name if spec.task is not None else None,
        )
        with session(self._engine, write=True) as s:
            try:
                hold_upload(s, row.spec.get("dataset") or {})
            except NotFoundError as exc:  # deleted since _admit read it
                raise admission.unknown_upload(exc) from None
            s.add(row)
            s.flush()
            add_event(s, job_id, "submitted", {"status": JobStatus.QUEUED.value})
            s.flush()
            s.refresh(row)
            return Submission(**job_record(row).model_dump())

    def _admit(self, spec: JobSpec) -> tuple[JobSpec, DatasetUpload | None]:
        """Run the admission checks that need the registry (:mod:`lrtune.jobs.admission`);
        return the spec as admitted (a task's completed from what its workers published) and
        its uploaded dataset's row, if it trains on one."""
        admission.check_text(spec)
        if spec.task is not None:
            return admission.admitted_task(spec, self.known_registry), None
        upload_id = admission.upload_id_of(spec)
        upload = None
        if upload_id is not None:
            try:
                upload = self.uploads.get(upload_id)
            except NotFoundError as exc:
                raise admission.unknown_upload(exc) from None
        admission.check_registry(spec, workers_registry=self.known_registry, upload=upload)
        return spec, upload

    def estimate(self, spec: JobSpec) -> footprint.Footprint | None:
        """The job's estimated memory and compute (:func:`lrtune.footprint.estimate`), from its
        dataset's shapes (a built-in's, or an upload's stored ones); ``None`` when they are not
        known here (a plugin's model or dataset, params that do not validate, a missing upload).
        """
        sizes = self._dataset_sizes(spec)
        return None if sizes is None else footprint.estimate(spec, *sizes)

    def _dataset_sizes(
        self, spec: JobSpec, upload: DatasetUpload | None = None
    ) -> tuple[tuple[tuple[int, ...], int], int | None] | None:
        """``((input_shape, output_dim), n_samples)`` of the spec's dataset, or ``None``; an
        uploaded dataset's from ``upload`` when given, else read from the store; ``None`` for
        a task's data, which only its code knows."""
        dataset = spec.dataset
        if dataset is None:
            return None
        max_samples = dataset.params.get("max_samples")
        cap = max_samples if isinstance(max_samples, int) and max_samples > 0 else None
        if dataset.name == UPLOADED:
            upload_id = admission.upload_id_of(spec)
            if upload is None and upload_id is not None:
                with contextlib.suppress(NotFoundError):
                    upload = self.uploads.get(upload_id)
            if upload is None:
                return None
            samples = upload.x_shape[0]
            shapes = (upload.input_shape, upload.output_dim)
        else:
            try:
                shapes = dataset_shapes(dataset.name, dataset.params)
            except InvalidInputError:
                return None
            if shapes is None:
                return None
            samples = footprint.dataset_samples(dataset.name, dataset.params)
        if samples is not None and cap is not None:
            samples = min(samples, cap)
        return shapes, samples

    def get(self, job_id: str) -> JobRecord:
        """The job ``job_id``; :class:`NotFoundError` if there is none."""
        with session(self._engine, write=False) as s:
            return job_record(find_job(s, job_id))

    def status(self, job_id: str) -> JobStatus:
        """The status of the job whose id is ``job_id`` (the whole id, no prefix): one column,
        not the record :meth:`get` builds; what a worker asks while it trains (twice a second).
        On PostgreSQL one round trip on the process's held connection
        (:func:`lrtune._rdb.held_connection`).

        Raises:
            NotFoundError: no job has that id.
        """
        query = select(tables.Job.status).where(tables.Job.id == job_id)
        if self._engine.dialect.name == "postgresql":
            with translate_errors(self._engine):
                statuses = held_connection(self._engine).read(
                    lambda connection: list(connection.scalars(query))
                )
            status = statuses[0] if statuses else None
        else:
            with reading(self._engine) as connection:
                status = connection.scalar(query)
        if status is None:
            raise NotFoundError(f"no job {job_id!r} in the job store")
        return JobStatus(status)

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 50, after: str | None = None
    ) -> JobPage:
        """Jobs newest first, ``limit`` a page, optionally only those in ``status``.

        ``after`` is the ``next_after`` of the previous page (a job id): pages are keyed on
        the jobs' ``submit_seq``, so jobs submitted while a client pages through neither shift
        nor repeat what it has not seen yet. A job whose stored record cannot be read back
        (:class:`UnreadableRecordError`) is left out of ``data`` and named in ``unreadable``.
        """
        check_limit(limit)
        wanted = parse_status(status) if status is not None else None
        query = select(tables.Job)
        if wanted is not None:
            query = query.where(tables.Job.status == wanted.value)
        with session(self._engine, write=False) as s:
            if after is not None:
                cursor = find_job(s, after)
                query = query.where(tables.Job.submit_seq < cursor.submit_seq)
            order = tables.Job.submit_seq.desc()
            rows = s.scalars(query.order_by(order).limit(limit + 1)).all()
            page, unreadable = readable_records(rows[:limit])
        next_after = rows[limit - 1].id if len(rows) > limit else None
        return JobPage(data=page, next_after=next_after, unreadable=unreadable)

    def count(self, status: JobStatus | str | None = None) -> int:
        """How many jobs there are, or how many in ``status``: one aggregate read."""
        query = select(func.count()).select_from(tables.Job)
        if status is not None:
            query = query.where(tables.Job.status == parse_status(status).value)
        with session(self._engine, write=False) as s:
            return int(s.scalar(query) or 0)

    def unfinished_task_jobs(self, tasks: Collection[str], job_id: str | None = None) -> int:
        """How many jobs of ``tasks`` (only ``job_id``, if given) have not finished: work an
        agent of those tasks may still get, once a range test or a search ends elsewhere."""
        unfinished = [status.value for status in JobStatus if not status.finished]
        query = (
            select(func.count())
            .select_from(tables.Job)
            .where(tables.Job.task_name.in_(sorted(tasks)), tables.Job.status.in_(unfinished))
        )
        if job_id is not None:
            query = query.where(tables.Job.id.startswith(job_id))
        with session(self._engine, write=False) as s:
            return int(s.scalar(query) or 0)

    def stats(self) -> JobStats:
        """Jobs by state, finished units summed over the jobs' progress, the oldest queued
        job's age, the workers holding a lease and the live workers; times by the database's
        clock."""
        job = tables.Job
        with session(self._engine, write=False) as s:
            now = utc(s.scalar(select(tables.utcnow())))
            counts = dict(s.execute(select(job.status, func.count()).group_by(job.status)).all())
            oldest = s.scalar(select(func.min(job.created_at)).where(job.status == "queued"))
            holders = s.scalar(
                select(func.count(func.distinct(job.holder_worker_id))).where(
                    job.holder_worker_id.is_not(None), job.lease_expires_at > tables.utcnow()
                )
            )
            trials = confirmations = 0
            for (progress,) in s.execute(select(job.progress)):
                trials += int((progress or {}).get("trials_done", 0))
                confirmations += int((progress or {}).get("confirmations_done", 0))
        return JobStats(
            by_state={state: int(counts.get(state, 0)) for state in tables.JOB_STATUSES},
            trials_done=trials,
            confirmations_done=confirmations,
            queue_age_s=max(0.0, (now - utc(oldest)).total_seconds()) if oldest else 0.0,
            lease_holders=int(holders or 0),
            live_workers=len(self.list_workers().data),
        )

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job that has not finished; :class:`ConflictError` if it has."""
        with session(self._engine, write=True) as s:
            row = find_job(s, job_id, for_update=True)
            job_id, was = row.id, JobStatus(row.status)
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
            add_event(s, job_id, "status", {"from": was.value, "to": JobStatus.CANCELLED.value})
            s.flush()
            s.refresh(row)
        return job_record(row)  # after the commit: an unreadable job is cancelled all the same

    def events(self, job_id: str, after_id: int = 0, limit: int = 100) -> list[JobEvent]:
        """The job's events with ids above ``after_id``, oldest first, at most ``limit``."""
        check_limit(limit)
        with session(self._engine, write=False) as s:
            job_id = find_job(s, job_id).id
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
            # locking the job's row serialises its events: ids in commit order
            job_id = find_job(s, job_id, for_update=True).id
            row = add_event(s, job_id, kind, payload)
            s.flush()
            s.refresh(row)
            return JobEvent.model_validate(row, from_attributes=True)

    def delete(self, job_id: str) -> str:
        """Delete a finished job with its results, events, Optuna study and checkpoints;
        return its id (``job_id`` may be a prefix of it).

        The checkpoints are the job's folder under ``StoreSettings.artifact_dir``
        (:meth:`checkpoint_dir`); they go after the job's rows, so a delete that fails
        leaves them to a job that still exists.

        Raises:
            NotFoundError: no such job.
            ConflictError: the job has not finished (cancel it first).
        """
        with session(self._engine, write=True) as s:
            row = find_job(s, job_id, for_update=True)
            job_id = row.id
            if not JobStatus(row.status).finished:
                raise ConflictError(f"job {job_id} is {row.status}: cancel it before deleting it")
            study_name = row.study_name
            s.execute(delete(tables.Job).where(tables.Job.id == job_id))
        self._delete_study(study_name)
        remove_checkpoints(self.settings.checkpoint_dir(study_name))
        return job_id

    def checkpoint_dir(self, job_id: str) -> Path:
        """Where workers keep the job's checkpoints (under ``StoreSettings.artifact_dir``)."""
        return self.settings.checkpoint_dir(self.get(job_id).study_name)

    def prune(
        self,
        older_than: timedelta,
        statuses: Iterable[JobStatus | str] = FINISHED_STATUSES,
    ) -> list[str]:
        """Delete the jobs in ``statuses`` that finished more than ``older_than`` ago.

        Each goes as with :meth:`delete` (results, events, study, checkpoints); ages are by
        the database's clock. Returns the deleted jobs' ids, oldest first.

        Raises:
            InvalidInputError: ``older_than`` is negative, or a status is not a final one.
        """
        wanted = [parse_status(status) for status in statuses]
        unfinished = [status.value for status in wanted if not status.finished]
        if unfinished:
            raise InvalidInputError(
                f"only finished jobs can be pruned, not {', '.join(unfinished)}: use "
                + ", ".join(status.value for status in FINISHED_STATUSES)
            )
        if older_than < timedelta(0):
            raise InvalidInputError(f"older_than must not be negative, got {older_than}")
        cutoff = tables.utc_after(-older_than.total_seconds())
        query = (
            select(tables.Job.id)
            .where(
                tables.Job.status.in_([status.value for status in wanted]),
                tables.Job.finished_at < cutoff,
            )
            .order_by(tables.Job.submit_seq)
        )
        with session(self._engine, write=False) as s:
            job_ids = s.scalars(query).all()
        deleted = []
        for job_id in job_ids:
            try:
                self.delete(job_id)
            except NotFoundError:  # deleted meanwhile by someone else
                continue
            deleted.append(job_id)
        return deleted

    def _delete_study(self, study_name: str) -> None:
        """Delete the job's Optuna study if one was created (imports Optuna only then)."""
        with session(self._engine, write=False) as s:
            logged = s.execute(select(tables.JOURNAL_LOG.c.number).limit(1)).first()
        if logged is None:  # no study in this database yet
            return
        import optuna

        from lrtune.optuna_storage import open_storage

        if self._studies is None:  # opened once: it replays the whole journal
            self._studies = open_storage(self.url, heartbeat_interval=None)
        with contextlib.suppress(KeyError):  # KeyError: the job never reached its search
            optuna.delete_study(study_name=study_name, storage=self._studies)


def _check_exists(url: str) -> None:
    """Raise :class:`NotFoundError` if ``url`` names a SQLite file that is not there (opening
    it would create it); any other database is the server's to refuse."""
    parsed = parse_url(url)
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:" or Path(database).exists():
        return
    raise NotFoundError(
        f"no job store at {safe_url(url)}: {Path(database).absolute()} does not exist (nothing "
        "was submitted there); name the one lrtune serve or submit used with --database URL "
        "or LRTUNE_DATABASE_URL"
    )


def remove_checkpoints(folder: Path) -> None:
    """Remove one job's checkpoint folder, if there is one (what cannot be removed stays)."""
    shutil.rmtree(folder, ignore_errors=True)
