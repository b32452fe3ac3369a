"""Results: the range tests and recommendations jobs store, and finding one that answers.

The part of :class:`~lrtune.jobs.JobStore` that reads and writes results: a job's range test
(:meth:`~lrtune.jobs.JobStore.save_range_test`, :meth:`~lrtune.jobs.JobStore.range_test`) and
recommendation (:meth:`~lrtune.jobs.JobStore.save_recommendation`,
:meth:`~lrtune.jobs.JobStore.recommendation`, a provisional one from the best finished trial),
reuse (:meth:`~lrtune.jobs.JobStore.reusable`, warm starts) and matching a question to a stored
recommendation. :class:`Results` is one of the rooms ``JobStore`` is built from (a base class of
``JobStore``, sharing its engine and URL, see :mod:`lrtune.jobs.store`); the matching functions
take any ``Results`` (a ``JobStore``), so neither this module nor the store imports the other
back.

Contract: the ``finding`` lease holder stores the job's completed range test and LR bounds
(:meth:`JobStore.save_range_test`, under its lease, once per job) before the job starts
searching; the ``confirming`` holder stores the recommendation
(:meth:`JobStore.save_recommendation`) before it succeeds. A job's results never change once
written, and go with the job when it is deleted.

Matching, "what LR should I use for this?": what ``GET /v1/recommendations`` and
``lrtune recommend --model .. --dataset ..`` answer, by
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
from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine

from lrtune.exceptions import InvalidInputError, NotFoundError, describe_validation_error
from lrtune.jobs import tables
from lrtune.jobs.db import reading, session
from lrtune.jobs.leases import fenced
from lrtune.jobs.records import (
    RESULT_FORMAT_VERSION,
    JobRecord,
    JobStatus,
    Lease,
    Provenance,
    RecommendationMatch,
    StoredRangeTest,
    StoredRecommendation,
)
from lrtune.jobs.rows import MAX_PAGE, check_limit, find_job
from lrtune.jobs.uploads import dataset_identity
from lrtune.recommendation import Recommendation
from lrtune.result import LRBounds, LRFinderResult
from lrtune.spec import JobSpec, SearchSpec


class Results:
    """The results' side of :class:`~lrtune.jobs.JobStore` (see the module). A base class of
    ``JobStore``, not used alone."""

    _engine: Engine
    url: str

    if TYPE_CHECKING:  # JobStore's

        def get(self, job_id: str) -> JobRecord: ...

    def reusable(self, spec: JobSpec) -> StoredRecommendation | None:
        """The newest recommendation that answers ``spec`` as a new job would, if any.

        It must be a succeeded job's, with the same fingerprint (:meth:`JobSpec.fingerprint`),
        the same search configuration (``search.max_parallel`` aside: it changes how many
        workers share the search, not what it tries) and the current result format
        (``RESULT_FORMAT_VERSION``).
        """
        wanted = _answer_config(spec.search)
        query = (
            select(tables.Recommendation)
            .join(tables.Job, tables.Job.id == tables.Recommendation.job_id)
            .where(
                tables.Recommendation.fingerprint == spec.fingerprint(),
                tables.Recommendation.format_version == RESULT_FORMAT_VERSION,
                tables.Job.status == JobStatus.SUCCEEDED.value,
            )
            .order_by(tables.Recommendation.created_at.desc(), tables.Recommendation.id.desc())
            .limit(MAX_PAGE)
        )
        with session(self._engine, write=False) as s:
            for row in s.scalars(query):
                stored = row.search_config and SearchSpec.model_validate(row.search_config)
                if stored and _answer_config(stored) == wanted:
                    return _stored_recommendation(row)
        return None

    def warm_start_candidates(self, spec: JobSpec, limit: int = 3) -> list[StoredRecommendation]:
        """Recommendations of recent succeeded jobs close to ``spec``, newest first.

        Close: the same model and dataset names (and for an uploaded dataset the same upload),
        but another fingerprint (other params, batch size, optimizer or param groups), in the
        current result format, with a recommended schedule. A new job's preparing worker
        enqueues their winners first (:func:`lrtune.search.prepare_study`). The newest
        ``MAX_PAGE`` succeeded recommendations are looked through (the names live in the
        spec's JSON).
        """
        check_limit(limit)
        query = (
            select(tables.Recommendation, tables.Job.spec)
            .join(tables.Job, tables.Job.id == tables.Recommendation.job_id)
            .where(
                tables.Recommendation.fingerprint != spec.fingerprint(),
                tables.Recommendation.format_version == RESULT_FORMAT_VERSION,
                tables.Job.status == JobStatus.SUCCEEDED.value,
            )
            .order_by(tables.Recommendation.created_at.desc(), tables.Recommendation.id.desc())
            .limit(MAX_PAGE)
        )
        names = _trained_names(spec.model_dump(mode="json"))
        found: list[StoredRecommendation] = []
        with session(self._engine, write=False) as s:
            for row, stored_spec in s.execute(query):
                if _trained_names(stored_spec) != names:
                    continue
                stored = _stored_recommendation(row)
                if stored.recommendation.best is not None:
                    found.append(stored)
                if len(found) == limit:
                    break
        return found

    def save_range_test(
        self,
        job_id: str,
        range_test: LRFinderResult,
        bounds: LRBounds,
        provenance: Provenance,
        *,
        lease: Lease | None = None,
    ) -> StoredRangeTest:
        """Store the job's completed range test and the LR bounds drawn from it.

        One per job: a second is a :class:`ConflictError`. A worker passes its ``lease``, as
        for :meth:`save_recommendation`.
        """
        if lease is not None and lease.job_id != job_id:
            raise InvalidInputError(f"the lease is for job {lease.job_id}, not {job_id}")
        result = {
            "range_test": range_test.model_dump(mode="json"),
            "bounds": bounds.model_dump(mode="json"),
        }
        with session(self._engine, write=True) as s:
            job = fenced(s, lease) if lease is not None else find_job(s, job_id, for_update=True)
            row = tables.RangeTest(
                job_id=job.id, format_version=RESULT_FORMAT_VERSION, result=result,
                **_provenance_columns(provenance),
            )  # fmt: skip
            s.add(row)
            s.flush()
            s.refresh(row)
            return _stored_range_test(row)

    def range_test(self, job_id: str) -> StoredRangeTest:
        """The range test a job stored (from the moment it starts searching).

        Raises:
            NotFoundError: no job has this id, or the job has not completed its range test.
        """
        job = self.get(job_id)  # NotFoundError for an unknown id
        query = select(tables.RangeTest).where(tables.RangeTest.job_id == job.id)
        with session(self._engine, write=False) as s:
            row = s.scalars(query).first()
            if row is None:
                raise NotFoundError(
                    f"job {job.id!r} has no range test yet: it is {job.status.value} (a job "
                    "stores its range test when it starts searching)"
                )
            return _stored_range_test(row)

    def save_recommendation(
        self,
        job_id: str,
        recommendation: Recommendation,
        provenance: Provenance,
        *,
        lease: Lease | None = None,
    ) -> StoredRecommendation:
        """Store the job's recommendation (one per job; a second is a :class:`ConflictError`).

        A worker passes its ``lease``: the write then lands only while the lease holds the job
        (:class:`~lrtune.exceptions.LeaseLost` otherwise, and nothing is written).
        """
        if lease is not None and lease.job_id != job_id:
            raise InvalidInputError(f"the lease is for job {lease.job_id}, not {job_id}")
        with session(self._engine, write=True) as s:
            job = fenced(s, lease) if lease is not None else find_job(s, job_id, for_update=True)
            row = tables.Recommendation(
                job_id=job.id,
                fingerprint=job.fingerprint,
                format_version=RESULT_FORMAT_VERSION,
                result=recommendation.model_dump(mode="json"),
                **_provenance_columns(provenance),
            )
            s.add(row)
            s.flush()
            s.refresh(row)
            return _stored_recommendation(row)

    def recommendation(self, job_id: str) -> StoredRecommendation:
        """The recommendation a job wrote; for a job that ended before writing one (cancelled,
        failed), its best finished search trial as a provisional one (:meth:`best_so_far`).

        Raises:
            NotFoundError: no job has this id, or the job has written no recommendation (yet)
                and, if it ended, finished no search trial.
        """
        job = self.get(job_id)  # NotFoundError for an unknown id
        query = (
            select(tables.Recommendation)
            .where(tables.Recommendation.job_id == job.id)
            .order_by(tables.Recommendation.created_at.desc(), tables.Recommendation.id.desc())
            .limit(1)
        )
        with session(self._engine, write=False) as s:
            row = s.scalars(query).first()
            if row is not None:
                return _stored_recommendation(row)
        provisional = self.best_so_far(job) if job.status.finished else None
        if provisional is None:
            detail = ", and finished no search trial" if job.status.finished else ""
            raise NotFoundError(
                f"job {job.id!r} has no recommendation: it is {job.status.value}{detail}"
            )
        return provisional

    def best_so_far(self, job: JobRecord) -> StoredRecommendation | None:
        """The best finished search trial of ``job`` as a provisional, unconfirmed
        recommendation (:func:`lrtune.study_view.read_best_so_far`); None without one."""
        from lrtune import __version__
        from lrtune._journal_tables import LOG_TABLE
        from lrtune.study_view import open_reader, read_best_so_far

        if not inspect(self._engine).has_table(LOG_TABLE):  # no study was ever stored
            return None
        rec = read_best_so_far(open_reader(self.url), job.study_name)
        if rec is None:
            return None
        provenance = Provenance(
            lrtune_version=__version__,
            rule=rec.range_test.consensus.suggestion.rule,  # the suggestion its bounds used
            lr_min=rec.bounds.low,
            lr_max=rec.bounds.high,
            device="unknown",
            search=job.spec.search,
        )
        return StoredRecommendation(
            job_id=job.id,
            fingerprint=job.fingerprint,
            format_version=RESULT_FORMAT_VERSION,
            provenance=provenance,
            recommendation=rec,
            created_at=job.finished_at or job.updated_at,
        )

    def latest_recommendation(self, fingerprint: str) -> StoredRecommendation | None:
        """The newest recommendation of a succeeded job with this fingerprint, if any."""
        query = _latest_recommendation_query(tables.Recommendation, fingerprint)
        with session(self._engine, write=False) as s:
            row = s.scalars(query).first()
            return _stored_recommendation(row) if row is not None else None

    def find_recommendation(
        self,
        *,
        fingerprint: str | None = None,
        model: str | None = None,
        dataset: str | None = None,
        optimizer: str | None = None,
        batch_size: int | None = None,
    ) -> RecommendationMatch:
        """A stored recommendation by fingerprint, or by model and dataset names (optionally
        the optimizer and batch size): how :func:`match_fingerprint` and :func:`match_names`
        answer "what LR should I use", the same for ``GET /v1/recommendations`` and
        ``lrtune recommend``.

        Raises:
            InvalidInputError: neither a fingerprint nor both names, or both kinds of query.
            NotFoundError: nothing matches; the message says what to submit.
        """
        names = (model, dataset, optimizer, batch_size)
        if fingerprint is not None:
            if any(value is not None for value in names):
                raise InvalidInputError(
                    "give either a fingerprint or model and dataset names, not both"
                )
            return match_fingerprint(self, fingerprint)
        if model is None or dataset is None:
            raise InvalidInputError("give a fingerprint, or both model and dataset names")
        return match_names(self, model, dataset, optimizer, batch_size)

    def latest_recommendation_job(self, fingerprint: str) -> str | None:
        """The id of the job whose recommendation :meth:`latest_recommendation` returns, if
        any: one indexed read of an id, nothing decoded (a job has one recommendation, which
        never changes, so a reader may keep it by this id)."""
        query = _latest_recommendation_query(tables.Recommendation.job_id, fingerprint)
        with reading(self._engine) as connection:
            return connection.execute(query).scalar()

    def latest_succeeded_job(self, model: str, dataset: str, max_scanned: int) -> str | None:
        """The id of the newest succeeded job whose spec names this model and dataset, looking
        through the newest ``max_scanned`` succeeded jobs (their specs' names only: no record is
        built)."""
        query = (
            select(tables.Job.id, tables.Job.spec)
            .where(tables.Job.status == JobStatus.SUCCEEDED.value)
            .order_by(tables.Job.submit_seq.desc())
            .limit(max_scanned)
        )
        with session(self._engine, write=False) as s:
            for job_id, spec in s.execute(query):
                if (spec["model"]["name"], spec["dataset"]["name"]) == (model, dataset):
                    return job_id
        return None


def _answer_config(search: SearchSpec) -> dict[str, Any]:
    """The search configuration that determines a job's answer (max_parallel does not)."""
    return search.model_dump(mode="json", exclude={"max_parallel"})


def _provenance_columns(provenance: Provenance) -> dict[str, Any]:
    return {
        "lrtune_version": provenance.lrtune_version,
        "rule": provenance.rule,
        "lr_min": provenance.lr_min,
        "lr_max": provenance.lr_max,
        "device": provenance.device,
        "search_config": provenance.search and provenance.search.model_dump(mode="json"),
    }


def _provenance(row: tables.RangeTest | tables.Recommendation) -> Provenance:
    return Provenance(
        lrtune_version=row.lrtune_version,
        rule=row.rule,
        lr_min=row.lr_min,
        lr_max=row.lr_max,
        device=row.device,
        search=row.search_config,
    )


def _latest_recommendation_query(what: Any, fingerprint: str) -> Any:
    """``what`` of the newest recommendation of a succeeded job with ``fingerprint``."""
    return (
        select(what)
        .join(tables.Job, tables.Job.id == tables.Recommendation.job_id)
        .where(
            tables.Recommendation.fingerprint == fingerprint,
            tables.Job.status == JobStatus.SUCCEEDED.value,
        )
        .order_by(tables.Recommendation.created_at.desc(), tables.Recommendation.id.desc())
        .limit(1)
    )


def _stored_range_test(row: tables.RangeTest) -> StoredRangeTest:
    return StoredRangeTest(
        job_id=row.job_id,
        format_version=row.format_version,
        provenance=_provenance(row),
        range_test=LRFinderResult.model_validate(row.result["range_test"]),
        bounds=LRBounds.model_validate(row.result["bounds"]),
        created_at=row.created_at,
    )


def _stored_recommendation(row: tables.Recommendation) -> StoredRecommendation:
    return StoredRecommendation(
        job_id=row.job_id,
        fingerprint=row.fingerprint,
        format_version=row.format_version,
        provenance=_provenance(row),
        recommendation=Recommendation.model_validate(row.result),
        created_at=row.created_at,
    )


# --- matching a question to a stored recommendation ----------------------------------------

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


def answer_fingerprint(store: Results, fingerprint: str) -> Answer:
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
    store: Results,
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


def build_match(store: Results, answer: Answer) -> RecommendationMatch:
    """The answer itself: the job's stored recommendation, with ``differs`` for a names match."""
    stored = store.recommendation(answer.job_id)
    if answer.query is None:
        return RecommendationMatch(match=answer.match, stored=stored)
    found = store.get(answer.job_id).spec
    differs = differences(_covered(answer.query), _covered(found))
    return RecommendationMatch(match=answer.match, differs=differs, stored=stored)


def match_fingerprint(store: Results, fingerprint: str) -> RecommendationMatch:
    """:func:`answer_fingerprint`, built (:func:`build_match`)."""
    return build_match(store, answer_fingerprint(store, fingerprint))


def match_names(
    store: Results,
    model: str,
    dataset: str,
    optimizer: str | None = None,
    batch_size: int | None = None,
) -> RecommendationMatch:
    """:func:`answer_names`, built (:func:`build_match`)."""
    return build_match(store, answer_names(store, model, dataset, optimizer, batch_size))


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


def _trained_names(spec: dict[str, Any]) -> tuple[str, ...]:
    """What a stored spec (as JSON) trains: its model's name and its dataset's identity, or
    its task's name."""
    if spec.get("task") is not None:
        return ("task", str(spec["task"]["name"]))
    return (spec["model"]["name"], dataset_identity(spec["dataset"]))
