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

Importing it loads the records only; :class:`JobStore`, :class:`StoreSettings`, :func:`upgrade`
and :func:`check_current` load SQLAlchemy and alembic when first used; never torch or Optuna.

Example:
    >>> from lrtune.jobs import JobStatus
    >>> JobStatus.SUCCEEDED.finished
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from lrtune.jobs.revision import check_current, upgrade
    from lrtune.jobs.settings import StoreSettings
    from lrtune.jobs.store import JobStore

_LAZY = {
    "JobStore": "lrtune.jobs.store",
    "StoreSettings": "lrtune.jobs.settings",
    "check_current": "lrtune.jobs.revision",
    "upgrade": "lrtune.jobs.revision",
}
"""Imported on first use: the records alone (what an HTTP client reads) need neither the
store's SQLAlchemy tables nor alembic."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
