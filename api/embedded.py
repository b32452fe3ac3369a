"""The worker processes ``lrtune serve`` starts beside the API, as ``/readyz`` and the
dashboard see them (:mod:`lrtune.api.routes.health`): which have exited.

``lrtune serve`` (:mod:`lrtune.cli.service`) starts them and hands them to
:func:`lrtune.api.main.create_app`; the API only reads them.

Example:
    >>> import subprocess, sys
    >>> done = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    >>> _ = done.wait()
    >>> workers = EmbeddedWorkers([done])
    >>> workers.exited() == [(done.pid, 3)]
    True
    >>> workers.describe_exited().startswith("1 of lrtune serve's 1 embedded worker(s) exited")
    True
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

__all__ = ["EmbeddedWorkers"]


class EmbeddedWorkers:
    """The worker processes ``lrtune serve`` started beside the API: which have exited.

    ``/readyz`` reads it (:mod:`lrtune.api.routes.health`): all exited is a 503, some a note.
    """

    def __init__(self, processes: Sequence[subprocess.Popen[bytes]]) -> None:
        self.processes = list(processes)

    def exited(self) -> list[tuple[int, int]]:
        """``(pid, exit status)`` of each worker that is no longer running."""
        return [(p.pid, p.returncode) for p in self.processes if p.poll() is not None]

    def describe_exited(self) -> str | None:
        """One line on the exited workers for a user, or None while every one runs."""
        exited = self.exited()
        if not exited:
            return None
        which = ", ".join(f"pid {pid} status {status}" for pid, status in exited)
        return (
            f"{len(exited)} of lrtune serve's {len(self.processes)} embedded worker(s) exited "
            f"({which}): queued jobs wait for a worker; lrtune serve's log says why, restart it"
        )
