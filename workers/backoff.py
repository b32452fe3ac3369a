"""Exponential backoff with jitter: how long a worker waits before trying the database again,
and :func:`open_store`, which waits so for a job store that is not up yet.

Each wait doubles, from ``initial_s`` up to ``max_s``, and is drawn at random between half the
current step and the whole of it, so that workers that lost the database at the same moment do
not all come back at the same moment. :meth:`Backoff.reset` after a success starts over.

Example:
    >>> import random
    >>> backoff = Backoff(initial_s=1.0, max_s=4.0, rng=random.Random(0))
    >>> [round(backoff.next_s(), 2) for _ in range(4)]  # steps 1, 2, 4, 4
    [0.92, 1.76, 2.84, 2.52]
    >>> backoff.reset()
    >>> 0.5 <= backoff.next_s() <= 1.0
    True
"""

from __future__ import annotations

import logging
import random
import time

from lrtune.exceptions import StorageUnavailableError
from lrtune.jobs import JobStore, StoreSettings

logger = logging.getLogger("lrtune.workers")


class Backoff:
    """Waits that double from ``initial_s`` to at most ``max_s``, each jittered (see the module)."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if not 0 < initial_s <= max_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got {initial_s} and {max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.failures = 0
        self._rng = rng or random.Random()

    @classmethod
    def of(cls, settings: StoreSettings) -> Backoff:
        """The store settings' waits (``retry_initial_s`` up to ``retry_max_s``)."""
        return cls(settings.retry_initial_s, max(settings.retry_max_s, settings.retry_initial_s))

    def next_s(self) -> float:
        """The wait before the next try: one more failure counted."""
        step = min(self.max_s, self.initial_s * 2 ** min(self.failures, 60))
        self.failures += 1
        return self._rng.uniform(step / 2, step)

    def reset(self) -> None:
        """A try succeeded: the next failure waits ``initial_s`` again."""
        self.failures = 0


def open_store(url: str | None, wait_s: float) -> JobStore:
    """The job store at ``url``, waited for up to ``wait_s`` seconds while it is unavailable.

    A worker may start before its database does (a fleet's PostgreSQL restarting, the migration
    job not yet done): each failed try is logged and retried after a backoff (the store
    settings' ``retry_*``), until ``wait_s`` has passed. ``wait_s=0`` tries once.

    Raises:
        StorageUnavailableError: the store still cannot be opened after ``wait_s`` seconds.
    """
    settings = StoreSettings.from_env()
    backoff = Backoff.of(settings)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return JobStore(url, settings=settings)
        except StorageUnavailableError as exc:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise
            wait = min(backoff.next_s(), left_s)
            logger.warning("event=store_unavailable retry_in=%.1fs error=%s", wait, exc)
            time.sleep(wait)
