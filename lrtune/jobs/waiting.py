"""Waiting for a job to finish, with a progress bar: one loop for the HTTP client and the store.

:func:`wait_for` polls a ``get(job_id)`` (:meth:`lrtune.client.Client.get` over HTTP,
:meth:`lrtune.jobs.JobStore.get` on the database) until the job is ``succeeded``, ``failed``
or ``cancelled``. Its tqdm bar (on stderr) shows how much of the job is done and the time
left, each kind of unit (range-test steps, trials, confirmation runs) at its own measured pace
(:class:`~lrtune.jobs.eta.EtaEstimator`), with the counts, the job's state and best value.

Example:
    >>> from lrtune.jobs import JobStore
    >>> from lrtune.spec import JobSpec
    >>> import tempfile, pathlib
    >>> store = JobStore(f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}")
    >>> job = store.submit(JobSpec.model_validate({"model": {"name": "mlp"},
    ...                                            "dataset": {"name": "digits"}}))
    >>> wait_for(job.id, store.get, timeout_s=0, progress=False)
    Traceback (most recent call last):
    ...
    TimeoutError: job ... is still queued after 0 s
    >>> wait_for(store.cancel(job.id).id, store.get, progress=False).status.value
    'cancelled'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lrtune.jobs.eta import EtaEstimator
from lrtune.jobs.records import JobRecord


def wait_for(
    job_id: str,
    get: Callable[[str], JobRecord],
    *,
    timeout_s: float | None = None,
    poll_s: float = 1.0,
    progress: bool = True,
) -> JobRecord:
    """Poll ``get(job_id)`` every ``poll_s`` until the job has finished; return it.

    With ``progress``, a tqdm bar on stderr shows the job's state and units done.

    Raises:
        TimeoutError: the job had not finished after ``timeout_s`` seconds.
        Whatever ``get`` raises (an unknown job, an unreachable store or API).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    bar = _progress_bar(job_id) if progress else None
    eta = EtaEstimator()  # the job's record fills in its start and size at the first read
    try:
        while True:
            job = get(job_id)
            if bar is not None:
                _show(bar, job, eta)
            if job.status.finished:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status.value} after {timeout_s} s")
            time.sleep(poll_s)
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(job_id: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=BAR_TOTAL,
        desc=f"job {job_id[:8]}",
        bar_format="{desc} {percentage:3.0f}%|{bar}|{postfix}",
        dynamic_ncols=True,
    )


BAR_TOTAL = 1000
"""The bar counts thousandths of the job (by time where known), not units."""


def _show(bar: Any, job: JobRecord, eta: EtaEstimator) -> None:
    now = time.time()
    eta.trials = eta.trials or job.spec.search.n_trials
    if eta.started_at is None and job.started_at is not None:
        eta.started_at = job.started_at.timestamp()
    if eta.search_started_at is None and job.search_started_at is not None:
        eta.search_started_at = job.search_started_at.timestamp()
    eta.observe(now, job.progress)
    p, finished = job.progress, job.status.finished
    bar.n = (
        BAR_TOTAL if job.status.value == "succeeded" else round(BAR_TOTAL * eta.fraction(p, now))
    )
    left = None if finished or job.started_at is None else eta.remaining(p, now)
    parts = [job.status.value]
    if p.range_test_steps_total:
        parts.append(f"range test {p.range_test_steps_done}/{p.range_test_steps_total}")
    if p.trials_total:
        parts.append(f"trials {p.trials_done}/{p.trials_total}")
    if p.confirmations_total:
        parts.append(f"confirmation {p.confirmations_done}/{p.confirmations_total}")
    if not finished:
        parts.append("time left: estimating" if left is None else f"{_duration(left)} left")
    if p.best_value is not None:
        parts.append(f"best {p.best_value:.4g}")
    bar.set_postfix_str(" · ".join(parts), refresh=False)
    bar.refresh()


def _duration(seconds: float) -> str:
    """``"45s"``, ``"2m 30s"``, ``"1h 5m"``, ``"3d"``: as the dashboard's ``fmtDuration``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    return f"{s // 3600}h {s % 3600 // 60}m" if s < 48 * 3600 else f"{s // 86400}d"
