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

Every method that takes a job id also takes a unique prefix of one (the dashboard shows ids'
first 8 characters): a prefix that no id starts with is a
:class:`~lrtune.exceptions.NotFoundError`, one that several start with an
:class:`~lrtune.exceptions.InvalidInputError` that says how many (:func:`_find` resolves it,
for every method).

Contract (who may change a job, in which state):

- :meth:`JobStore.submit` admits the spec (:mod:`lrtune.jobs.admission`, the same checks for
  every way in) and creates a job ``queued``, with no holder and fencing token 0, unless reuse
  (the default) finds an earlier succeeded job that already answers the spec
  (:meth:`JobStore.reusable`): then nothing is created and that job is the answer.
- The exclusive phases (``finding``: preparing the study and the range test; writing the
  recommendation, while ``confirming``) belong to the one worker holding the job's lease
  (``holder_worker_id`` until ``lease_expires_at``, by the database's clock). Every change of
  holder increases ``fencing_token``, and every write a worker makes under the lease is
  conditional on the token it was given: :meth:`JobStore.renew`, :meth:`JobStore.advance` and
  :meth:`JobStore.release` raise :class:`~lrtune.exceptions.LeaseLost` when it moved on (the
  lease expired and another worker claimed the job, or the job was cancelled), and the worker
  must stop working on the job. A lease that expired but that nobody has claimed yet is still
  its holder's: renewing it succeeds.
- Jobs are queued in the order they were submitted (``submit_seq``, which grows with every
  submit, even within one clock tick): claims, :meth:`JobStore.shared_jobs` and
  :meth:`JobStore.list` order by it.
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
  study (its own trial queue and heartbeat), not through this lease. Entering ``searching``
  records ``search_started_at`` (the database's clock), from which ``search.timeout_s``
  counts (:meth:`JobStore.searching_for_s`). A worker pops a unit only under the job's
  :meth:`JobStore.unit_lock` (held for the count and the pop, milliseconds: not a lease), so
  at most ``search.max_parallel`` units of a job run at once.
- A job whose spec needs CUDA (``device`` ``cuda`` or ``cuda:N``: the ``needs_cuda`` column,
  set at submit) is claimed, and listed by :meth:`JobStore.shared_jobs`, only for a worker
  that passes a CUDA ``device``; a CPU worker skips it and takes the next job.
- Results: the ``finding`` holder stores the job's completed range test and LR bounds
  (:meth:`JobStore.save_range_test`, under its lease, once per job) before the job starts
  searching; the ``confirming`` holder stores the recommendation
  (:meth:`JobStore.save_recommendation`) before it succeeds.
- Progress: a lease holder reports with its lease; any worker running a shared job's units
  reports after each finished unit, without one (:meth:`JobStore.record_progress`). The
  store merges each report into what it has, count by count, so progress never goes
  backwards however reports race, and each report that moves it appends a ``progress``
  event.
- Anyone may :meth:`JobStore.cancel` a job that has not finished: it becomes ``cancelled``,
  loses its holder and its fencing token grows, so no worker's later write lands. Cancelling a
  finished job is a :class:`~lrtune.exceptions.ConflictError`.
- ``succeeded``, ``failed`` and ``cancelled`` are final. Only a finished job may be
  :meth:`JobStore.delete`-d; deleting removes its results, events, Optuna study and
  checkpoints (its folder under ``Settings.artifact_dir``; the worker that writes a job's
  success removes them then). :meth:`JobStore.prune` deletes the jobs finished longer ago
  than a given age.
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
import contextlib
import fcntl
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import and_, delete, func, inspect, not_, or_, select, text, true, update
from sqlalchemy.orm import Session

from lrtune import footprint
from lrtune._rdb import parse_url
from lrtune.exceptions import (
    ConflictError,
    InvalidInputError,
    LeaseLost,
    NotFoundError,
    UnreadableRecordError,
    describe_validation_error,
)
from lrtune.jobs import admission, matching, tables
from lrtune.jobs.db import get_engine, reading, safe_url, session
from lrtune.jobs.schema import ensure_current
from lrtune.jobs.schemas import (
    RESULT_FORMAT_VERSION,
    SPEC_FORMAT_VERSION,
    DatasetUpload,
    JobEvent,
    JobPage,
    JobProgress,
    JobRecord,
    JobStats,
    JobStatus,
    Lease,
    PluginRegistry,
    Provenance,
    RecommendationMatch,
    StoredRangeTest,
    StoredRecommendation,
    Submission,
    WorkerActivity,
    WorkerList,
    WorkerRecord,
    WorkerRegistration,
)
from lrtune.jobs.settings import LIVE_HEARTBEATS, Settings
from lrtune.jobs.uploads import UPLOADED, DatasetUploads, dataset_identity, hold_upload
from lrtune.recommendation import Recommendation
from lrtune.registry import dataset_shapes
from lrtune.result import LRBounds, LRFinderResult
from lrtune.spec import JobSpec, SearchSpec

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
FINISHED_STATUSES = tuple(status for status in JobStatus if status.finished)


class JobStore:
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
        self, url: str | None = None, *, settings: Settings | None = None, create: bool = True
    ) -> None:
        settings = settings or Settings.from_env()
        self.settings = settings
        self.url = url or settings.database_url
        if not create:
            _check_exists(self.url)
        self._engine = get_engine(self.url, settings)
        ensure_current(self.url)
        self.uploads = DatasetUploads(self._engine)
        """The uploaded datasets (:mod:`lrtune.jobs.uploads`)."""

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
            QueueFullError: ``Settings.max_queued_jobs`` jobs are queued already.
            JobTooLargeError: the job's estimated memory or compute is above
                ``Settings.max_job_gb`` or ``Settings.max_job_tflops``
                (:func:`lrtune.footprint.check_admission`).
        """
        name = name if name is not None else spec.name
        if name is not None and not 1 <= len(name) <= MAX_NAME_LENGTH:
            raise InvalidInputError(f"job name must be 1 to {MAX_NAME_LENGTH} characters")
        upload = self._admit(spec)
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
        )
        with session(self._engine, write=True) as s:
            try:
                hold_upload(s, row.spec["dataset"])
            except NotFoundError as exc:  # deleted since _admit read it
                raise admission.unknown_upload(exc) from None
            s.add(row)
            s.flush()
            _add_event(s, job_id, "submitted", {"status": JobStatus.QUEUED.value})
            s.flush()
            s.refresh(row)
            return Submission(**_job_record(row).model_dump())

    def _admit(self, spec: JobSpec) -> DatasetUpload | None:
        """Run the admission checks that need the registry (:mod:`lrtune.jobs.admission`);
        return the spec's uploaded dataset's row, if it trains on one."""
        admission.check_text(spec)
        upload_id = admission.upload_id_of(spec)
        upload = None
        if upload_id is not None:
            try:
                upload = self.uploads.get(upload_id)
            except NotFoundError as exc:
                raise admission.unknown_upload(exc) from None
        admission.check_registry(spec, registry_of_workers=self.known_registry(), upload=upload)
        return upload

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
        uploaded dataset's from ``upload`` when given, else read from the store."""
        dataset = spec.dataset
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

    def reusable(self, spec: JobSpec) -> StoredRecommendation | None:
        """The newest recommendation that answers ``spec`` as a new job would, if any.

        It must be a succeeded job's, with the same fingerprint (:meth:`JobSpec.fingerprint`),
        the same search configuration (``search.max_parallel`` aside: it changes how many
        workers share the search, not what it tries) and the current result format
        (``RESULT_FORMAT_VERSION``).
        """
        wanted = _answer_config(spec.search)
        query = (
            select(tables.Recommendation)
            .join(tables.Job, tables.Job.id == tables.Recommendation.job_id)
            .where(
                tables.Recommendation.fingerprint == spec.fingerprint(),
                tables.Recommendation.format_version == RESULT_FORMAT_VERSION,
                tables.Job.status == JobStatus.SUCCEEDED.value,
            )
            .order_by(tables.Recommendation.created_at.desc(), tables.Recommendation.id.desc())
            .limit(MAX_PAGE)
        )
        with session(self._engine, write=False) as s:
            for row in s.scalars(query):
                stored = row.search_config and SearchSpec.model_validate(row.search_config)
                if stored and _answer_config(stored) == wanted:
                    return _stored_recommendation(row)
        return None

    def warm_start_candidates(
        self, spec: JobSpec, limit: int = 3
    ) -> builtins.list[StoredRecommendation]:
        """Recommendations of recent succeeded jobs close to ``spec``, newest first.

        Close: the same model and dataset names (and for an uploaded dataset the same upload),
        but another fingerprint (other params, batch size, optimizer or param groups), in the
        current result format, with a recommended schedule. A new job's preparing worker
        enqueues their winners first (:func:`lrtune.tuner.prepare_study`). The newest
        ``MAX_PAGE`` succeeded recommendations are looked through (the names live in the
        spec's JSON).
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be 1 to {MAX_PAGE}, got {limit}")
        query = (
            select(tables.Recommendation, tables.Job.spec)
            .join(tables.Job, tables.Job.id == tables.Recommendation.job_id)
            .where(
                tables.Recommendation.fingerprint != spec.fingerprint(),
                tables.Recommendation.format_version == RESULT_FORMAT_VERSION,
                tables.Job.status == JobStatus.SUCCEEDED.value,
            )
            .order_by(tables.Recommendation.created_at.desc(), tables.Recommendation.id.desc())
            .limit(MAX_PAGE)
        )
        names = (spec.model.name, dataset_identity(spec.dataset.model_dump()))
        found: builtins.list[StoredRecommendation] = []
        with session(self._engine, write=False) as s:
            for row, stored_spec in s.execute(query):
                stored_names = (
                    stored_spec["model"]["name"],
                    dataset_identity(stored_spec["dataset"]),
                )
                if stored_names != names:
                    continue
                stored = _stored_recommendation(row)
                if stored.recommendation.best is not None:
                    found.append(stored)
                if len(found) == limit:
                    break
        return found

    def searching_for_s(self, job_id: str) -> float | None:
        """Seconds since the job entered ``searching``, by the database's clock (None: never).

        What a job's ``search.timeout_s`` is counted against, the same on every worker.
        """
        query = select(tables.Job.search_started_at, tables.utcnow()).where(tables.Job.id == job_id)
        with session(self._engine, write=False) as s:
            row = s.execute(query).one_or_none()
        if row is None:
            raise NotFoundError(f"no job {job_id!r} in the job store")
        started, now = row
        if started is None:
            return None
        return (_utc(now) - _utc(started)).total_seconds()

    @contextlib.contextmanager
    def unit_lock(self, job_id: str) -> Iterator[None]:
        """Hold the job's unit lock for the block: one process at a time hands out its units.

        Not a lease: it is held only while a worker counts the job's running units and pops
        the next one (milliseconds), so that ``search.max_parallel`` is exact. PostgreSQL: a
        transaction-level advisory lock (``pg_advisory_xact_lock``), which a dead process's
        connection gives up. SQLite: an exclusive ``flock`` on a file beside the database
        (``<database>.units.lock``; SQLite is one machine's), held by the open file, which
        the kernel releases when a process dies. An in-memory SQLite database: a lock in
        this process.
        """
        if self._engine.dialect.name == "postgresql":
            with session(self._engine, write=False) as s:
                s.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                    {"key": f"lrtune-units:{job_id}"},
                )
                yield
            return
        database = self._engine.url.database
        if self._engine.dialect.name != "sqlite" or not database or database == ":memory:":
            with _process_lock(self.url, job_id):
                yield
            return
        with open(f"{database}.units.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get(self, job_id: str) -> JobRecord:
        """The job ``job_id``; :class:`NotFoundError` if there is none."""
        with session(self._engine, write=False) as s:
            return _job_record(_find(s, job_id))

    def list(
        self, status: JobStatus | str | None = None, limit: int = 50, after: str | None = None
    ) -> JobPage:
        """Jobs newest first, ``limit`` a page, optionally only those in ``status``.

        ``after`` is the ``next_after`` of the previous page (a job id): pages are keyed on
        the jobs' ``submit_seq``, so jobs submitted while a client pages through neither shift
        nor repeat what it has not seen yet. A job whose stored record cannot be read back
        (:class:`UnreadableRecordError`) is left out of ``data`` and named in ``unreadable``.
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
                query = query.where(tables.Job.submit_seq < cursor.submit_seq)
            order = tables.Job.submit_seq.desc()
            rows = s.scalars(query.order_by(order).limit(limit + 1)).all()
            page, unreadable = _readable_records(rows[:limit])
        next_after = rows[limit - 1].id if len(rows) > limit else None
        return JobPage(data=page, next_after=next_after, unreadable=unreadable)

    def count(self, status: JobStatus | str | None = None) -> int:
        """How many jobs there are, or how many in ``status``: one aggregate read."""
        query = select(func.count()).select_from(tables.Job)
        if status is not None:
            query = query.where(tables.Job.status == _status(status).value)
        with session(self._engine, write=False) as s:
            return int(s.scalar(query) or 0)

    def stats(self) -> JobStats:
        """Jobs by state, finished units summed over the jobs' progress, the oldest queued
        job's age, the workers holding a lease and the live workers; times by the database's
        clock."""
        job = tables.Job
        with session(self._engine, write=False) as s:
            now = _utc(s.scalar(select(tables.utcnow())))
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
            queue_age_s=max(0.0, (now - _utc(oldest)).total_seconds()) if oldest else 0.0,
            lease_holders=int(holders or 0),
            live_workers=len(self.list_workers().data),
        )

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job that has not finished; :class:`ConflictError` if it has."""
        with session(self._engine, write=True) as s:
            row = _find(s, job_id, for_update=True)
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
            _add_event(s, job_id, "status", {"from": was.value, "to": JobStatus.CANCELLED.value})
            s.flush()
            s.refresh(row)
        return _job_record(row)  # after the commit: an unreadable job is cancelled all the same

    def events(self, job_id: str, after_id: int = 0, limit: int = 100) -> builtins.list[JobEvent]:
        """The job's events with ids above ``after_id``, oldest first, at most ``limit``."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be 1 to {MAX_PAGE}, got {limit}")
        with session(self._engine, write=False) as s:
            job_id = _find(s, job_id).id
            rows = s.scalars(
                select(tables.JobEvent)
                .where(tables.JobEvent.job_id == job_id, tables.JobEvent.id > after_id)
                .order_by(tables.JobEvent.id)
                .limit(limit)
            ).all()
            return [JobEvent.model_validate(row, from_attributes=True) for row in rows]

    def shared_jobs(
        self, limit: int = 50, *, device: str | None = None
    ) -> builtins.list[JobRecord]:
        """Jobs in a shared phase (``searching``, ``confirming``), oldest first: a read.

        A free worker helps the first of them that has a unit it may take, so one huge job
        does not starve the ones submitted after it. ``device`` is the asking worker's (as in
        :meth:`claim`): a CPU worker is not shown jobs that need CUDA. A job whose stored
        record cannot be read back is left out (no worker could run it).
        """
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be 1 to {MAX_PAGE}, got {limit}")
        shared = [JobStatus.SEARCHING.value, JobStatus.CONFIRMING.value]
        query = (
            select(tables.Job)
            .where(tables.Job.status.in_(shared), _servable_by(device))
            .order_by(tables.Job.submit_seq)
            .limit(limit)
        )
        with session(self._engine, write=False) as s:
            return _readable_records(s.scalars(query).all())[0]

    def append_event(self, job_id: str, kind: str, payload: dict[str, Any]) -> JobEvent:
        """Add an event to the job's feed and return it (with its id, the reader's cursor)."""
        with session(self._engine, write=True) as s:
            # locking the job's row serialises its events: ids in commit order
            job_id = _find(s, job_id, for_update=True).id
            row = _add_event(s, job_id, kind, payload)
            s.flush()
            s.refresh(row)
            return JobEvent.model_validate(row, from_attributes=True)

    def claim(
        self,
        worker_id: str,
        lease_s: float,
        *,
        job_id: str | None = None,
        device: str | None = None,
    ) -> Lease | None:
        """Take a job's exclusive phase for ``lease_s`` seconds; ``None`` if there is none.

        Without ``job_id``: the oldest job that is ``queued`` (it becomes ``finding``) or whose
        lease expired while ``finding`` or ``confirming``. With ``job_id``: that job, if it is
        unfinished and no live lease holds it. ``device`` is the claiming worker's (``cpu``,
        ``cuda:0``): a worker whose device is not CUDA never takes a job that needs CUDA
        (``spec.device`` ``cuda`` or ``cuda:N``), and skips to the next; ``None`` takes any.
        Atomic across workers (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, an IMMEDIATE
        transaction on SQLite): each job has one holder.
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
                job_id = _find(s, job_id).id
            while True:
                row = s.scalars(_claim_query(job_id, device)).first()
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
            _write(s, lease, row, was, values, progress)
        return _job_record(row)

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
            _write(s, lease, row, was, values, progress)
            if "status" not in values:
                _add_event(s, lease.job_id, "released", {"worker_id": lease.worker_id})
        return _job_record(row)  # after the commit: an unreadable job is failed all the same

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

    def record_progress(
        self,
        job_id: str,
        progress: JobProgress,
        *,
        lease: Lease | None = None,
        points: builtins.list[tuple[float, float, int]] | None = None,
    ) -> JobRecord:
        """Merge a worker's progress report into the job's (:meth:`JobProgress.merged`).

        Any worker may report on a job in a shared phase (no lease); the holder of an
        exclusive phase passes its ``lease``, and the write then lands only while the lease
        holds (:class:`~lrtune.exceptions.LeaseLost` otherwise). A report that moves nothing
        forward writes nothing; one that does appends a ``progress`` event holding the merged
        progress. ``points`` (the range test's new ``(lr, smoothed loss, seed)`` points since
        the last report) follow it in a ``range_test_points`` event (``{"points": [...]}``):
        the live feed draws the curve growing from them; they are not kept elsewhere, since the
        stored range test has every point once it is complete.
        Returns the job as stored after the write (so the caller also learns whether it was
        cancelled meanwhile).

        Raises:
            NotFoundError: no job ``job_id``.
            LeaseLost: ``lease`` no longer holds the job; nothing was written.
        """
        if lease is not None and lease.job_id != job_id:
            raise InvalidInputError(f"the lease is for job {lease.job_id}, not {job_id}")
        with session(self._engine, write=True) as s:
            row = _fenced(s, lease) if lease is not None else _find(s, job_id, for_update=True)
            job_id = row.id
            stored = JobProgress.model_validate(row.progress)
            merged = stored.merged(progress)
            if merged != stored:
                as_json = merged.model_dump(mode="json")
                fenced = [] if lease is None else [tables.Job.fencing_token == lease.fencing_token]
                s.execute(
                    update(tables.Job)
                    .where(tables.Job.id == job_id, *fenced)
                    .values(progress=as_json, updated_at=tables.utcnow())
                )
                _add_event(s, job_id, "progress", as_json)
                if points:
                    curve = {"points": [list(point) for point in points]}
                    _add_event(s, job_id, "range_test_points", curve)
                s.flush()
                s.refresh(row)
        return _job_record(row)

    def save_range_test(
        self,
        job_id: str,
        range_test: LRFinderResult,
        bounds: LRBounds,
        provenance: Provenance,
        *,
        lease: Lease | None = None,
    ) -> StoredRangeTest:
        """Store the job's completed range test and the LR bounds drawn from it.

        One per job: a second is a :class:`ConflictError`. A worker passes its ``lease``, as
        for :meth:`save_recommendation`.
        """
        if lease is not None and lease.job_id != job_id:
            raise InvalidInputError(f"the lease is for job {lease.job_id}, not {job_id}")
        result = {
            "range_test": range_test.model_dump(mode="json"),
            "bounds": bounds.model_dump(mode="json"),
        }
        with session(self._engine, write=True) as s:
            job = _fenced(s, lease) if lease is not None else _find(s, job_id, for_update=True)
            row = tables.RangeTest(
                job_id=job.id, format_version=RESULT_FORMAT_VERSION, result=result,
                **_provenance_columns(provenance),
            )  # fmt: skip
            s.add(row)
            s.flush()
            s.refresh(row)
            return _stored_range_test(row)

    def range_test(self, job_id: str) -> StoredRangeTest:
        """The range test a job stored (from the moment it starts searching).

        Raises:
            NotFoundError: no job has this id, or the job has not completed its range test.
        """
        job = self.get(job_id)  # NotFoundError for an unknown id
        query = select(tables.RangeTest).where(tables.RangeTest.job_id == job.id)
        with session(self._engine, write=False) as s:
            row = s.scalars(query).first()
            if row is None:
                raise NotFoundError(
                    f"job {job.id!r} has no range test yet: it is {job.status.value} (a job "
                    "stores its range test when it starts searching)"
                )
            return _stored_range_test(row)

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
                job_id=job.id,
                fingerprint=job.fingerprint,
                format_version=RESULT_FORMAT_VERSION,
                result=recommendation.model_dump(mode="json"),
                **_provenance_columns(provenance),
            )
            s.add(row)
            s.flush()
            s.refresh(row)
            return _stored_recommendation(row)

    def recommendation(self, job_id: str) -> StoredRecommendation:
        """The recommendation a job wrote; for a job that ended before writing one (cancelled,
        failed), its best finished search trial as a provisional one (:meth:`best_so_far`).

        Raises:
            NotFoundError: no job has this id, or the job has written no recommendation (yet)
                and, if it ended, finished no search trial.
        """
        job = self.get(job_id)  # NotFoundError for an unknown id
        query = (
            select(tables.Recommendation)
            .where(tables.Recommendation.job_id == job.id)
            .order_by(tables.Recommendation.created_at.desc(), tables.Recommendation.id.desc())
            .limit(1)
        )
        with session(self._engine, write=False) as s:
            row = s.scalars(query).first()
            if row is not None:
                return _stored_recommendation(row)
        provisional = self.best_so_far(job) if job.status.finished else None
        if provisional is None:
            detail = ", and finished no search trial" if job.status.finished else ""
            raise NotFoundError(
                f"job {job.id!r} has no recommendation: it is {job.status.value}{detail}"
            )
        return provisional

    def best_so_far(self, job: JobRecord) -> StoredRecommendation | None:
        """The best finished search trial of ``job`` as a provisional, unconfirmed
        recommendation (:func:`lrtune.study_view.read_best_so_far`); None without one."""
        from lrtune import __version__
        from lrtune.study_view import open_reader, read_best_so_far

        if not inspect(self._engine).has_table("studies"):
            return None
        rec = read_best_so_far(open_reader(self.url), job.study_name)
        if rec is None:
            return None
        provenance = Provenance(
            lrtune_version=__version__,
            rule=rec.range_test.consensus.suggestion.rule,  # the suggestion its bounds used
            lr_min=rec.bounds.low,
            lr_max=rec.bounds.high,
            device="unknown",
            search=job.spec.search,
        )
        return StoredRecommendation(
            job_id=job.id,
            fingerprint=job.fingerprint,
            format_version=RESULT_FORMAT_VERSION,
            provenance=provenance,
            recommendation=rec,
            created_at=job.finished_at or job.updated_at,
        )

    def latest_recommendation(self, fingerprint: str) -> StoredRecommendation | None:
        """The newest recommendation of a succeeded job with this fingerprint, if any."""
        query = _latest_recommendation_query(tables.Recommendation, fingerprint)
        with session(self._engine, write=False) as s:
            row = s.scalars(query).first()
            return _stored_recommendation(row) if row is not None else None

    def find_recommendation(
        self,
        *,
        fingerprint: str | None = None,
        model: str | None = None,
        dataset: str | None = None,
        optimizer: str | None = None,
        batch_size: int | None = None,
    ) -> RecommendationMatch:
        """A stored recommendation by fingerprint, or by model and dataset names (optionally
        the optimizer and batch size): how :mod:`lrtune.jobs.matching` answers "what LR should
        I use", the same for ``GET /v1/recommendations`` and ``lrtune recommend``.

        Raises:
            InvalidInputError: neither a fingerprint nor both names, or both kinds of query.
            NotFoundError: nothing matches; the message says what to submit.
        """
        names = (model, dataset, optimizer, batch_size)
        if fingerprint is not None:
            if any(value is not None for value in names):
                raise InvalidInputError(
                    "give either a fingerprint or model and dataset names, not both"
                )
            return matching.match_fingerprint(self, fingerprint)
        if model is None or dataset is None:
            raise InvalidInputError("give a fingerprint, or both model and dataset names")
        return matching.match_names(self, model, dataset, optimizer, batch_size)

    def latest_recommendation_job(self, fingerprint: str) -> str | None:
        """The id of the job whose recommendation :meth:`latest_recommendation` returns, if
        any: one indexed read of an id, nothing decoded (a job has one recommendation, which
        never changes, so a reader may keep it by this id)."""
        query = _latest_recommendation_query(tables.Recommendation.job_id, fingerprint)
        with reading(self._engine) as connection:
            return connection.execute(query).scalar()

    def latest_succeeded_job(self, model: str, dataset: str, max_scanned: int) -> str | None:
        """The id of the newest succeeded job whose spec names this model and dataset, looking
        through the newest ``max_scanned`` succeeded jobs (their specs' names only: no record is
        built)."""
        query = (
            select(tables.Job.id, tables.Job.spec)
            .where(tables.Job.status == JobStatus.SUCCEEDED.value)
            .order_by(tables.Job.submit_seq.desc())
            .limit(max_scanned)
        )
        with session(self._engine, write=False) as s:
            for job_id, spec in s.execute(query):
                if (spec["model"]["name"], spec["dataset"]["name"]) == (model, dataset):
                    return job_id
        return None

    def delete(self, job_id: str) -> str:
        """Delete a finished job with its results, events, Optuna study and checkpoints;
        return its id (``job_id`` may be a prefix of it).

        The checkpoints are the job's folder under ``Settings.artifact_dir``
        (:meth:`checkpoint_dir`); they go after the job's rows, so a delete that fails
        leaves them to a job that still exists.

        Raises:
            NotFoundError: no such job.
            ConflictError: the job has not finished (cancel it first).
        """
        with session(self._engine, write=True) as s:
            row = _find(s, job_id, for_update=True)
            job_id = row.id
            if not JobStatus(row.status).finished:
                raise ConflictError(f"job {job_id} is {row.status}: cancel it before deleting it")
            study_name = row.study_name
            s.execute(delete(tables.Job).where(tables.Job.id == job_id))
        self._delete_study(study_name)
        remove_checkpoints(self.settings.checkpoint_dir(study_name))
        return job_id

    def checkpoint_dir(self, job_id: str) -> Path:
        """Where workers keep the job's checkpoints (by this store's ``Settings.artifact_dir``)."""
        return self.settings.checkpoint_dir(self.get(job_id).study_name)

    def prune(
        self,
        older_than: timedelta,
        statuses: Iterable[JobStatus | str] = FINISHED_STATUSES,
    ) -> builtins.list[str]:
        """Delete the jobs in ``statuses`` that finished more than ``older_than`` ago.

        Each goes as with :meth:`delete` (results, events, study, checkpoints); ages are by
        the database's clock. Returns the deleted jobs' ids, oldest first.

        Raises:
            InvalidInputError: ``older_than`` is negative, or a status is not a final one.
        """
        wanted = [_status(status) for status in statuses]
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


def _answer_config(search: SearchSpec) -> dict[str, Any]:
    """The search configuration that determines a job's answer (max_parallel does not)."""
    return search.model_dump(mode="json", exclude={"max_parallel"})


_process_locks: dict[tuple[str, str], threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _process_lock(url: str, job_id: str) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault((url, job_id), threading.Lock())


def _status(status: JobStatus | str) -> JobStatus:
    try:
        return JobStatus(status)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidInputError(f"unknown job status {status!r}: use one of {known}") from None


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


def _find(s: Session, job_id: str, *, for_update: bool = False) -> tables.Job:
    """The job whose id is ``job_id``, else the one job whose id starts with it.

    Raises:
        NotFoundError: no job's id is or starts with ``job_id``.
        InvalidInputError: several jobs' ids start with ``job_id``; the message says how many.
    """
    row = s.get(tables.Job, job_id, with_for_update=for_update)
    full_id = _id_starting(s, job_id) if row is None and job_id else None
    if full_id is not None:
        row = s.get(tables.Job, full_id, with_for_update=for_update)
    if row is None:
        raise NotFoundError(f"no job {job_id!r} in the job store")
    return row


def _id_starting(s: Session, prefix: str) -> str | None:
    """The id of the one job whose id starts with ``prefix``; None if none does."""
    starts = tables.Job.id.startswith(prefix, autoescape=True)
    ids = s.scalars(select(tables.Job.id).where(starts).limit(2)).all()
    if len(ids) > 1:
        count = s.scalar(select(func.count()).select_from(tables.Job).where(starts))
        raise InvalidInputError(
            f"job id {prefix!r} is ambiguous: {count} jobs' ids start with it; give more of "
            "the id (lrtune status lists them)"
        )
    return ids[0] if ids else None


def _add_event(s: Session, job_id: str, kind: str, payload: dict[str, Any]) -> tables.JobEvent:
    row = tables.JobEvent(job_id=job_id, kind=kind, payload=payload)
    s.add(row)
    return row


def _check_lease_args(worker_id: str, lease_s: float) -> None:
    if not 1 <= len(worker_id) <= MAX_WORKER_ID_LENGTH:
        raise InvalidInputError(f"worker id must be 1 to {MAX_WORKER_ID_LENGTH} characters")
    if not lease_s > 0:
        raise InvalidInputError(f"lease_s must be a positive number of seconds, got {lease_s}")


def _servable_by(device: str | None) -> Any:
    """The jobs a worker on ``device`` may run: any on CUDA (or unsaid), none needing it else."""
    if device is None or device.startswith("cuda"):
        return true()
    return not_(tables.Job.needs_cuda)


def _claim_query(job_id: str | None, device: str | None = None) -> Any:
    """The oldest claimable job ``device`` can serve, locked for this transaction (others skip
    it)."""
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
        .where(claimable, _servable_by(device))
        .order_by(job.submit_seq)
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
) -> None:
    """One fenced write of a lease holder, with its ``status`` and ``progress`` events; ``row``
    is refreshed (the caller reads the record after its commit)."""
    if progress is not None:
        progress = JobProgress.model_validate(row.progress).merged(progress)
        values["progress"] = progress.model_dump(mode="json")
    if values.get("status") == JobStatus.SEARCHING.value:
        values["search_started_at"] = tables.utcnow()  # search.timeout_s counts from here
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


def _job_record(row: tables.Job) -> JobRecord:
    """The row as a record: the one place a stored job is read back.

    Raises:
        UnreadableRecordError: the stored row no longer validates (its spec was stored before
            lrtune refused what it holds, e.g. params with a lone surrogate).
    """
    try:
        return JobRecord.model_validate(
            {name: getattr(row, name) for name in JobRecord.model_fields}
        )
    except ValidationError as exc:
        fix = "delete it" if JobStatus(row.status).finished else "cancel it, then delete it"
        raise UnreadableRecordError(
            f"job {row.id} is stored but cannot be read back: {describe_validation_error(exc)} "
            f"(it was stored before lrtune refused such jobs): {fix}"
        ) from None


def _readable_records(
    rows: Iterable[tables.Job],
) -> tuple[builtins.list[JobRecord], builtins.list[str]]:
    """The rows that read back as records, and the ids of those that do not."""
    records, unreadable = [], []
    for row in rows:
        try:
            records.append(_job_record(row))
        except UnreadableRecordError:
            unreadable.append(row.id)
    return records, unreadable


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


def remove_checkpoints(folder: Path) -> None:
    """Remove one job's checkpoint folder, if there is one (what cannot be removed stays)."""
    shutil.rmtree(folder, ignore_errors=True)


def _provenance_columns(provenance: Provenance) -> dict[str, Any]:
    return {
        "lrtune_version": provenance.lrtune_version,
        "rule": provenance.rule,
        "lr_min": provenance.lr_min,
        "lr_max": provenance.lr_max,
        "device": provenance.device,
        "search_config": provenance.search and provenance.search.model_dump(mode="json"),
    }


def _provenance(row: tables.RangeTest | tables.Recommendation) -> Provenance:
    return Provenance(
        lrtune_version=row.lrtune_version,
        rule=row.rule,
        lr_min=row.lr_min,
        lr_max=row.lr_max,
        device=row.device,
        search=row.search_config,
    )


def _latest_recommendation_query(what: Any, fingerprint: str) -> Any:
    """``what`` of the newest recommendation of a succeeded job with ``fingerprint``."""
    return (
        select(what)
        .join(tables.Job, tables.Job.id == tables.Recommendation.job_id)
        .where(
            tables.Recommendation.fingerprint == fingerprint,
            tables.Job.status == JobStatus.SUCCEEDED.value,
        )
        .order_by(tables.Recommendation.created_at.desc(), tables.Recommendation.id.desc())
        .limit(1)
    )


def _stored_range_test(row: tables.RangeTest) -> StoredRangeTest:
    return StoredRangeTest(
        job_id=row.job_id,
        format_version=row.format_version,
        provenance=_provenance(row),
        range_test=LRFinderResult.model_validate(row.result["range_test"]),
        bounds=LRBounds.model_validate(row.result["bounds"]),
        created_at=row.created_at,
    )


def _stored_recommendation(row: tables.Recommendation) -> StoredRecommendation:
    return StoredRecommendation(
        job_id=row.job_id,
        fingerprint=row.fingerprint,
        format_version=row.format_version,
        provenance=_provenance(row),
        recommendation=Recommendation.model_validate(row.result),
        created_at=row.created_at,
    )
