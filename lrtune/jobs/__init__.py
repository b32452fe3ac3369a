"""lrtune's job store: jobs, their events and results in a SQL database, with migrations.

The HTTP API and the workers use this package, and only this package, to reach the database:

- :class:`JobStore` (:mod:`lrtune.jobs.store`): submit, get, list_jobs, cancel, events; the
  workers' leases (claim, renew, advance, release; :class:`Lease`: :mod:`lrtune.jobs.leases`),
  results (:mod:`lrtune.jobs.results`), and the workers themselves (register_worker, beat,
  stop_worker, list_workers, known_registry: :mod:`lrtune.jobs.presence`); what it admits
  (:mod:`lrtune.jobs.admission`);
- :class:`StoreSettings` (:mod:`lrtune.jobs.settings`): the database URL
  (``LRTUNE_DATABASE_URL``, default ``sqlite:///lrtune.db``), pool sizes and where checkpoints
  live (``LRTUNE_ARTIFACT_DIR``);
- :func:`upgrade` and :func:`check_current` (:mod:`lrtune.jobs.revision`): the schema revision;
  :func:`~lrtune.jobs.stored_json.upgrade_json_rows` rewrites stored JSON in a migration;
- the returned models (:mod:`lrtune.jobs.records`); the tables (:mod:`lrtune.jobs.tables`) and
  connections (:mod:`lrtune.jobs.db`) are internal.

Importing it loads SQLAlchemy and alembic, never torch or Optuna.

Example:
    >>> from lrtune.jobs import JobStatus
    >>> JobStatus.SUCCEEDED.finished
    True
"""

from lrtune.jobs.records import (
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
    TaskInfo,
    WorkerActivity,
    WorkerList,
    WorkerRecord,
    WorkerRegistration,
)
from lrtune.jobs.revision import check_current, upgrade
from lrtune.jobs.settings import StoreSettings
from lrtune.jobs.store import JobStore

__all__ = [
    "JobEvent",
    "JobPage",
    "JobProgress",
    "JobRecord",
    "JobStats",
    "JobStatus",
    "JobStore",
    "Lease",
    "PluginRegistry",
    "Provenance",
    "RecommendationMatch",
    "StoreSettings",
    "StoredRangeTest",
    "StoredRecommendation",
    "Submission",
    "TaskInfo",
    "WorkerActivity",
    "WorkerList",
    "WorkerRecord",
    "WorkerRegistration",
    "check_current",
    "upgrade",
]
