"""Presence: the workers out there, what each holds, which plugins they serve.

The part of :class:`~lrtune.jobs.JobStore` about workers rather than jobs. :class:`Presence`
is one of the rooms ``JobStore`` is built from (a base class of ``JobStore``, sharing its
engine, see :mod:`lrtune.jobs.store`).

Contract: workers register themselves (:meth:`JobStore.register_worker`), beat a heartbeat
saying what they hold (:meth:`JobStore.beat`) and mark themselves stopped on a clean exit
(:meth:`JobStore.stop_worker`); :meth:`JobStore.list_workers` lists the live ones and
:meth:`JobStore.known_registry` merges the plugin registries they serve. Only a worker writes
its own row. Liveness is by the database's clock, so workers on machines whose clocks differ
are judged alike.

Example:
    >>> import tempfile, pathlib
    >>> from lrtune.jobs import JobStore
    >>> store = JobStore(f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}")
    >>> me = WorkerRegistration(id="w1", host="gpu-7", device="cuda:0", pid=4242,
    ...     version="0.1", heartbeat_s=10, plugin_registry=PluginRegistry.of_this_process())
    >>> store.register_worker(me).live
    True
    >>> store.beat("w1", [WorkerActivity(job_id="job-1", phase="searching", lease=False)])
    >>> [(w.id, w.activity[0].phase.value) for w in store.list_workers().data]
    [('w1', 'searching')]
    >>> "logreg" in store.known_registry().models
    True
    >>> store.stop_worker("w1")
    >>> store.list_workers().data, store.list_workers(live_only=False).data[0].live
    ([], False)
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine

from lrtune.exceptions import NotFoundError
from lrtune.jobs import tables
from lrtune.jobs.db import session
from lrtune.jobs.records import (
    PluginRegistry,
    WorkerActivity,
    WorkerList,
    WorkerRecord,
    WorkerRegistration,
)
from lrtune.jobs.rows import utc
from lrtune.jobs.settings import LIVE_HEARTBEATS


class Presence:
    """The workers' rows of :class:`~lrtune.jobs.JobStore` (see the module). A base class of
    ``JobStore``, not used alone."""

    _engine: Engine

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

    def beat(self, worker_id: str, activity: list[WorkerActivity]) -> None:
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

    def get_worker(self, worker_id: str) -> WorkerRecord:
        """The worker (or agent) ``worker_id`` as stored.

        Raises:
            NotFoundError: no such worker: register it first.
        """
        with session(self._engine, write=False) as s:
            found = s.execute(
                select(tables.Worker, tables.utcnow()).where(tables.Worker.id == worker_id)
            ).one_or_none()
            if found is None:
                raise NotFoundError(f"no worker or agent {worker_id!r}: register it first")
            return _worker_record(*found)

    _worker = get_worker


def _worker_record(row: tables.Worker, now: datetime) -> WorkerRecord:
    """The row as a record, its heartbeat's age and liveness by the database clock ``now``."""
    fields = {name: getattr(row, name) for name in WorkerRecord.model_fields if hasattr(row, name)}
    fields["activity"] = row.activity or []
    age = (utc(now) - utc(row.last_heartbeat)).total_seconds()
    live = row.stopped_at is None and age < LIVE_HEARTBEATS * row.heartbeat_s
    return WorkerRecord.model_validate({**fields, "heartbeat_age_s": max(age, 0.0), "live": live})
