"""A daemon thread that does one thing every few seconds until it is stopped.

The worker keeps three such beats: its lease's renewal (:mod:`lrtune.workers.lease`), its row
in the workers table (:mod:`lrtune.workers.presence`) and a range test's progress reports
(:mod:`lrtune.workers.reporting`). Each is a :class:`Periodic` around one ``beat`` function
that returns how long to wait before the next beat, or None to end the thread.

Example:
    >>> beats = []
    >>> def beat() -> float | None:
    ...     beats.append(len(beats))
    ...     return 0.001 if len(beats) < 3 else None
    >>> with Periodic("example", 0.001, beat) as periodic:
    ...     periodic.join()
    >>> beats
    [0, 1, 2]
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Periodic:
    """Calls ``beat`` from a daemon thread named ``name``, first after ``first_wait_s``
    seconds, then after each wait it returns, until it returns None or :meth:`stop` is called.

    A beat that is running when :meth:`stop` is called finishes first: :meth:`stop` waits for
    it, so nothing beats after it returns (the caller's next write cannot race a beat).
    """

    def __init__(self, name: str, first_wait_s: float, beat: Callable[[], float | None]) -> None:
        self._beat = beat
        self._first_wait_s = first_wait_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Periodic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End the thread, after the beat that is running, if any."""
        self._stopped.set()
        self.join()

    def join(self) -> None:
        """Wait for the thread to end (a beat returned None, or :meth:`stop`)."""
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        wait = self._first_wait_s
        while not self._stopped.wait(wait):
            next_wait = self._beat()
            if next_wait is None:
                return
            wait = next_wait
