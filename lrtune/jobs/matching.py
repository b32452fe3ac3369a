"""Finding a stored recommendation for a question: "what LR should I use for this?".

What ``GET /v1/recommendations`` and ``lrtune recommend --model .. --dataset ..`` answer, by
:meth:`JobStore.find_recommendation <lrtune.jobs.JobStore.find_recommendation>`. Two ways to
ask, and how each matches (the :class:`~lrtune.jobs.RecommendationMatch`'s ``match`` says which
one did):

- by fingerprint (:func:`match_fingerprint`): the newest recommendation of a succeeded job with
  exactly that fingerprint (:meth:`JobSpec.fingerprint`, on every job record);
- by names (:func:`match_names`): model and dataset names, optionally the optimizer and the
  batch size, read as a job spec with defaults for what they do not name (model and dataset
  params, the optimizer's settings, param groups). A succeeded job with that spec's
  fingerprint is an exact match (``match: fingerprint``); otherwise the most recent succeeded
  job for the same model and dataset names answers (``match: names``), and ``differs`` lists
  the spec fields in which it differs from the query (``model.params.hidden``,
  ``batch_size``, ...).

Nothing matching is a :class:`~lrtune.exceptions.NotFoundError` that says what to submit. The
name match reads succeeded jobs newest first, at most :data:`MAX_SCANNED` of them.

Example:
    >>> differences({"batch_size": 64, "model": {"name": "mlp", "params": {}}},
    ...             {"batch_size": 32, "model": {"name": "mlp", "params": {"hidden": [64]}}})
    ['batch_size', 'model.params.hidden']
    >>> query_spec("mlp", "digits", optimizer="adam").optimizer.name
    'adam'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from lrtune.exceptions import InvalidInputError, NotFoundError, describe_validation_error
from lrtune.jobs.schemas import RecommendationMatch
from lrtune.spec import JobSpec

if TYPE_CHECKING:
    from lrtune.jobs.store import JobStore

MAX_SCANNED = 2000
"""Most succeeded jobs a name match reads before it gives up."""

FINGERPRINT_FIELDS = {"model", "dataset", "optimizer", "batch_size", "param_groups"}
"""What :meth:`JobSpec.fingerprint` covers, so what ``differs`` compares."""


@dataclass(frozen=True)
class Answer:
    """Which stored recommendation answers a question, before it is read.

    ``match`` is how it matched; ``job_id`` is the job whose recommendation answers (a job's
    recommendation never changes, so a reader may keep the built answer by ``job_id``, and by
    ``query`` for a names match, whose ``differs`` depends on it).
    """

    match: Literal["fingerprint", "names"]
    job_id: str
    query: JobSpec | None = None


def answer_fingerprint(store: JobStore, fingerprint: str) -> Answer:
    """The job whose recommendation answers this fingerprint: the newest succeeded one.

    Raises:
        NotFoundError: no succeeded job has it.
    """
    job_id = store.latest_recommendation_job(fingerprint)
    if job_id is None:
        raise NotFoundError(
            f"no succeeded job has fingerprint {fingerprint}: submit the job (POST /v1/jobs, "
            "lrtune submit), or ask by model and dataset names"
        )
    return Answer("fingerprint", job_id)


def answer_names(
    store: JobStore,
    model: str,
    dataset: str,
    optimizer: str | None = None,
    batch_size: int | None = None,
) -> Answer:
    """The job whose recommendation answers this model, dataset, optimizer and batch size
    (see the module).

    Raises:
        InvalidInputError: the names do not make a job spec (e.g. an unknown optimizer).
        NotFoundError: no succeeded job has this model and dataset (within
            :data:`MAX_SCANNED`).
    """
    query = query_spec(model, dataset, optimizer, batch_size)
    exact = store.latest_recommendation_job(query.fingerprint())
    if exact is not None:
        return Answer("fingerprint", exact)
    job_id = store.latest_succeeded_job(query.model.name, query.dataset.name, MAX_SCANNED)
    if job_id is None:
        raise NotFoundError(
            f"no succeeded job for model {model!r} and dataset {dataset!r} yet: submit one "
            f"(POST /v1/jobs, lrtune submit), e.g. {json.dumps(_submit_hint(query))}"
        )
    return Answer("names", job_id, query)


def build(store: JobStore, answer: Answer) -> RecommendationMatch:
    """The answer itself: the job's stored recommendation, with ``differs`` for a names match."""
    stored = store.recommendation(answer.job_id)
    if answer.query is None:
        return RecommendationMatch(match=answer.match, stored=stored)
    found = store.get(answer.job_id).spec
    differs = differences(_covered(answer.query), _covered(found))
    return RecommendationMatch(match=answer.match, differs=differs, stored=stored)


def match_fingerprint(store: JobStore, fingerprint: str) -> RecommendationMatch:
    """:func:`answer_fingerprint`, built."""
    return build(store, answer_fingerprint(store, fingerprint))


def match_names(
    store: JobStore,
    model: str,
    dataset: str,
    optimizer: str | None = None,
    batch_size: int | None = None,
) -> RecommendationMatch:
    """:func:`answer_names`, built."""
    return build(store, answer_names(store, model, dataset, optimizer, batch_size))


def query_spec(
    model: str, dataset: str, optimizer: str | None = None, batch_size: int | None = None
) -> JobSpec:
    """The job spec a name query stands for: defaults for everything it does not name.

    Raises:
        InvalidInputError: a value the spec refuses (the message names the field).
    """
    data: dict[str, Any] = {"model": {"name": model}, "dataset": {"name": dataset}}
    if optimizer is not None:
        data["optimizer"] = {"name": optimizer}
    if batch_size is not None:
        data["batch_size"] = batch_size
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError(f"invalid query: {describe_validation_error(exc)}") from None


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
