"""Holding a job's lease: renewed from a daemon thread while its exclusive phase runs.

A worker that claims a job's exclusive phase (the range test, moving the job on, writing its
recommendation) holds its lease only while it renews it (:mod:`lrtune.jobs.leases` states the
contract). :class:`LeaseHeartbeat` renews it every ``lease_s / 3`` seconds, and tells the phase
when it is lost, so the phase stops instead of writing over a new holder's work.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from lrtune.exceptions import LeaseLost, StorageUnavailableError
from lrtune.jobs import JobStore, Lease
from lrtune.workers.backoff import Backoff
from lrtune.workers.periodic import Periodic

logger = logging.getLogger("lrtune.workers")


class LeaseHeartbeat:
    """Renews ``lease`` every ``lease_s / 3`` seconds from a daemon thread while in a ``with``.

    A renewal that meets an unavailable store is retried with ``backoff`` (the lease may still
    hold when the store comes back). The lease counts as lost (``lost`` set, :meth:`check`
    raises :class:`LeaseLost`) once a renewal meets :class:`LeaseLost`, or once the last
    successful renewal (timed from its start) is older than ``lease_s``: by then the lease
    may have expired and another worker may hold the job, so the holder stops instead of
    writing stale results.
    """

    def __init__(self, store: JobStore, lease: Lease, lease_s: float, backoff: Backoff) -> None:
        self.store = store
        self.lease = lease
        self.lease_s = lease_s
        self.backoff = backoff
        self.lost = threading.Event()
        self._renewed_at = time.monotonic()  # just after the claim: a slight overestimate
        self._renewals = Periodic(f"lease-{lease.job_id[:8]}", lease_s / 3, self._beat)

    def __enter__(self) -> LeaseHeartbeat:
        self._renewals.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop renewing (before the write that releases the lease: no renewal races it)."""
        self._renewals.stop()

    def _beat(self) -> float | None:
        """Renew; the wait before the next renewal, or None once the lease is lost."""
        try:
            self.renew_now()
        except LeaseLost:
            return None
        except StorageUnavailableError as exc:
            if self._expired():
                return None
            left = self.lease_s - (time.monotonic() - self._renewed_at)
            wait = max(0.0, min(self.backoff.next_s(), left))
            logger.warning(
                "job=%s event=renew_failed retry_in=%.2f error=%s", self.lease.job_id, wait, exc
            )
            return wait
        self.backoff.reset()
        return self.lease_s / 3

    def renew_now(self) -> None:
        """Renew the lease at once (the guard of the exclusive phase's writes).

        On return the lease holds for ``lease_s`` more seconds by the database's clock.

        Raises:
            LeaseLost: the lease was lost (see the class), now or before.
            StorageUnavailableError: the store cannot be reached: whether the lease holds is
                unknown.
        """
        self.check()
        started = time.monotonic()
        try:
            self.store.renew(self.lease, self.lease_s)
        except LeaseLost:
            logger.warning("job=%s event=lease_lost reason=taken", self.lease.job_id)
            self.lost.set()
            raise
        self._renewed_at = started

    def _expired(self) -> bool:
        """Whether the last successful renewal is older than the lease (then mark it lost)."""
        if time.monotonic() - self._renewed_at > self.lease_s and not self.lost.is_set():
            logger.warning("job=%s event=lease_lost reason=no_renewal", self.lease.job_id)
            self.lost.set()
        return self.lost.is_set()

    def check(self, *_step: Any) -> None:
        """Raise :class:`LeaseLost` if the lease was lost (also a range-test step callback)."""
        if self._expired():
            raise LeaseLost(f"lost the lease of job {self.lease.job_id}: stopping its work")
