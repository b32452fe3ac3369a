"""A Python client for lrtune's HTTP API: submit a job, wait for it, read its recommendation
(or find a stored one by fingerprint or by model and dataset names).

Synchronous (httpx), and light: importing it loads neither torch nor Optuna, so a notebook or
a CI step can ask a remote service for an LR without installing a training stack's worth of
imports. It returns the same pydantic models the API serves (:class:`~lrtune.jobs.JobRecord`,
:class:`~lrtune.jobs.StoredRecommendation`, ...), and turns error responses back into
:mod:`lrtune.exceptions` classes with the server's message:

- 401, 413, 422: :class:`~lrtune.exceptions.InvalidInputError` (:class:`Unauthorized` for a
  401); a 422's message names the invalid fields with their paths;
- 404: :class:`~lrtune.exceptions.NotFoundError`;
- 409: :class:`~lrtune.exceptions.ConflictError`;
- 429, 503 and an unreachable server: :class:`~lrtune.exceptions.StorageUnavailableError`
  (retrying later may succeed).

Example:

    .. code-block:: python

        from lrtune.client import Client

        with Client("http://127.0.0.1:8000", token="...") as client:
            job = client.submit({"model": {"name": "mlp"}, "dataset": {"name": "digits"}})
            # or on data of one's own: an .npz (x, y), a CSV with a target column, or arrays
            # upload = client.upload_dataset("train.csv", target="label")
            # job = client.submit({"model": {"name": "mlp"}, "dataset": upload.dataset})
            client.wait(job.id)  # a progress bar until the job has finished
            print(client.recommendation(job.id).recommendation.to_code())

    >>> client = Client("http://127.0.0.1:1")
    >>> client.get("some-job")
    Traceback (most recent call last):
    ...
    lrtune.exceptions.StorageUnavailableError: cannot reach the lrtune API at \
http://127.0.0.1:1: ConnectError: ...
    >>> client.close()
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic_core import to_jsonable_python

from lrtune.exceptions import (
    ConflictError,
    InvalidInputError,
    LRTuneError,
    NotFoundError,
    StorageUnavailableError,
)
from lrtune.jobs.schemas import (
    DatasetUpload,
    JobPage,
    JobProgress,
    JobRecord,
    JobStatus,
    StoredRecommendation,
    Submission,
)
from lrtune.spec import JobSpec

if TYPE_CHECKING:
    from lrtune.api.schemas import RecommendationMatch

__all__ = ["Client", "Unauthorized"]


class Unauthorized(InvalidInputError):
    """The server wants its API token (``Authorization: Bearer``) and got none or another."""


class Client:
    """lrtune's HTTP API at ``url`` (e.g. ``http://127.0.0.1:8000``), with its token if set.

    Raises (every method): the :mod:`lrtune.exceptions` class of the error response (see the
    module), with the server's one-line message.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout_s, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never the token
        return f"Client({self.url!r})"

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def submit(
        self, spec: JobSpec | Mapping[str, Any], name: str | None = None, *, reuse: bool = True
    ) -> Submission:
        """Queue a job; ``spec`` a :class:`~lrtune.spec.JobSpec` or its JSON as a mapping.

        With ``reuse`` (the default) a spec an earlier succeeded job answered is answered by it
        at once: the :class:`~lrtune.jobs.Submission` is that job, ``reused_from`` its id and
        ``recommendation`` its answer; ``reuse=False`` always queues a new job.
        """
        # A mapping may hold models, e.g. an upload's ``dataset``: they are sent as their JSON.
        body = (
            spec.model_dump(mode="json") if isinstance(spec, JobSpec) else to_jsonable_python(spec)
        )
        params: dict[str, Any] = {"reuse": "true" if reuse else "false"}
        if name is not None:
            params["name"] = name
        return Submission.model_validate(self._call("POST", "/v1/jobs", json=body, params=params))

    def upload_dataset(
        self,
        source: str | Path | bytes | tuple[Any, Any],
        *,
        target: str | None = None,
        task: str | None = None,
        name: str | None = None,
    ) -> DatasetUpload:
        """Upload a dataset; a job names it by the answer's ``dataset`` (a ``DatasetRef``).

        ``source``: a path to an ``.npz`` (arrays ``x`` and ``y``) or a CSV (then ``target``
        names its target column), the file's bytes, or arrays ``(x, y)``. ``task`` overrides
        the task the server infers from ``y``. The same data uploaded again returns the
        stored upload (same id).
        """
        filename, data = _upload_body(source)
        form = {"target": target, "task": task, "name": name}
        fields = {key: value for key, value in form.items() if value is not None}
        answer = self._call("POST", "/v1/datasets", files={"file": (filename, data)}, data=fields)
        return DatasetUpload.model_validate(answer)

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset (:class:`ConflictError` while an unfinished job uses it)."""
        self._call("DELETE", f"/v1/datasets/{dataset_id}")

    def get(self, job_id: str) -> JobRecord:
        """The job: its state, progress, timings and error."""
        return JobRecord.model_validate(self._call("GET", f"/v1/jobs/{job_id}"))

    def list(
        self, status: JobStatus | str | None = None, limit: int = 50, after: str | None = None
    ) -> JobPage:
        """A page of jobs, newest first; pass ``next_after`` back as ``after`` for the next."""
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = JobStatus(status).value
        if after is not None:
            params["after"] = after
        return JobPage.model_validate(self._call("GET", "/v1/jobs", params=params))

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job that has not finished."""
        return JobRecord.model_validate(self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def recommendation(self, job_id: str) -> StoredRecommendation:
        """The recommendation the job wrote (:class:`NotFoundError` until it has)."""
        data = self._call("GET", f"/v1/jobs/{job_id}/recommendation")
        return StoredRecommendation.model_validate(data)

    def find_recommendation(
        self,
        *,
        fingerprint: str | None = None,
        model: str | None = None,
        dataset: str | None = None,
        optimizer: str | None = None,
        batch_size: int | None = None,
    ) -> RecommendationMatch:
        """A stored recommendation by fingerprint, or by model and dataset names.

        The answer says how it matched (``match``) and, for a match by names, the spec fields
        the stored job differs in (``differs``); see ``GET /v1/recommendations``.
        """
        from lrtune.api.schemas import RecommendationMatch

        query = {
            "fingerprint": fingerprint,
            "model": model,
            "dataset": dataset,
            "optimizer": optimizer,
            "batch_size": batch_size,
        }
        params = {key: value for key, value in query.items() if value is not None}
        data = self._call("GET", "/v1/recommendations", params=params)
        return RecommendationMatch.model_validate(data)

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        poll_s: float = 1.0,
        progress: bool = True,
    ) -> JobRecord:
        """Poll the job until it has finished (succeeded, failed or cancelled); return it.

        With ``progress``, a tqdm bar shows the job's state and its units done (range-test
        steps, trials, confirmation runs) out of those known so far.

        Raises:
            TimeoutError: the job had not finished after ``timeout_s`` seconds.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bar = _progress_bar(job_id) if progress else None
        try:
            while True:
                job = self.get(job_id)
                if bar is not None:
                    _show(bar, job)
                if job.status.finished:
                    return job
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"job {job_id} is still {job.status.value} after {timeout_s} s"
                    )
                time.sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise StorageUnavailableError(
                f"cannot reach the lrtune API at {self.url}: {type(exc).__name__}: {exc}"
            ) from None
        if response.is_success:
            return response.json() if response.content else None
        raise _error(response)


def _upload_body(source: str | Path | bytes | tuple[Any, Any]) -> tuple[str, bytes]:
    """The file name and bytes an upload sends."""
    if isinstance(source, bytes):
        return "dataset", source
    if isinstance(source, tuple):
        import io

        import numpy as np

        x, y = source
        buffer = io.BytesIO()
        np.savez_compressed(buffer, x=np.asarray(x), y=np.asarray(y))
        return "arrays.npz", buffer.getvalue()
    path = Path(source)
    return path.name, path.read_bytes()


def _error(response: httpx.Response) -> LRTuneError:
    try:
        body = response.json()
        message = str(body["detail"])
        fields = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in body.get("errors", [])]
    except (ValueError, KeyError, TypeError):
        message, fields = response.text[:200] or response.reason_phrase, []
    if fields and response.status_code == 422:
        message = f"{message} (at {'; '.join(fields)})"
    status = response.status_code
    kind: type[LRTuneError]
    if status == 401:
        kind = Unauthorized
    elif status == 404:
        kind = NotFoundError
    elif status == 409:
        kind = ConflictError
    elif status in (429, 503):
        kind = StorageUnavailableError
    elif status < 500:
        kind = InvalidInputError
    else:
        kind = LRTuneError
    return kind(f"HTTP {status}: {message}")


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
