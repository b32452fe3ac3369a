"""Waiting for the job store to change: how an idle worker learns at once that there is work.

On PostgreSQL a trigger (migration 0011) sends ``NOTIFY lrtune_jobs`` when a job is submitted
and when its status changes: its range test is done and its search opens, its search ends, it
is cancelled. :meth:`JobChanges.wait` listens on a connection of its own (``LISTEN`` costs the
server nothing while nobody notifies) and returns as soon as one arrives, so a worker that
waits out a range test joins the search when it opens, not up to a poll later. SQLite has no
notifications: ``wait`` sleeps its time out. Either way, what changes without a notification
(a unit queued again in a job's study, a lease that expires) is found at the next poll, as
before, and a listening connection that fails (a restarted server) is opened again at the
next wait: until then the wait sleeps.

Example:
    >>> import tempfile, time
    >>> from lrtune.jobs.db import get_engine
    >>> engine = get_engine(f"sqlite:///{tempfile.mkdtemp()}/jobs.db")
    >>> started = time.monotonic()
    >>> JobChanges(engine).wait(0.05, sleep=time.sleep), time.monotonic() - started >= 0.05
    (False, True)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from lrtune._rdb import first_line

logger = logging.getLogger("lrtune.jobs")

CHANNEL = "lrtune_jobs"
"""The channel migration 0011's trigger notifies (the payload: the job's new status)."""
SLICE_S = 0.25
"""The longest a wait listens without asking ``sleep(0)`` whether a stop was requested."""


class JobChanges:
    """A job store's notifications of new jobs and status changes, for one waiting thread.

    Args:
        engine: the job store's engine; on PostgreSQL the first :meth:`wait` opens one
            connection beside its pool, held until :meth:`close` (or the process ends).
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._listening: Any = None  # psycopg's connection, once LISTEN has run on it

    def wait(self, timeout_s: float, *, sleep: Callable[[float], bool]) -> bool:
        """Wait up to ``timeout_s`` seconds for a job to be submitted or change status; True as
        soon as one did, False at the timeout or a stop.

        Notifications that came while the caller was busy (its own status changes among them)
        end this wait at once, all together: the caller looks once more, then waits anew.
        ``sleep(seconds)`` is the caller's sleep that wakes early on a stop and returns whether
        one was requested (:func:`lrtune.training.wait_for_stop`): it waits where nothing can be
        listened to, and ``sleep(0)`` is asked between slices of listening.
        """
        deadline = time.monotonic() + timeout_s
        connection = self._listen()
        if connection is None:
            sleep(timeout_s)
            return False
        import psycopg

        try:
            while not sleep(0):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if _received(connection, min(SLICE_S, remaining)):
                    return True
        except (psycopg.Error, OSError) as exc:  # the server went away: listen again later
            logger.info("event=listen_lost error=%s", first_line(exc))
            self.close()
            sleep(max(0.0, deadline - time.monotonic()))
        return False

    def close(self) -> None:
        """Close the listening connection, if one is open."""
        connection, self._listening = self._listening, None
        if connection is not None:
            with contextlib.suppress(Exception):  # a broken connection: closed all the same
                connection.close()

    def _listen(self) -> Any:
        """The listening connection, opened and listening if it was not; None on SQLite,
        through a driver other than psycopg 3 (lrtune's), or when it cannot be opened now."""
        if (self._engine.dialect.name, self._engine.dialect.driver) != ("postgresql", "psycopg"):
            return None
        if self._listening is None:
            import psycopg

            try:
                pooled = self._engine.raw_connection()
                connection = pooled.driver_connection
                pooled.detach()  # held here for good, not given back to the pool
                connection.autocommit = True
                connection.execute(f"LISTEN {CHANNEL}")
            except (SQLAlchemyError, psycopg.Error, OSError) as exc:  # the server is away
                logger.info("event=listen_failed error=%s", first_line(exc))
                return None
            self._listening = connection
        return self._listening


def _received(connection: Any, timeout_s: float) -> bool:
    """Whether a notification arrived on ``connection`` within ``timeout_s`` seconds (at once if
    one is waiting); every one that has arrived by then is consumed."""
    arrived = list(connection.notifies(timeout=timeout_s, stop_after=1))
    arrived += connection.notifies(timeout=0)  # a burst's later packets
    return bool(arrived)
