"""What an agent and the service say to each other over HTTP (``/v1/agents``): one schema each.

An agent (:mod:`lrtune.agent`) runs a job's training on the user's own machine, with the
user's task; the service (:mod:`lrtune.workers.broker`) keeps everything else: the queue, the
sampler, the pruner, leases, the answer. Work comes as one of:

- :class:`RangeTestWork`: a job's range test, under the job's lease (:class:`~lrtune.jobs.Lease`,
  renewed by the agent, its fencing token checked on every write); the agent sends back
  :class:`RangeTestDone`;
- :class:`UnitWork`: a search trial or a confirmation run, planned by the service (schedule,
  LR, seed); the agent reports each epoch (:class:`EpochReport`; the answer,
  :class:`ReportAnswer`, says whether to stop), then completes it (:class:`UnitDone`) or fails it
  (:class:`UnitFailure`). A report for a unit the service no longer counts as the agent's
  (its heartbeat went stale and the unit was queued again) is refused with 409: the stale agent
  stops, and the unit is counted once;
- :class:`NoWork`: nothing for this agent's tasks now.

Example:
    >>> work = AgentWork.validate_python({"kind": "none", "retry_after_s": 2.0})
    >>> type(work).__name__, work.retry_after_s
    ('NoWork', 2.0)
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from lrtune._pydantic import ResultModel
from lrtune.jobs.records import Lease
from lrtune.lr_free import LRFreeName
from lrtune.result import LRFinderResult, TrainingRun
from lrtune.schedules import ScheduleSpec
from lrtune.spec import JobSpec


class WorkRequest(ResultModel):
    """An agent asking for work: for its tasks, on its device; ``job_id`` only that job's."""

    job_id: str | None = Field(None, max_length=64)


class NoWork(ResultModel):
    kind: Literal["none"] = "none"
    retry_after_s: float = Field(description="when to ask again")
    pending: bool = Field(
        False,
        description="jobs of the agent's tasks are unfinished (a range test or a search runs "
        "elsewhere): work may come; an agent run with --once waits for it",
    )


class RangeTestWork(ResultModel):
    """Run the job's range test and send it back under ``lease`` (renew it meanwhile)."""

    kind: Literal["range_test"] = "range_test"
    spec: JobSpec
    lease: Lease
    lease_s: float = Field(description="seconds the lease lasts without renewal")


class UnitWork(ResultModel):
    """Train one unit as planned and report each epoch."""

    kind: Literal["unit"] = "unit"
    job_id: str
    spec: JobSpec
    queue: Literal["search", "confirmation"]
    trial_id: int = Field(description="the unit's trial in the service's storage")
    number: int
    schedule: ScheduleSpec
    base_lr: float
    seed: int | None = Field(description="None: the job's seed")
    lr_free: LRFreeName | None = None
    heartbeat_s: float = Field(description="beat at least this often, or the unit is retaken")


AgentWork: TypeAdapter[NoWork | RangeTestWork | UnitWork] = TypeAdapter(
    Annotated[NoWork | RangeTestWork | UnitWork, Field(discriminator="kind")]
)


class RangeTestDone(ResultModel):
    """A range test run by an agent, and the shape of the job's runs on its task."""

    lease: Lease
    result: LRFinderResult
    steps_per_epoch: int = Field(ge=1)
    group_multipliers: list[float] = Field(min_length=1)


class LeaseRenewal(ResultModel):
    lease: Lease


class RangeTestFailure(ResultModel):
    """A range test the agent's task failed (it raised): the job fails with ``reason``."""

    lease: Lease
    reason: str = Field(max_length=2000)


class EpochReport(ResultModel):
    """One finished epoch of a unit: its record (``epoch`` from 0, the metrics)."""

    epoch: int = Field(ge=0)
    record: dict[str, float]


class ReportAnswer(ResultModel):
    """Whether the unit goes on: ``stop`` is why it must stop now (pruned, the job cancelled,
    the search's target reached), else None."""

    stop: str | None = None


class UnitDone(ResultModel):
    run: TrainingRun


class UnitFailure(ResultModel):
    """A unit the agent could not finish: ``interrupted`` (the agent was told to stop: the
    unit is queued again) or failed with ``reason`` (its task raised: the job fails)."""

    reason: str = Field(max_length=2000)
    interrupted: bool = False
