"""``/v1/recommendations``: "what LR should I use?", answered from stored results.

Two ways to ask, and how each matches (the answer's ``match`` says which one did):

- ``?fingerprint=``: the newest recommendation of a succeeded job with exactly that
  fingerprint (:meth:`JobSpec.fingerprint`, on every job record).
- ``?model=..&dataset=..`` (optionally ``&optimizer=..&batch_size=..``): the query is read as a
  job spec with defaults for what it does not name (model and dataset params, the optimizer's
  settings, param groups). A succeeded job with that spec's fingerprint is an exact match
  (``match: fingerprint``); otherwise the most recent succeeded job for the same model and
  dataset names answers (``match: names``), and ``differs`` lists the spec fields in which it
  differs from the query (``model.params.hidden``, ``batch_size``, ...).

404 with the job to submit when nothing matches. The name match reads succeeded jobs newest
first, at most :data:`MAX_SCANNED` of them.

An answer is a stored recommendation, which never changes: the route asks the store only
which job's recommendation answers (one read of an id), and serves that answer's body from the
process's :class:`~lrtune.api.cache.ResponseCache` (serialized once, as
:class:`RecommendationMatch`, with an ``ETag``; ``If-None-Match`` gets 304).

Example:
    >>> differences({"batch_size": 64, "model": {"name": "mlp", "params": {}}},
    ...             {"batch_size": 32, "model": {"name": "mlp", "params": {"hidden": [64]}}})
    ['batch_size', 'model.params.hidden']
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from starlette.responses import Response

from lrtune.api.cache import CachedBody, ResponseCache
from lrtune.api.deps import ReadAuth, ResponsesDep, StoreDep
from lrtune.api.errors import FieldInvalid
from lrtune.api.routes._docs import error_responses
from lrtune.api.schemas import RecommendationMatch
from lrtune.exceptions import NotFoundError
from lrtune.jobs import JobStore
from lrtune.spec import MAX_BATCH_SIZE, JobSpec

MAX_SCANNED = 2000
"""Most succeeded jobs a name match reads before it gives up."""

FINGERPRINT_FIELDS = {"model", "dataset", "optimizer", "batch_size", "param_groups"}
"""What :meth:`JobSpec.fingerprint` covers, so what ``differs`` compares."""

router = APIRouter(prefix="/recommendations", tags=["recommendations"])

Name = Annotated[str | None, Query(min_length=1, max_length=64)]


@router.get(
    "",
    summary="Find a stored recommendation",
    response_model=RecommendationMatch,
    responses={
        304: {"description": "Unchanged since the `ETag` sent in `If-None-Match`"},
        **error_responses(401, 404, 422),
    },
)
def find_recommendation(
    store: StoreDep,
    responses: ResponsesDep,
    _: ReadAuth,
    fingerprint: Annotated[
        str | None, Query(pattern=r"^[0-9a-f]{64}$", description="a job's fingerprint")
    ] = None,
    model: Name = None,
    dataset: Name = None,
    optimizer: Annotated[Literal["sgd", "adam", "adamw"] | None, Query()] = None,
    batch_size: Annotated[int | None, Query(ge=1, le=MAX_BATCH_SIZE)] = None,
    if_none_match: Annotated[
        str | None, Header(description="the `ETag` of the copy the client has")
    ] = None,
) -> Response:
    """The stored recommendation for a fingerprint, or for model and dataset names."""
    if fingerprint is not None:
        if model or dataset or optimizer or batch_size:
            raise FieldInvalid(
                ["query", "fingerprint"],
                "give either fingerprint or model and dataset names, not both",
            )
        return _by_fingerprint(store, responses, fingerprint).response(if_none_match)
    for field, value in (("model", model), ("dataset", dataset)):
        if value is None:
            raise FieldInvalid(
                ["query", field], f"{field} is required (or give a fingerprint)", "missing"
            )
    query = _query_spec(model, dataset, optimizer, batch_size)
    exact = _exact(store, responses, query.fingerprint())
    if exact is not None:
        return exact.response(if_none_match)
    return _by_names(store, responses, query).response(if_none_match)


def _by_fingerprint(store: JobStore, responses: ResponseCache, fingerprint: str) -> CachedBody:
    exact = _exact(store, responses, fingerprint)
    if exact is None:
        raise NotFoundError(
            f"no succeeded job has fingerprint {fingerprint}: submit the job (POST /v1/jobs), "
            "or ask by model and dataset names (?model=..&dataset=..)"
        )
    return exact


def _exact(store: JobStore, responses: ResponseCache, fingerprint: str) -> CachedBody | None:
    """The ``match: fingerprint`` answer's body, if a succeeded job has that fingerprint."""
    job_id = store.latest_recommendation_job(fingerprint)
    if job_id is None:
        return None
    key = ("fingerprint", job_id)
    cached = responses.get(key)
    if cached is None:
        match = RecommendationMatch(match="fingerprint", stored=store.recommendation(job_id))
        cached = responses.put(key, _body(match))
    return cached


def _by_names(store: JobStore, responses: ResponseCache, query: JobSpec) -> CachedBody:
    """The ``match: names`` answer: the newest succeeded job for the query's names."""
    model, dataset = query.model.name, query.dataset.name
    job_id = store.latest_succeeded_job(model, dataset, MAX_SCANNED)
    if job_id is None:
        raise NotFoundError(
            f"no succeeded job for model {model!r} and dataset {dataset!r} yet: submit one, "
            f"e.g. POST /v1/jobs with {json.dumps(_submit_hint(query))}"
        )
    key = ("names", job_id, query.fingerprint())  # differs depends on the covered fields only
    cached = responses.get(key)
    if cached is None:
        job = store.get(job_id)
        match = RecommendationMatch(
            match="names",
            differs=differences(_covered(query), _covered(job.spec)),
            stored=store.recommendation(job.id),
        )
        cached = responses.put(key, _body(match))
    return cached


def _body(match: RecommendationMatch) -> bytes:
    """The bytes FastAPI would send for ``match`` as the route's response model."""
    return match.model_dump_json(by_alias=True).encode()


def _query_spec(model: str, dataset: str, optimizer: str | None, batch_size: int | None) -> JobSpec:
    data: dict[str, Any] = {"model": {"name": model}, "dataset": {"name": dataset}}
    if optimizer is not None:
        data["optimizer"] = {"name": optimizer}
    if batch_size is not None:
        data["batch_size"] = batch_size
    return JobSpec.model_validate(data)


def _covered(spec: JobSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", include=FINGERPRINT_FIELDS)


def _submit_hint(query: JobSpec) -> dict[str, Any]:
    hint: dict[str, Any] = {
        "model": {"name": query.model.name},
        "dataset": {"name": query.dataset.name},
    }
    if query.optimizer.name != "sgd":
        hint["optimizer"] = {"name": query.optimizer.name}
    return hint


def differences(wanted: Any, found: Any, path: str = "") -> list[str]:
    """Dotted paths of the leaves in which ``found`` differs from ``wanted``, sorted."""
    if isinstance(wanted, dict) and isinstance(found, dict):
        paths: list[str] = []
        for key in sorted(set(wanted) | set(found)):
            where = f"{path}.{key}" if path else key
            if key not in wanted or key not in found:
                paths.append(where)
            else:
                paths += differences(wanted[key], found[key], where)
        return paths
    return [] if wanted == found else [path]
