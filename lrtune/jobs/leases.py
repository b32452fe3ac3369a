"""Leases: which worker may work on a job, and how its writes are fenced.

The part of :class:`~lrtune.jobs.JobStore` that the workers drive: claiming a job's exclusive
phase (:meth:`~lrtune.jobs.JobStore.claim`), renewing, advancing and releasing the lease, the
shared phases' unit lock and clock, and progress reports. :class:`Leases` is one of the rooms
``JobStore`` is built from (a base class of ``JobStore``, sharing its engine, URL and
settings; see :mod:`lrtune.jobs.store` for why): users call these methods on ``JobStore``,
while this file holds their code, their docstrings, and the SQL that reads like the contract
below (the named query builders :func:`_claim_query`, :func:`fenced`, :func:`_fenced_update`).
The rest of the contract (submitting, cancelling, deleting, events) is
:mod:`lrtune.jobs.store`'s.

Contract (who may change a job, in which state), the lease holders' part:

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
  ``StoreSettings.max_attempts`` fails the job with the reason instead.
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
- Progress: a lease holder reports with its lease; any worker running a shared job's units
  reports after each finished unit, without one (:meth:`JobStore.record_progress`). The
  store merges each report into what it has, count by count, so progress never goes
  backwards however reports race, and each report that moves it appends a ``progress``
  event.

Example:
    >>> import tempfile, pathlib
    >>> from lrtune.jobs import JobStore
    >>> from lrtune.spec import JobSpec
    >>> store = JobStore(f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}")
    >>> spec = JobSpec.model_validate({"model": {"name": "mlp"}, "dataset": {"name": "digits"}})
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
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import threading
from collections.abc import Collection, Iterator
from typing import Any, TypeVar

from sqlalchemy import (
    ARRAY,
    JSON,
    Row,
    Text,
    and_,
    bindparam,
    cast,
    false,
    func,
    insert,
    not_,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Insert

from lrtune._rdb import held_connection
from lrtune.exceptions import ConflictError, InvalidInputError, LeaseLost, NotFoundError
from lrtune.jobs import tables
from lrtune.jobs.db import session, translate_errors, writing
from lrtune.jobs.records import JobProgress, JobRecord, JobStatus, Lease
from lrtune.jobs.rows import (
    add_event,
    check_limit,
    find_job,
    job_record,
    parse_status,
    readable_records,
    utc,
)
from lrtune.jobs.settings import StoreSettings

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


class Leases:
    """The workers' side of :class:`~lrtune.jobs.JobStore`: leases, the shared phases' unit lock
    and clock, progress (see the module). A base class of ``JobStore``, not used alone."""

    _engine: Engine
    url: str
    settings: StoreSettings

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
        return (utc(now) - utc(started)).total_seconds()

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

    def shared_jobs(
        self,
        limit: int = 50,
        *,
        device: str | None = None,
        tasks: Collection[str] | None = None,
        registry_jobs: bool = True,
    ) -> list[JobRecord]:
        """Jobs in a shared phase (``searching``, ``confirming``), oldest first: a read.

        A free worker helps the first of them that has a unit it may take, so one huge job
        does not starve the ones submitted after it. ``device`` and ``tasks`` are the asking
        worker's (as in :meth:`claim`): a CPU worker is not shown jobs that need CUDA, nor a
        worker the jobs of tasks it did not load. A job whose stored record cannot be read
        back is left out (no worker could run it).
        """
        check_limit(limit)
        shared = [JobStatus.SEARCHING.value, JobStatus.CONFIRMING.value]
        query = (
            select(tables.Job)
            .where(tables.Job.status.in_(shared), _servable_by(device, tasks, registry_jobs))
            .order_by(tables.Job.submit_seq)
            .limit(limit)
        )
        with session(self._engine, write=False) as s:
            return readable_records(s.scalars(query).all())[0]

    def claim(
        self,
        worker_id: str,
        lease_s: float,
        *,
        job_id: str | None = None,
        device: str | None = None,
        tasks: Collection[str] | None = None,
        registry_jobs: bool = True,
    ) -> Lease | None:
        """Take a job's exclusive phase for ``lease_s`` seconds; ``None`` if there is none.

        Without ``job_id``: the oldest job that is ``queued`` (it becomes ``finding``) or whose
        lease expired while ``finding`` or ``confirming``. With ``job_id``: that job, if it is
        unfinished and no live lease holds it. ``device`` is the claiming worker's (``cpu``,
        ``cuda:0``): a worker whose device is not CUDA never takes a job that needs CUDA
        (``spec.device`` ``cuda`` or ``cuda:N``), and skips to the next; ``None`` takes any.
        ``tasks`` are the names of the tasks the worker loaded (``lrtune worker --task``): it
        takes registry jobs (unless not ``registry_jobs``: an agent, which runs only its
        tasks) and those tasks' jobs, never another task's; ``None`` takes any.
        Atomic across workers (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, an IMMEDIATE
        transaction on SQLite): each job has one holder.
        A job claimed ``StoreSettings.max_attempts`` times without completing its phase is failed
        with the reason instead, and the next candidate is tried.

        Raises:
            InvalidInputError: ``lease_s`` is not positive, or ``worker_id`` is empty or longer
                than 64 characters.
            NotFoundError: no job ``job_id``.
        """
        _check_lease_args(worker_id, lease_s)
        with session(self._engine, write=True) as s:
            if job_id is not None:
                job_id = find_job(s, job_id).id
            while True:
                row = s.scalars(_claim_query(job_id, device, tasks, registry_jobs)).first()
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
            row = fenced(s, lease)
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
        wanted = parse_status(status) if status is not None else None
        if wanted is not None and wanted.finished:
            raise InvalidInputError(
                f"advance cannot finish a job ({wanted.value}): release the lease with the status"
            )
        with session(self._engine, write=True) as s:
            row = fenced(s, lease)
            values: dict[str, Any] = {}
            was = JobStatus(row.status)
            if wanted is not None and wanted is not was:
                _check_transition(lease.job_id, was, wanted)
                values["status"] = wanted.value
            _write(s, lease, row, was, values, progress)
        return job_record(row)

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
        wanted = parse_status(status) if status is not None else None
        if wanted is JobStatus.FAILED and not error:
            raise InvalidInputError("a job released as failed needs the error that failed it")
        with session(self._engine, write=True) as s:
            row = fenced(s, lease)
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
                add_event(s, lease.job_id, "released", {"worker_id": lease.worker_id})
        return job_record(row)  # after the commit: an unreadable job is failed all the same

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
        add_event(s, row.id, "status", payload)

    def record_progress(
        self,
        job_id: str,
        progress: JobProgress,
        *,
        lease: Lease | None = None,
        points: list[tuple[float, float, int]] | None = None,
    ) -> JobStatus:
        """Merge a worker's progress report into the job's (:meth:`JobProgress.merged`).

        Any worker may report on a job in a shared phase (no lease); the holder of an
        exclusive phase passes its ``lease``, and the write then lands only while the lease
        holds (:class:`~lrtune.exceptions.LeaseLost` otherwise). A report that moves nothing
        forward writes nothing; one that does appends a ``progress`` event holding the merged
        progress. ``points`` (the range test's new ``(lr, smoothed loss, seed)`` points since
        the last report) follow it in a ``range_test_points`` event (``{"points": [...]}``):
        the live feed draws the curve growing from them; they are not kept elsewhere, since the
        stored range test has every point once it is complete.
        Returns the job's status at the write (so the caller also learns whether it was
        cancelled meanwhile). ``job_id`` is the whole id, as a worker has it.

        A worker sends one after every trial, so it is written lean, with no ORM session and
        no record built: on PostgreSQL, on the process's held connection
        (:func:`lrtune._rdb.held_connection`), a read of the row's few columns, then one
        statement that updates the row only if it is still at the version read and inserts
        the events from the updated row (read again and retried when another write came
        between); on SQLite the same read, update and insert in one IMMEDIATE transaction.

        Raises:
            NotFoundError: no job ``job_id``.
            LeaseLost: ``lease`` no longer holds the job; nothing was written.
        """
        if lease is not None and lease.job_id != job_id:
            raise InvalidInputError(f"the lease is for job {lease.job_id}, not {job_id}")
        which = {"job_id": job_id}
        if self._engine.dialect.name == "postgresql":
            held = held_connection(self._engine)
            while True:
                with translate_errors(self._engine):
                    rows = held.read(lambda c: list(c.execute(_PROGRESS_READ, which)))
                    report = _ProgressReport.over(rows, job_id, progress, lease, points)
                    # run again on a new connection if the first was gone: a second update
                    # finds the row moved on (by the first, if it landed) and writes nothing
                    if report.moves_nothing or held.read(report.written_if_unchanged):
                        return report.status
        with writing(self._engine) as connection:  # SQLite: IMMEDIATE, so the read locks
            rows = list(connection.execute(_PROGRESS_READ, which))
            report = _ProgressReport.over(rows, job_id, progress, lease, points)
            if not report.moves_nothing:
                connection.execute(_PROGRESS_UPDATE, report.update_parameters)
                connection.execute(insert(tables.JobEvent).values(report.events))
        return report.status


@dataclasses.dataclass(frozen=True)
class _ProgressReport:
    """What a progress report writes over the job's row as read (:meth:`over`)."""

    job_id: str
    status: JobStatus
    row_version: int
    progress: dict[str, Any] | None  # the merged progress; None: the report moves nothing
    events: list[dict[str, Any]]

    @classmethod
    def over(
        cls,
        rows: list[Row[Any]],
        job_id: str,
        progress: JobProgress,
        lease: Lease | None,
        points: list[tuple[float, float, int]] | None,
    ) -> _ProgressReport:
        """The report over the job's row (``rows``: none, or the one read).

        Raises:
            NotFoundError: no row.
            LeaseLost: ``lease`` no longer holds the job.
        """
        if not rows:
            raise NotFoundError(f"no job {job_id!r} in the job store")
        row = rows[0]
        if lease is not None:
            check_holds(lease, row)
        stored = JobProgress.model_validate(row.progress)
        merged = stored.merged(progress)
        status, version = JobStatus(row.status), row.row_version
        if merged == stored:
            return cls(job_id, status, version, None, [])
        as_json = merged.model_dump(mode="json")
        events = [{"job_id": job_id, "kind": "progress", "payload": as_json}]
        if points:
            curve = {"points": [list(point) for point in points]}
            events.append({"job_id": job_id, "kind": "range_test_points", "payload": curve})
        return cls(job_id, status, version, as_json, events)

    @property
    def moves_nothing(self) -> bool:
        return self.progress is None

    def written_if_unchanged(self, connection: Connection) -> list[Any]:
        """PostgreSQL: write the report in one statement if the row is still at the version
        read (:data:`_PROGRESS_WRITE`); the ids of the events inserted, none if the row had
        moved on."""
        parameters = {
            **self.update_parameters,
            "kinds": [event["kind"] for event in self.events],
            "payloads": [json.dumps(event["payload"]) for event in self.events],
        }
        return list(connection.execute(_PROGRESS_WRITE, parameters).scalars())

    @property
    def update_parameters(self) -> dict[str, Any]:
        """:data:`_PROGRESS_UPDATE`'s."""
        return {"job_id": self.job_id, "seen": self.row_version, "progress": self.progress}


def _progress_write() -> Insert:
    moved = _PROGRESS_UPDATE.returning(tables.Job.id).cte("moved")
    kinds, payloads = (
        bindparam("kinds", type_=ARRAY(Text)),
        bindparam("payloads", type_=ARRAY(Text)),
    )
    new = func.unnest(kinds, payloads).table_valued("kind", "payload").render_derived(name="new")
    events = select(moved.c.id, new.c.kind, cast(new.c.payload, JSON)).join_from(moved, new, true())
    written = insert(tables.JobEvent).from_select(["job_id", "kind", "payload"], events)
    return written.returning(tables.JobEvent.id)


_PROGRESS_READ = select(
    tables.Job.status,
    tables.Job.progress,
    tables.Job.fencing_token,
    tables.Job.holder_worker_id,
    tables.Job.row_version,
).where(tables.Job.id == bindparam("job_id"))
"""What a progress report reads of the job's row (built once: a statement built per call
costs more than its round trip)."""
_PROGRESS_UPDATE = (
    update(tables.Job)
    .where(tables.Job.id == bindparam("job_id"), tables.Job.row_version == bindparam("seen"))
    .values(progress=bindparam("progress", type_=JSON), updated_at=tables.utcnow())
)
"""The progress a report merged (``progress``), written only if the job's row is still at the
version read (``seen``)."""
_PROGRESS_WRITE = _progress_write()
"""PostgreSQL: a progress report in one statement, only if the job's row is still at the
version read (``seen``): the UPDATE in a ``WITH``, the events (``kinds``, ``payloads`` as JSON
text) inserted from the row it updated, so none when it updated none."""


_JobRow = TypeVar("_JobRow")
_process_locks: dict[tuple[str, str], threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _process_lock(url: str, job_id: str) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault((url, job_id), threading.Lock())


def _check_lease_args(worker_id: str, lease_s: float) -> None:
    if not 1 <= len(worker_id) <= MAX_WORKER_ID_LENGTH:
        raise InvalidInputError(f"worker id must be 1 to {MAX_WORKER_ID_LENGTH} characters")
    if not lease_s > 0:
        raise InvalidInputError(f"lease_s must be a positive number of seconds, got {lease_s}")


def _servable_by(
    device: str | None, tasks: Collection[str] | None = None, registry_jobs: bool = True
) -> Any:
    """The jobs a worker on ``device`` that loaded ``tasks`` may run: on CUDA (or unsaid) any
    device's, else none needing CUDA; registry jobs (unless not ``registry_jobs``: an agent's)
    and the jobs of its tasks (``None``: any task, for a caller that does not run units)."""
    on_device = (
        true() if device is None or device.startswith("cuda") else not_(tables.Job.needs_cuda)
    )
    if tasks is None:
        return on_device
    task = tables.Job.task_name
    loaded = task.in_(sorted(tasks)) if tasks else false()
    return and_(on_device, or_(task.is_(None), loaded) if registry_jobs else loaded)


def _claim_query(
    job_id: str | None,
    device: str | None = None,
    tasks: Collection[str] | None = None,
    registry_jobs: bool = True,
) -> Any:
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
        .where(claimable, _servable_by(device, tasks, registry_jobs))
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
    add_event(s, row.id, "claimed", claimed)
    if now is not was:
        moved = {"from": was.value, "to": now.value, "worker_id": worker_id}
        add_event(s, row.id, "status", moved)
    return Lease(
        job_id=row.id,
        worker_id=worker_id,
        fencing_token=row.fencing_token,
        expires_at=row.lease_expires_at,
        status=now,
        attempts=row.attempts,
    )


def fenced(s: Session, lease: Lease) -> tables.Job:
    """The leased job's row, locked; :class:`LeaseLost` unless ``lease`` still holds it."""
    return check_holds(lease, s.get(tables.Job, lease.job_id, with_for_update=True))


def check_holds(lease: Lease, row: _JobRow | None) -> _JobRow:
    """The job's ``row`` (an ORM row, or a Core one with its ``fencing_token`` and
    ``holder_worker_id``; None: no job), unless ``lease`` no longer holds it: then
    :class:`LeaseLost`."""
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
        add_event(s, lease.job_id, "status", payload)
    if progress is not None:
        add_event(s, lease.job_id, "progress", progress.model_dump(mode="json"))
    s.flush()
    s.refresh(row)
