"""Rows become records in one place: the job store's shared row helpers.

:class:`~lrtune.jobs.JobStore` and the rooms it is built from (:mod:`lrtune.jobs.leases`,
:mod:`lrtune.jobs.results`, :mod:`lrtune.jobs.presence`) all find a job by its id or a unique
prefix of one (:func:`find_job`), append its events (:func:`add_event`) and read its row back
(:func:`job_record`) through these functions, each taking the caller's open
:class:`~sqlalchemy.orm.Session`, so that a room's write and its event share one transaction.

Example:
    >>> parse_status("queued").value
    'queued'
    >>> utc("2026-01-02 03:04:05").isoformat()
    '2026-01-02T03:04:05+00:00'
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lrtune.exceptions import (
    InvalidInputError,
    NotFoundError,
    UnreadableRecordError,
    describe_validation_error,
)
from lrtune.jobs import tables
from lrtune.jobs.records import JobRecord, JobStatus

MAX_PAGE = 500
"""The most rows one read returns (a page of jobs, of events, of candidates looked through)."""


def check_limit(limit: int) -> None:
    """:class:`InvalidInputError` unless ``limit`` is 1 to :data:`MAX_PAGE`."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be 1 to {MAX_PAGE}, got {limit}")


def parse_status(status: JobStatus | str) -> JobStatus:
    try:
        return JobStatus(status)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidInputError(f"unknown job status {status!r}: use one of {known}") from None


def find_job(s: Session, job_id: str, *, for_update: bool = False) -> tables.Job:
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


def add_event(s: Session, job_id: str, kind: str, payload: dict[str, Any]) -> tables.JobEvent:
    row = tables.JobEvent(job_id=job_id, kind=kind, payload=payload)
    s.add(row)
    return row


def job_record(row: tables.Job) -> JobRecord:
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


def readable_records(
    rows: Iterable[tables.Job],
) -> tuple[list[JobRecord], list[str]]:
    """The rows that read back as records, and the ids of those that do not."""
    records, unreadable = [], []
    for row in rows:
        try:
            records.append(job_record(row))
        except UnreadableRecordError:
            unreadable.append(row.id)
    return records, unreadable


def utc(value: datetime | str) -> datetime:
    """A time read from the database, as an aware UTC datetime (SQLite returns naive ones, and
    a bare ``SELECT`` of its clock returns text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
