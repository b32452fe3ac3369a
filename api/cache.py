"""The serialized bodies of read answers that never change, kept in the API process.

A stored recommendation never changes once written (one per job), and neither does a
finished range test: routes that serve them ask the store only *which* answer is current (a
light query: the job id of the newest recommendation for a fingerprint, or the job's row),
then serve that answer's JSON bytes from here, serialized once by its pydantic schema, with
an ``ETag`` computed once. A key names the job (``key[1]``) and whatever else makes the
answer change (the finder view's job status and progress; the name match's query); ids of
deleted jobs are never handed out again (uuid4), and deleting a job also forgets its entries
(:meth:`ResponseCache.forget`), so a deleted job's answer is never served from here. Bounded:
the least recently used entry goes first.

Which job answers a question can change (a newer recommendation for the same spec), so that
is asked of the store; :meth:`ResponseCache.recent` keeps each question's last answer for a
few seconds at most (the caller's ``max_age_s``: the lookups' ``LRTUNE_ANSWER_TTL_S``), so
that a burst of the same question asks the store once, and not from the threadpool each time.

A job's own body (``GET /v1/jobs/{id}``) changes with its row, so :class:`JobBodies` keeps
each job's body with the row version it was built from (:mod:`lrtune.jobs.row_versions`), and
the route serves it while one indexed read says the row is still at that version.

Example:
    >>> cache = ResponseCache(max_entries=2)
    >>> cache.put(("finder", "job-1"), b'{"a":1}').etag == cache.get(("finder", "job-1")).etag
    True
    >>> body = cache.put(("rec", "job-1"), b'{"b":2}')
    >>> cache.remember(("fingerprint", "ab12"), "job-1", body)
    >>> cache.recent(("fingerprint", "ab12"), max_age_s=1.0) is body
    True
    >>> import time; time.sleep(0.3)
    >>> cache.recent(("fingerprint", "ab12"), max_age_s=0.2) is None  # this caller asks again
    True
    >>> cache.recent(("fingerprint", "ab12"), max_age_s=0.2) is body  # the others, meanwhile
    True
    >>> cache.forget("job-1"); cache.get(("finder", "job-1")) is None
    True
    >>> cache.recent(("fingerprint", "ab12"), max_age_s=1.0) is None
    True
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from lrtune.exceptions import LRTuneError

MAX_ENTRIES = 256
"""Bodies kept per process (a recommendation's body is ~20-200 KiB: at most ~50 MiB)."""
MAX_JOBS = 1024
"""Job bodies kept per process (:class:`JobBodies`; ~1-3 KiB each: a few MiB at most)."""


@dataclass(frozen=True)
class CachedBody:
    """An answer's JSON bytes and their strong ``ETag``."""

    body: bytes
    etag: str

    @classmethod
    def of(cls, body: bytes) -> CachedBody:
        """``body`` with its strong ETag: a digest of the bytes."""
        return cls(body, f'"{hashlib.sha256(body).hexdigest()[:32]}"')

    def response(self, if_none_match: str | None = None) -> Response:
        """The body as a JSON response with its ``ETag``; 304 when the client has it."""
        if if_none_match is not None and self.etag in listed_tags(if_none_match):
            return Response(status_code=304, headers={"ETag": self.etag})
        return Response(self.body, media_type="application/json", headers={"ETag": self.etag})


class ResponseCache:
    """Bodies by key, least recently used out first; safe across the threadpool's threads.

    A key is a tuple whose second item is the job id the answer belongs to.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._bodies: OrderedDict[tuple[Hashable, ...], CachedBody] = OrderedDict()
        # question -> (the job that answered it, its body, when it was asked)
        self._answers: OrderedDict[Hashable, tuple[str, CachedBody, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Hashable, ...]) -> CachedBody | None:
        with self._lock:
            cached = self._bodies.get(key)
            if cached is not None:
                self._bodies.move_to_end(key)
            return cached

    def put(self, key: tuple[Hashable, ...], body: bytes) -> CachedBody:
        cached = CachedBody.of(body)
        with self._lock:
            self._bodies[key] = cached
            self._bodies.move_to_end(key)
            while len(self._bodies) > self.max_entries:
                self._bodies.popitem(last=False)
        return cached

    def remember(self, question: Hashable, job_id: str, body: CachedBody) -> None:
        """Note that the job ``job_id`` answered ``question`` now, with ``body``."""
        with self._lock:
            self._answers[question] = (job_id, body, time.monotonic())
            self._answers.move_to_end(question)
            while len(self._answers) > self.max_entries:
                self._answers.popitem(last=False)

    def recent(self, question: Hashable, max_age_s: float) -> CachedBody | None:
        """The body :meth:`remember` noted for ``question`` at most ``max_age_s`` ago, else None.

        Once the note is older, one caller gets None and asks the store again; the callers
        that come while it asks are still served the noted body (one lookup for a burst, not
        one each), until :meth:`remember` or :meth:`drop` replaces it.
        """
        if max_age_s <= 0:
            return None
        with self._lock:
            noted = self._answers.get(question)
            if noted is None:
                return None
            job_id, body, noted_at = noted
            if time.monotonic() - noted_at <= max_age_s:
                return body
            self._answers[question] = (job_id, body, time.monotonic())  # this caller asks
            return None

    async def answer(
        self,
        question: Hashable,
        max_age_s: float,
        ask: Callable[[], tuple[str, CachedBody, bool]],
    ) -> CachedBody:
        """The body for ``question``: the one noted at most ``max_age_s`` ago (:meth:`recent`),
        else ``ask()``'s, run in the threadpool (it reads the database).

        ``ask`` returns the job that answers, its body, and whether the answer may be reused
        (then it is noted; else the question's note is dropped). What it raises (none answers:
        404; the store is down: 503) drops the note and propagates.
        """
        served = self.recent(question, max_age_s)
        if served is not None:
            return served
        try:
            job_id, served, reusable = await run_in_threadpool(ask)
        except LRTuneError:
            self.drop(question)
            raise
        if reusable:
            self.remember(question, job_id, served)
        else:
            self.drop(question)
        return served

    def drop(self, question: Hashable) -> None:
        """Forget the answer to ``question`` (asking the store again found none, or failed)."""
        with self._lock:
            self._answers.pop(question, None)

    def forget(self, job_id: str) -> None:
        """Drop every body of the job ``job_id``, and every answer it gave (it was deleted)."""
        with self._lock:
            for key in [key for key in self._bodies if key[1] == job_id]:
                del self._bodies[key]
            for question in [q for q, (job, _, _) in self._answers.items() if job == job_id]:
                del self._answers[question]

    def __len__(self) -> int:
        return len(self._bodies)


class JobBodies:
    """Each job's body as served, with the row version it was built from; the least recently
    served job's goes first beyond ``max_jobs``. Safe across the threadpool's threads.

    Example:
        >>> bodies = JobBodies(max_jobs=1)
        >>> served = bodies.put("job-1", 3, b'{"status":"queued"}')
        >>> bodies.get("job-1", 3) is served, bodies.get("job-1", 4)  # the row moved on
        (True, None)
        >>> bodies.put("job-1", 2, b'{"old":1}') is served  # built from an older row: kept out
        True
        >>> _ = bodies.put("job-2", 1, b"{}"); len(bodies), bodies.get("job-1", 3)
        (1, None)
    """

    def __init__(self, max_jobs: int = MAX_JOBS) -> None:
        self.max_jobs = max_jobs
        self._bodies: OrderedDict[str, tuple[int, CachedBody]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, row_version: int) -> CachedBody | None:
        """The job's body if it was built from the row at ``row_version``, else None."""
        with self._lock:
            kept = self._bodies.get(job_id)
            if kept is None or kept[0] != row_version:
                return None
            self._bodies.move_to_end(job_id)
            return kept[1]

    def put(self, job_id: str, row_version: int, body: bytes) -> CachedBody:
        """Keep ``body``, built from the job's row at ``row_version``, unless a body built from
        a later version is kept already (two requests built at once): return the one kept."""
        built = CachedBody.of(body)
        with self._lock:
            kept = self._bodies.get(job_id)
            if kept is not None and kept[0] > row_version:
                return kept[1]
            self._bodies[job_id] = (row_version, built)
            self._bodies.move_to_end(job_id)
            while len(self._bodies) > self.max_jobs:
                self._bodies.popitem(last=False)
        return built

    def forget(self, job_id: str) -> None:
        """Drop the job's body (it was deleted)."""
        with self._lock:
            self._bodies.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._bodies)


def listed_tags(header: str) -> set[str]:
    """The entity tags an ``If-None-Match`` header lists (a weak one compared as strong)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
