"""Waiting for a job to finish, with a progress bar: one loop for the HTTP client and the store.

:func:`wait_for` polls a ``get(job_id)`` (:meth:`lrtune.client.Client.get` over HTTP,
:meth:`lrtune.jobs.JobStore.get` on the database) until the job is ``succeeded``, ``failed``
or ``cancelled``. Its tqdm bar (on stderr) counts the job's units done (range-test steps,
trials, confirmation runs) out of those known so far, with the job's state and best value.

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

from lrtune.jobs.schemas import JobProgress, JobRecord


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
    try:
        while True:
            job = get(job_id)
            if bar is not None:
                _show(bar, job)
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

    return tqdm(total=0, desc=f"job {job_id[:8]}", unit="unit", dynamic_ncols=True)


def _units(progress: JobProgress) -> tuple[int, int]:
    done = progress.range_test_steps_done + progress.trials_done + progress.confirmations_done
    total = progress.range_test_steps_total + progress.trials_total + progress.confirmations_total
    return done, max(total, done)


def _show(bar: Any, job: JobRecord) -> None:
    done, total = _units(job.progress)
    bar.total = total
    bar.n = done
    phase = job.status.value
    best = job.progress.best_value
    bar.set_postfix_str(phase if best is None else f"{phase}, best {best:.4g}", refresh=False)
    bar.refresh()
