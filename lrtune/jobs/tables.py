"""The job store's tables (SQLAlchemy 2.x typed ORM); what lrtune owns in the database.

Optuna's tables (studies, trials, ...) live in the same database and keep the trials and what
the sampler needs; these tables keep the rest. Every name is prefixed ``lrtune_`` so that the
two schemas, and any other application's, never collide; lrtune's alembic revision is kept in
``lrtune_alembic_version`` (Optuna's is ``alembic_version``).

- ``lrtune_jobs``: one row per submitted job, its spec (JSON), status and progress, and the
  lease of the worker holding its exclusive phase (``holder_worker_id``, ``lease_expires_at``
  and ``fencing_token``, which grows on every change of holder so that a worker that lost its
  lease cannot write).
- ``lrtune_range_tests`` and ``lrtune_recommendations``: at most one of each per job, stored
  as JSON with a format version and the provenance of the result.
- ``lrtune_workers``: live workers, their heartbeat and the plugin registry they serve.
- ``lrtune_job_events``: append-only; its ids grow, so a reader resumes from the last id seen.

Deleting a job deletes its results and events (``ON DELETE CASCADE``; SQLite enforces it
because :mod:`lrtune.jobs.db` turns foreign keys on for every connection).

Times come from the database's clock (:class:`utcnow`), never a worker's, and are UTC.

Example:
    >>> sorted(Base.metadata.tables)[:3]
    ['lrtune_job_events', 'lrtune_jobs', 'lrtune_range_tests']
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.functions import FunctionElement

VERSION_TABLE = "lrtune_alembic_version"
"""lrtune's alembic revision table (Optuna's alembic uses the default ``alembic_version``)."""

JOB_STATUSES = (
    "queued",
    "finding",
    "searching",
    "confirming",
    "succeeded",
    "failed",
    "cancelled",
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# An autoincrementing 64-bit id; SQLite's rowid alias must be declared INTEGER.
EventId = BigInteger().with_variant(Integer(), "sqlite")


class utcnow(FunctionElement[datetime]):
    """The database's current UTC time, to the microsecond on both databases.

    PostgreSQL's ``now()`` is a ``timestamptz``. SQLite's ``CURRENT_TIMESTAMP`` has whole
    seconds only, so it renders ``strftime`` in the text format SQLAlchemy writes and reads for
    a ``DateTime`` (``YYYY-MM-DD HH:MM:SS.ffffff``), keeping stored times comparable.
    """

    type = DateTime(timezone=True)
    inherit_cache = True


@compiles(utcnow)
def _utcnow_default(_element: utcnow, _compiler: Any, **_kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(utcnow, "postgresql")
def _utcnow_postgresql(_element: utcnow, _compiler: Any, **_kw: Any) -> str:
    return "now()"


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(_element: utcnow, _compiler: Any, **_kw: Any) -> str:
    return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Job(Base):
    __tablename__ = "lrtune_jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in JOB_STATUSES) + ")", name="status"
        ),
        Index("ix_lrtune_jobs_created_at_id", "created_at", "id"),
        Index("ix_lrtune_jobs_status_created_at", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(120))
    spec: Mapped[dict[str, Any]]
    spec_format_version: Mapped[int]
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    study_name: Mapped[str] = mapped_column(String(120), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[dict[str, Any]]
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=utcnow())
    updated_at: Mapped[datetime] = mapped_column(server_default=utcnow())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    holder_worker_id: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    fencing_token: Mapped[int] = mapped_column(BigInteger, default=0)


class _JobResult:
    """Columns shared by the stored results: one per job, JSON with format and provenance."""

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("lrtune_jobs.id", ondelete="CASCADE"), unique=True
    )
    format_version: Mapped[int]
    result: Mapped[dict[str, Any]]
    lrtune_version: Mapped[str] = mapped_column(String(32))
    rule: Mapped[str] = mapped_column(String(64))
    lr_min: Mapped[float | None] = mapped_column(Float)
    lr_max: Mapped[float | None] = mapped_column(Float)
    device: Mapped[str] = mapped_column(String(64))
    search_config: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(server_default=utcnow())


class RangeTest(_JobResult, Base):
    __tablename__ = "lrtune_range_tests"


class Recommendation(_JobResult, Base):
    __tablename__ = "lrtune_recommendations"

    fingerprint: Mapped[str] = mapped_column(String(64), index=True)


class Worker(Base):
    __tablename__ = "lrtune_workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(64))
    pid: Mapped[int]
    version: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(server_default=utcnow())
    last_heartbeat: Mapped[datetime] = mapped_column(server_default=utcnow())
    plugin_registry: Mapped[dict[str, Any]] = mapped_column(
        doc="model and dataset names with their params schemas, as the worker's plugins know them"
    )


class JobEvent(Base):
    __tablename__ = "lrtune_job_events"
    __table_args__ = (
        Index("ix_lrtune_job_events_job_id_id", "job_id", "id"),
        {"sqlite_autoincrement": True},  # never reuse an id: readers resume from the last seen
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("lrtune_jobs.id", ondelete="CASCADE")
    )
    created_at: Mapped[datetime] = mapped_column(server_default=utcnow())
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
