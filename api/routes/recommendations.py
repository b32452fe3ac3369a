"""``/v1/recommendations``: "what LR should I use?", answered from stored results.

Two ways to ask, and how each matches (the answer's ``match`` says which one did; the matching
itself is the job store's, :mod:`lrtune.jobs.results`, which ``lrtune recommend`` uses too):

- ``?fingerprint=``: the newest recommendation of a succeeded job with exactly that
  fingerprint (:meth:`JobSpec.fingerprint`, on every job record).
- ``?model=..&dataset=..`` (optionally ``&optimizer=..&batch_size=..``): the query is read as a
  job spec with defaults for what it does not name (model and dataset params, the optimizer's
  settings, param groups). A succeeded job with that spec's fingerprint is an exact match
  (``match: fingerprint``); otherwise the most recent succeeded job for the same model and
  dataset names answers (``match: names``), and ``differs`` lists the spec fields in which it
  differs from the query (``model.params.hidden``, ``batch_size``, ...).

404 with the job to submit when nothing matches; 422 at the query field for a question that
is neither kind or both.

An answer is a stored recommendation, which never changes: the route asks the store only
which job's recommendation answers (:func:`~lrtune.jobs.results.answer_names`: one read of
an id), and serves that answer's body from the process's
:class:`~lrtune.api.cache.ResponseCache` (serialized once, as :class:`RecommendationMatch`, with
an ``ETag``; ``If-None-Match`` gets 304). Which job answers a question is itself reused for
``LRTUNE_ANSWER_TTL_S`` (1 s by default): a newer recommendation for the question, or its
job deleted through another API process, is served at most that long after it happened (a
delete through this process is at once; no answer, a 404, is never reused).

Example:
    >>> [route.path for route in router.routes]
    ['/recommendations']
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from lrtune.api.cache import CachedBody, ResponseCache
from lrtune.api.deps import IfNoneMatch, ReadAuth, ResponsesDep, SettingsDep, StoreDep
from lrtune.api.errors import FieldInvalid
from lrtune.api.routes._docs import NOT_MODIFIED, error_responses
from lrtune.api.routes.jobs import NO_NUL
from lrtune.jobs import JobStore, RecommendationMatch, results
from lrtune.spec import MAX_BATCH_SIZE, OptimizerNameInput

router = APIRouter(prefix="/recommendations", tags=["recommendations"])

Name = Annotated[str | None, Query(min_length=1, max_length=64, pattern=NO_NUL)]


@router.get(
    "",
    summary="Find a stored recommendation",
    response_model=RecommendationMatch,
    responses={
        **NOT_MODIFIED,
        **error_responses(401, 404, 422),
    },
)
async def find_recommendation(
    store: StoreDep,
    responses: ResponsesDep,
    settings: SettingsDep,
    _: ReadAuth,
    fingerprint: Annotated[
        str | None, Query(pattern=r"^[0-9a-f]{64}$", description="a job's fingerprint")
    ] = None,
    model: Name = None,
    dataset: Name = None,
    optimizer: Annotated[OptimizerNameInput | None, Query()] = None,
    batch_size: Annotated[int | None, Query(ge=1, le=MAX_BATCH_SIZE)] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """The stored recommendation for a fingerprint, or for model and dataset names."""
    if fingerprint is not None:
        if model or dataset or optimizer or batch_size:
            raise FieldInvalid(
                ["query", "fingerprint"],
                "give either fingerprint or model and dataset names, not both",
            )
        question: Question = ("fingerprint", fingerprint)
    else:
        for field, value in (("model", model), ("dataset", dataset)):
            if value is None:
                raise FieldInvalid(
                    ["query", field], f"{field} is required (or give a fingerprint)", "missing"
                )
        question = ("names", model, dataset, optimizer, batch_size)
    ask = partial(_answer, store, responses, question)
    served = await responses.answer(question, settings.answer_ttl_s, ask)
    return served.response(if_none_match)


Question = tuple[str | int | None, ...]
"""A lookup's question: ``("fingerprint", fp)`` or ``("names", model, dataset, optimizer,
batch_size)``."""


def _answer(
    store: JobStore, responses: ResponseCache, question: Question
) -> tuple[str, CachedBody, bool]:
    """Which job answers ``question`` now (raises NotFound when none does), its body, and
    that the answer may be reused (a stored recommendation never changes)."""
    if question[0] == "fingerprint":
        answer = results.answer_fingerprint(store, question[1])
    else:
        _, model, dataset, optimizer, batch_size = question
        answer = results.answer_names(store, model, dataset, optimizer, batch_size)
    return answer.job_id, _served(store, responses, answer), True


def _served(store: JobStore, responses: ResponseCache, answer: results.Answer) -> CachedBody:
    """The answer's body, built and serialized once per process (see the module)."""
    # differs depends on the query's covered fields only, so its fingerprint keys a names match
    query_key = answer.query.fingerprint() if answer.query is not None else None
    key = (answer.match, answer.job_id, query_key)
    cached = responses.get(key)
    if cached is None:
        match = results.build_match(store, answer)
        cached = responses.put(key, match.model_dump_json(by_alias=True).encode())
    return cached
