"""A worker's row in the workers table: registered, beaten while it runs, marked stopped.

``lrtune workers``, ``GET /v1/workers`` and the API's ``/readyz`` read these rows: which
workers are live (a heartbeat younger than a few of their intervals), on which device, with
which plugin registry, doing what (:mod:`lrtune.jobs.presence` keeps them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from lrtune.exceptions import LRTuneError, NotFoundError, StorageUnavailableError
from lrtune.jobs import JobStore, WorkerActivity, WorkerRegistration
from lrtune.workers.periodic import Periodic

logger = logging.getLogger("lrtune.workers")


class Presence:
    """The worker's row in the workers table, beaten every ``heartbeat_s`` from a daemon
    thread while in a ``with``.

    Registers in ``__enter__`` (a store unavailable then, e.g. restarting, leaves it to the
    first beat); each beat records ``doing()``; a beat that finds the row gone registers again,
    one that meets an unavailable store is retried at the next beat; ``__exit__`` marks the
    worker stopped.
    """

    def __init__(
        self,
        store: JobStore,
        registration: WorkerRegistration,
        doing: Callable[[], list[WorkerActivity]],
    ) -> None:
        self.store = store
        self.registration = registration
        self.doing = doing
        self._beats = Periodic("worker-heartbeat", registration.heartbeat_s, self._beat)

    def __enter__(self) -> Presence:
        try:
            self.store.register_worker(self.registration)
        except StorageUnavailableError as exc:  # the worker's loop waits for the store
            logger.warning("worker=%s event=register_failed error=%s", self.registration.id, exc)
        self._beats.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._beats.stop()
        try:
            self.store.stop_worker(self.registration.id)
        except LRTuneError as exc:  # unreachable: its heartbeat ages out on its own
            logger.warning("worker=%s event=stop_unrecorded error=%s", self.registration.id, exc)

    def _beat(self) -> float:
        worker_id = self.registration.id
        try:
            self.store.beat(worker_id, self.doing())
        except NotFoundError:
            logger.warning("worker=%s event=registered_again", worker_id)
            self._register_again()
        except StorageUnavailableError as exc:
            logger.warning("worker=%s event=beat_failed error=%s", worker_id, exc)
        return self.registration.heartbeat_s

    def _register_again(self) -> None:
        try:
            self.store.register_worker(self.registration)
        except LRTuneError as exc:
            logger.warning("worker=%s event=beat_failed error=%s", self.registration.id, exc)
