"""Where a stored recommendation comes from, for the code that trains under it (the Lightning
callback, the Hugging Face optimizers): itself, its JSON file, or a job id or spec fingerprint
looked up on an lrtune service or in a job store's database.

It imports no framework. It lives here, above :mod:`lrtune.recommendation`, because it reaches
the client and the job store, which import that package.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lrtune.exceptions import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from lrtune.recommendation._recommendation import Recommendation

FINGERPRINT = re.compile(r"[0-9a-f]{64}")
"""A job spec's fingerprint (its SHA-256, hex): a job id never looks like one."""


def load_recommendation(
    source: Any,
    *,
    url: str | None = None,
    token: str | None = None,
    database: str | None = None,
) -> Recommendation:
    """The :class:`~lrtune.recommendation.Recommendation` ``source`` names.

    ``source`` is a ``Recommendation``; the path of its JSON (``lrtune tune --json``'s, or a
    stored recommendation's, which holds one); or, with ``url`` (an lrtune service, ``token``
    if it wants one) or ``database`` (a job store's URL), a job id or a spec fingerprint (64
    hex digits: the newest recommendation of a succeeded job with that fingerprint).

    Raises:
        InvalidInputError: ``source`` is none of these, or both ``url`` and ``database`` given.
        NotFoundError: no job or recommendation there answers ``source``.
    """
    from lrtune.recommendation._recommendation import Recommendation

    if isinstance(source, Recommendation):
        return source
    if url is not None and database is not None:
        raise InvalidInputError("give url= (a service) or database= (a job store), not both")
    if url is not None:
        return _from_service(str(source), url, token)
    if database is not None:
        return _from_database(str(source), database)
    if isinstance(source, (str, Path)) and Path(source).is_file():
        data = json.loads(Path(source).read_text())
        if isinstance(data, dict) and "recommendation" in data and "spec" not in data:
            data = data["recommendation"]  # a stored recommendation
        return Recommendation.model_validate(data)
    raise InvalidInputError(
        "a recommendation is a Recommendation, the path of its JSON, or a job id or spec "
        f"fingerprint with url= (a service) or database= (a job store); got {source!r}"
    )


def _from_service(source: str, url: str, token: str | None) -> Recommendation:
    from lrtune.client import Client

    with Client(url, token) as client:
        if FINGERPRINT.fullmatch(source):
            return client.find_recommendation(fingerprint=source).stored.recommendation
        return client.recommendation(source).recommendation


def _from_database(source: str, database: str) -> Recommendation:
    from lrtune.jobs import JobStore

    store = JobStore(database)
    if not FINGERPRINT.fullmatch(source):
        return store.recommendation(source).recommendation
    stored = store.latest_recommendation(source)
    if stored is None:
        raise NotFoundError(f"no succeeded job with fingerprint {source} has a recommendation")
    return stored.recommendation
