"""What the job store returns: pydantic models, the one schema system of lrtune.

The HTTP API serves these models as they are, and the CLI prints them with ``--json``, so
their field names are the public names. Stored JSON (a job's spec, a recommendation) is
validated into the library's own models (:class:`~lrtune.spec.JobSpec`,
:class:`~lrtune.recommendation.Recommendation`) on the way out; importing this module loads
neither torch nor Optuna.

Example:
    >>> JobStatus("queued").finished
    False
    >>> sorted(s.value for s in JobStatus if s.finished)
    ['cancelled', 'failed', 'succeeded']
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, computed_field

from lrtune._pydantic import JsonFloat, ResultModel
from lrtune.recommendation import Recommendation
from lrtune.result import LRBounds, LRFinderResult
from lrtune.spec import DatasetRef, JobSpec, OptimizerSpec, SearchSpec

SPEC_FORMAT_VERSION = 1
"""Format of the job spec JSON stored in ``lrtune_jobs.spec``."""
RESULT_FORMAT_VERSION = 1
"""Format of the result JSON stored in ``lrtune_range_tests`` and ``lrtune_recommendations``."""


class JobStatus(str, Enum):
    """A job's state: ``queued -> finding -> searching -> confirming -> succeeded``.

    Any state before ``succeeded`` may end in ``failed`` or ``cancelled``; the three final
    states never change again.
    """

    QUEUED = "queued"
    FINDING = "finding"
    SEARCHING = "searching"
    CONFIRMING = "confirming"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the state is final."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


def _as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class JobProgress(ResultModel):
    """How far a job has got; the workers fill it in as they go (all zero when queued).

    Range-test steps are counted over all its seeds (``num_iter`` x ``seeds`` in all; a
    completed range test counts them all, even when its sweeps stopped early at divergence).
    Trials and confirmation runs count the finished ones (complete or pruned).

    Progress never goes backwards: the store keeps, field by field, the larger of what it has
    and what a worker reports (:meth:`merged`), so two workers racing to report cannot undo
    each other, and a worker may report only the fields its unit changed.

    Example:
        >>> stored = JobProgress(trials_done=3, trials_total=5, best_value=0.2)
        >>> stored.merged(JobProgress(trials_done=2, best_value=0.4)) == stored  # stale
        True
        >>> stored.merged(JobProgress(trials_done=4, best_value=0.1)).best_value
        0.1
    """

    range_test_steps_done: int = 0
    range_test_steps_total: int = 0
    trials_done: int = 0
    trials_total: int = 0
    confirmations_done: int = 0
    confirmations_total: int = 0
    best_value: JsonFloat | None = Field(None, description="best search metric so far")
    trials_skipped: int = Field(
        0, description="queued search trials closed unrun once the search stopped early"
    )
    search_stopped: str | None = Field(
        None, description="why the search stopped before its budget (target reached, timeout)"
    )

    def merged(self, report: JobProgress) -> JobProgress:
        """This progress updated by a worker's ``report``: each count the larger of the two.

        ``search_stopped`` is the first reason either gives (a stopped search stays stopped).

        ``best_value`` is the report's when it has one and counts at least as many finished
        trials (the study's best after more trials is at least as good), else this one's.
        """
        counts = {
            name: max(getattr(self, name), getattr(report, name))
            for name in type(self).model_fields
            if name not in ("best_value", "search_stopped")
        }
        newer_best = report.best_value is not None and (
            self.best_value is None or report.trials_done >= self.trials_done
        )
        best = report.best_value if newer_best else self.best_value
        stopped = self.search_stopped or report.search_stopped  # set once, never unset
        return JobProgress(**counts, best_value=best, search_stopped=stopped)


class JobRecord(ResultModel):
    """A job as stored: its spec, state, progress and (while a worker holds it) its lease."""

    id: str
    name: str | None
    spec: JobSpec
    fingerprint: str = Field(description="JobSpec.fingerprint(): what determines the answer")
    study_name: str = Field(description="the job's own Optuna study, named from its id")
    status: JobStatus
    progress: JobProgress
    attempts: int = Field(
        description="claims of the job since it last completed a phase (see JobStore.claim)"
    )
    error: str | None = Field(description="why the job failed")
    created_at: UtcDatetime
    updated_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    holder_worker_id: str | None = Field(description="the worker holding its exclusive phase")
    lease_expires_at: UtcDatetime | None
    search_started_at: UtcDatetime | None = Field(
        None, description="when it entered searching (search.timeout_s counts from here)"
    )
    submit_seq: int = Field(
        description="grows with every job submitted to the store: the queue's order"
    )


class Lease(ResultModel):
    """A worker's hold on a job's exclusive phase, from :meth:`JobStore.claim`.

    Every write under it is conditional on ``fencing_token``: once another worker claims the
    job, or it is cancelled or released, the token moves on and the write raises
    :class:`~lrtune.exceptions.LeaseLost`. ``expires_at`` is by the database's clock.
    """

    job_id: str
    worker_id: str
    fencing_token: int = Field(description="the job's token when claimed; grows per holder")
    expires_at: UtcDatetime = Field(description="when another worker may take the job over")
    status: JobStatus = Field(description="the job's state: which exclusive phase to run")
    attempts: int = Field(description="claims since the job last completed a phase, this one too")


class JobPage(ResultModel):
    """One page of jobs, newest first; pass ``next_after`` back for the next page."""

    data: list[JobRecord]
    next_after: str | None = Field(description="id of the last job here; None on the last page")
    unreadable: list[str] = Field(
        default_factory=list,
        description="ids of this page's jobs whose stored record cannot be read back (stored "
        "before lrtune refused what they hold): left out of data; GET one to see why",
    )


class JobEvent(ResultModel):
    """One entry of a job's append-only event feed; ``id`` grows, so it is a resume cursor."""

    id: int
    job_id: str
    created_at: UtcDatetime
    kind: str = Field(description="submitted, status, progress, ...")
    payload: dict[str, Any]


class Provenance(ResultModel):
    """What produced a stored result: lrtune's version, the rule, the LR bounds, the device."""

    lrtune_version: str
    rule: str = Field(description="the suggestion rule of the range test")
    lr_min: float | None = Field(description="lower LR bound the search used")
    lr_max: float | None = Field(description="upper LR bound the search used")
    device: str
    search: SearchSpec | None = Field(description="the search configuration")


class StoredRecommendation(ResultModel):
    """A job's recommendation as stored, with the job that produced it and its provenance."""

    job_id: str
    fingerprint: str
    format_version: int
    provenance: Provenance
    recommendation: Recommendation
    created_at: UtcDatetime


class RecommendationMatch(ResultModel):
    """A stored recommendation that answers "what LR should I use", and how it was found.

    ``match`` is ``fingerprint`` when the stored job's fingerprint equals the query's (the
    query pinned everything the fingerprint covers, or named the fingerprint itself), and
    ``names`` when it is the most recent succeeded job for the query's model and dataset
    names; ``differs`` then lists the fields in which its spec differs from the query's.
    """

    match: Literal["fingerprint", "names"]
    differs: list[str] = Field(
        default_factory=list,
        description="spec fields (model.params, batch_size, ...) in which the stored job "
        "differs from the query; empty for a fingerprint match",
    )
    stored: StoredRecommendation


class Submission(JobRecord):
    """What :meth:`~lrtune.jobs.JobStore.submit` answers: the job that holds the answer.

    A new job (``reused_from`` None, ``recommendation`` None), or, when reuse found an earlier
    succeeded job with the same fingerprint, search configuration and result format, that job
    itself (``reused_from`` its id) with its stored ``recommendation``: the answer at once,
    saying which job produced it.
    """

    reused_from: str | None = Field(
        None, description="the earlier succeeded job whose recommendation answers this one"
    )
    recommendation: StoredRecommendation | None = Field(
        None, description="the reused job's recommendation (None for a new job)"
    )

    @property
    def record(self) -> JobRecord:
        """The job's record alone (what :meth:`~lrtune.jobs.JobStore.get` returns)."""
        return JobRecord.model_validate(self.model_dump(include=set(JobRecord.model_fields)))


class StoredRangeTest(ResultModel):
    """A job's completed range test as stored (one per job), readable while the job searches.

    ``range_test`` holds the per-seed curves, every rule's suggestion, the chosen (consensus)
    suggestion and the seeds' spread; ``bounds`` the LR range the search draws from.
    """

    job_id: str
    format_version: int
    provenance: Provenance
    range_test: LRFinderResult
    bounds: LRBounds
    created_at: UtcDatetime

    @property
    def suggestion(self) -> float | None:
        """The chosen suggestion (the consensus rule), or None when the seeds gave none."""
        return self.range_test.suggestion

    @property
    def spread_decades(self) -> float | None:
        """How far apart the seeds' suggestions are, in decades of LR (lower is better)."""
        return self.range_test.spread_decades


ParamsSchema = dict[str, Any] | None
"""A factory's params as a JSON schema; None for a plugin's (its factory validates them)."""


class TaskInfo(ResultModel):
    """A task a worker (or agent) runs, as it publishes it: what a job naming it searches,
    and what admission fills into the job (:mod:`lrtune.task`)."""

    metric: str = Field(description="the metric its evaluate() returns and the search reads")
    direction: Literal["minimize", "maximize"]
    version: str = Field("1", description="the task's own version string")
    params_schema: ParamsSchema = Field(
        None, description="JSON schema of its factory's params; null: it takes none"
    )
    lrs: list[float] | None = Field(
        None, description="its param groups' LRs as its code builds the optimizer (no params)"
    )
    optimizer: OptimizerSpec | None = Field(
        None, description="the torch.optim family closest to its optimizer"
    )


class PluginRegistry(ResultModel):
    """The model and dataset names a worker can build, each with its params' JSON schema, and
    the tasks it runs.

    What a worker serves, as its process's :mod:`lrtune.registry` knows it (built-ins and
    entry-point plugins) and the tasks its operator loaded (``lrtune worker --task``);
    :meth:`JobStore.known_registry` merges those of the live workers, so the HTTP API can
    accept names that only the workers' plugins know, and tasks only they run.
    """

    models: dict[str, ParamsSchema] = Field(default_factory=dict)
    datasets: dict[str, ParamsSchema] = Field(default_factory=dict)
    tasks: dict[str, TaskInfo] = Field(default_factory=dict)

    @classmethod
    def of_this_process(cls, tasks: dict[str, TaskInfo] | None = None) -> PluginRegistry:
        """This process's registry, plugins included (reads no factory, imports no torch),
        with ``tasks`` (what the process loaded)."""
        from lrtune import registry

        def schema(params: type | None) -> ParamsSchema:
            return params.model_json_schema() if params is not None else None  # type: ignore[attr-defined]

        return cls(
            models={n: schema(registry.model_params_schema(n)) for n in registry.model_names()},
            datasets={
                n: schema(registry.dataset_params_schema(n)) for n in registry.dataset_names()
            },
            tasks=dict(tasks or {}),
        )

    def merged(self, other: PluginRegistry) -> PluginRegistry:
        """Both registries' names; where both know a name, this one's schema unless it has none."""

        def merge(mine: dict[str, ParamsSchema], theirs: dict[str, ParamsSchema]) -> dict:
            names = sorted({*mine, *theirs})
            return {n: mine.get(n) if mine.get(n) is not None else theirs.get(n) for n in names}

        return PluginRegistry(
            models=merge(self.models, other.models),
            datasets=merge(self.datasets, other.datasets),
            tasks={**other.tasks, **self.tasks},
        )


class RegistryEntry(ResultModel):
    """A model or dataset factory a job may name, with the JSON schema of its params."""

    name: str
    builtin: bool = Field(description="shipped with lrtune (else a plugin)")
    params_schema: dict[str, Any] | None = Field(
        description="JSON schema of the factory's params; null for a plugin, which validates "
        "its params where it is installed"
    )


class RegistryList(ResultModel):
    """The factories of one kind, sorted by name (``GET /v1/models``, ``/v1/datasets``)."""

    data: list[RegistryEntry]
    count: int


class WorkerActivity(ResultModel):
    """One thing a worker is doing: a job's exclusive phase under its lease, or a shared unit."""

    job_id: str
    phase: JobStatus = Field(description="the job's state the work belongs to")
    lease: bool = Field(
        description="True: the worker holds the job's exclusive-phase lease (range test, "
        "moving it on, writing the recommendation); False: it runs a search trial or a "
        "confirmation run of the job"
    )


class WorkerRegistration(ResultModel):
    """What a worker says about itself when it starts (:meth:`JobStore.register_worker`)."""

    id: str = Field(
        min_length=1, max_length=64, description="unique among the store's workers, e.g. host-pid"
    )
    host: str
    device: str = Field(description="where it trains: cpu, cuda:0, ...")
    pid: int
    version: str = Field(description="lrtune's version")
    concurrency: int = Field(1, ge=1, description="units it runs at once")
    threads: int = Field(1, ge=1, description="torch CPU threads per unit")
    heartbeat_s: float = Field(gt=0, description="seconds between its heartbeats")
    plugin_registry: PluginRegistry


class WorkerRecord(WorkerRegistration):
    """A worker as stored, with what it holds and how long ago it last beat its heartbeat."""

    started_at: UtcDatetime
    last_heartbeat: UtcDatetime
    stopped_at: UtcDatetime | None = Field(description="set when it exited cleanly")
    activity: list[WorkerActivity] = Field(description="what it was doing at its last beat")
    heartbeat_age_s: float = Field(description="seconds since its last heartbeat (database clock)")
    live: bool = Field(
        description="not stopped, and its last heartbeat is younger than 3 of its intervals"
    )


class WorkerList(ResultModel):
    """Workers, most recent heartbeat first."""

    data: list[WorkerRecord]


class JobStats(ResultModel):
    """The store at a glance, for monitoring (``GET /metrics``): :meth:`JobStore.stats`."""

    by_state: dict[str, int] = Field(description="jobs in each state, every state listed")
    trials_done: int = Field(description="search trials finished, over the stored jobs")
    confirmations_done: int = Field(description="confirmation runs finished, over the jobs")
    queue_age_s: float = Field(description="seconds the oldest queued job has waited (0: none)")
    lease_holders: int = Field(description="workers holding a job's exclusive phase now")
    live_workers: int = Field(description="workers whose heartbeat is recent (list_workers)")


class DatasetUpload(ResultModel):
    """A dataset uploaded to the store (``POST /v1/datasets``): what a job names it by, and
    its shapes; its arrays stay in the database."""

    id: str = Field(description="SHA-256 hex of the canonical data: the same data, the same id")
    name: str | None = Field(description="the uploader's label")
    task: Literal["classification", "regression"]
    x_shape: list[int] = Field(description="the features' shape, samples first")
    n_classes: int | None = Field(description="classes of a classification target; else null")
    x_min: float | None = Field(
        None,
        description="the smallest feature value; null for an upload stored before lrtune "
        "recorded it (upload the same data again to record it)",
    )
    x_max: float | None = Field(
        None,
        description="the largest feature value: as token ids, an embedding's num_embeddings "
        "must be above it; null as x_min",
    )
    x_integral: bool | None = Field(
        None, description="whether every feature value is a whole number; null as x_min"
    )
    bytes: int = Field(description="the stored size (a compressed .npz)")
    created_at: UtcDatetime

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, as a model sees it."""
        return tuple(self.x_shape[1:])

    @property
    def output_dim(self) -> int:
        """What a model must output: the class count, or 1 for regression."""
        return self.n_classes or 1

    @computed_field(
        description='how a job spec names it: {"name": "uploaded", "params": {"id": ...}}'
    )
    @property
    def dataset(self) -> DatasetRef:
        """How a job spec names it (add split params such as ``val_fraction`` to its params)."""
        return DatasetRef(name="uploaded", params={"id": self.id})


class DatasetUploadList(ResultModel):
    """The uploaded datasets, newest first."""

    data: list[DatasetUpload]
    count: int
