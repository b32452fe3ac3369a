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

:class:`ClientSettings` reads ``LRTUNE_URL`` and ``LRTUNE_API_TOKEN``, what ``lrtune submit``,
``status``, ``recommend``, ``cancel``, ``workers`` and ``list`` use when given no
``--url``/``--token``.

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

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings, SettingsConfigDict

from lrtune.exceptions import (
    ConflictError,
    InvalidInputError,
    LRTuneError,
    NotFoundError,
    StorageUnavailableError,
    describe_validation_error,
)
from lrtune.jobs.records import (
    DatasetUpload,
    JobPage,
    JobRecord,
    JobStatus,
    RecommendationMatch,
    RegistryList,
    StoredRecommendation,
    Submission,
    WorkerList,
)
from lrtune.jobs.settings import ENV_PREFIX
from lrtune.jobs.waiting import wait_for
from lrtune.spec import JobSpec

if TYPE_CHECKING:
    from lrtune.result import FinderView
    from lrtune.study_view import TrialView

__all__ = ["Client", "ClientSettings", "Unauthorized"]

Answer = TypeVar("Answer", bound=BaseModel)


class ClientSettings(BaseSettings):
    """Where a client finds the API, from the environment: the one place the client side
    reads it (``lrtune submit/status/recommend/cancel`` without ``--url``/``--token``).

    ``LRTUNE_URL`` is the API's base URL; ``LRTUNE_API_TOKEN`` is the token the server
    requires (the same variable the server reads), a :class:`~pydantic.SecretStr` so that it
    never shows in a ``repr``.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    url: str | None = None
    api_token: SecretStr | None = None


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
        headers = {"Authorization": f"Bearer {_checked_token(token)}"} if token else {}
        self.url = _checked_url(url)
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
        # A spec is sent as it was written (its unset fields left to the service's defaults):
        # what a job naming a task leaves unset, its metric, admission takes from the task.
        body = (
            spec.model_dump(mode="json", exclude_unset=True)
            if isinstance(spec, JobSpec)
            else to_jsonable_python(spec)
        )
        params: dict[str, Any] = {"reuse": "true" if reuse else "false"}
        if name is not None:
            params["name"] = name
        return self._parsed(Submission, self._call("POST", "/v1/jobs", json=body, params=params))

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
        names its target column; default its column named ``target``), the file's bytes, or
        arrays ``(x, y)``. ``task`` overrides the task the server infers from ``y``. The same
        data uploaded again returns the stored upload (same id).
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
        return self._parsed(JobRecord, self._call("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(
        self, status: JobStatus | str | None = None, limit: int = 50, after: str | None = None
    ) -> JobPage:
        """A page of jobs, newest first; pass ``next_after`` back as ``after`` for the next."""
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = JobStatus(status).value
        if after is not None:
            params["after"] = after
        return self._parsed(JobPage, self._call("GET", "/v1/jobs", params=params))

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job that has not finished."""
        return self._parsed(JobRecord, self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def recommendation(self, job_id: str) -> StoredRecommendation:
        """The recommendation the job wrote (:class:`NotFoundError` until it has)."""
        data = self._call("GET", f"/v1/jobs/{job_id}/recommendation")
        return self._parsed(StoredRecommendation, data)

    def finder(self, job_id: str) -> FinderView:
        """The job's range test (``GET /v1/jobs/{id}/finder``): the loss-vs-LR curves of its
        seeds and their median, every rule's suggestion, the chosen one and the LR bounds;
        ``range_test`` is None until it has finished."""
        from lrtune.result import FinderView

        return self._parsed(FinderView, self._call("GET", f"/v1/jobs/{job_id}/finder"))

    def trials(self, job_id: str) -> list[TrialView]:
        """The job's search trials, then its confirmation runs (``GET /v1/jobs/{id}/trials``),
        as far as they have got: family, params, state, value (the job's
        ``search.metric``), per-epoch values, why a run was pruned or failed, and its LR at
        every step. ``GET /v1/jobs/{id}/trials.csv`` is the same list as a table."""
        from lrtune.study_view import TrialView

        data = self._call("GET", f"/v1/jobs/{job_id}/trials")
        rows = data.get("data") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise LRTuneError(
                f"{self.url} answered trials this client cannot read (another lrtune version?): "
                "no list of trials under 'data'"
            )
        return [self._parsed(TrialView, row) for row in rows]

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
        query = {
            "fingerprint": fingerprint,
            "model": model,
            "dataset": dataset,
            "optimizer": optimizer,
            "batch_size": batch_size,
        }
        params = {key: value for key, value in query.items() if value is not None}
        data = self._call("GET", "/v1/recommendations", params=params)
        return self._parsed(RecommendationMatch, data)

    def models(self) -> RegistryList:
        """The models a job may name here (``GET /v1/models``): the service's registry and the
        plugins only its live workers have, each with its params' JSON schema."""
        return self._parsed(RegistryList, self._call("GET", "/v1/models"))

    def datasets(self) -> RegistryList:
        """The datasets a job may name here (``GET /v1/datasets``), as :meth:`models`."""
        return self._parsed(RegistryList, self._call("GET", "/v1/datasets"))

    def list_workers(self, *, live_only: bool = True) -> WorkerList:
        """The workers taking jobs (``GET /v1/workers``), each with what it holds; stopped and
        silent ones too unless ``live_only``: as
        :meth:`~lrtune.jobs.JobStore.list_workers` answers."""
        params = {} if live_only else {"all": "true"}
        return self._parsed(WorkerList, self._call("GET", "/v1/workers", params=params))

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
        return wait_for(job_id, self.get, timeout_s=timeout_s, poll_s=poll_s, progress=progress)

    def agent(self, tasks: Any, **options: Any) -> int:
        """Serve this service's jobs of ``tasks`` from this machine: an agent
        (:class:`lrtune.agent.Agent`, whose keyword ``options`` these are: ``device``,
        ``job_id``, ``max_units``, ``once``); the number of units it ran.

        ``tasks``: a task, or a list of tasks or import paths (``"mypkg.train:task"``).
        """
        from lrtune.agent import Agent
        from lrtune.task import import_target
        from lrtune.workers.tasks import loaded

        items = tasks if isinstance(tasks, (list, tuple)) else [tasks]
        found = {}
        for item in items:
            if isinstance(item, str):
                task = loaded(import_target(item), item)
            else:
                task = loaded(item, type(item).__name__)
            found[task.name] = task
        return Agent(self, found, **options).run()

    def _parsed(self, model: type[Answer], data: Any) -> Answer:
        """``data`` as ``model``; a body this client cannot read is an error saying so."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise LRTuneError(
                f"{self.url} answered with a {model.__name__} this client cannot read (another "
                f"lrtune version?): {describe_validation_error(exc)}"
            ) from None

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise StorageUnavailableError(
                f"cannot reach the lrtune API at {self.url}: {type(exc).__name__}: {exc}"
            ) from None
        if not response.is_success:
            raise _error(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise LRTuneError(
                f"{self.url}{path} answered {response.status_code} with no JSON: is {self.url} "
                "lrtune's API?"
            ) from None


def _checked_url(url: str) -> str:
    """``url`` without its trailing slash, if it is an http(s) URL with a host."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidInputError(
            f"the API URL {url!r} is not an http:// or https:// URL with a host, e.g. "
            "http://127.0.0.1:8000"
        )
    return url.rstrip("/")


def _checked_token(token: str) -> str:
    """``token``, if a header can carry it; the error never shows it."""
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise InvalidInputError(
            "the API token must be printable ASCII without spaces or line breaks (check "
            "LRTUNE_API_TOKEN or --token)"
        )
    return token


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
        paths = [(".".join(map(str, e["loc"])), e["msg"]) for e in body.get("errors", [])]
    except (ValueError, KeyError, TypeError):
        message, paths = response.text[:200] or response.reason_phrase, []
    fields = [f"{path}: {msg}" for path, msg in paths if path not in message]  # not twice
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
