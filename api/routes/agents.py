"""``/v1/agents``: agents on the users' own machines take their tasks' work over HTTP.

An agent (``lrtune agent --url URL --task module:task``) registers like a worker (its row in
the workers table, with the tasks it runs: ``lrtune workers`` and the dashboard list it), asks
for work, and reports, completes or fails it (:mod:`lrtune.agent_protocol`); the service keeps
the queue and the answer (:class:`~lrtune.workers.broker.AgentBroker`). Every route takes the
write token, and answers errors in the API's one error body (a unit that is no longer the
agent's is 409: the agent stops it). Not in the OpenAPI schema: only ``lrtune agent`` and
:meth:`lrtune.client.Client.agent` speak it.

Example:
    >>> sorted(route.path for route in router.routes)[:3]
    ['/agents', '/agents/{agent_id}', '/agents/{agent_id}/heartbeat']
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response

from lrtune.agent_protocol import (
    AgentWork,
    EpochReport,
    LeaseRenewal,
    NoWork,
    RangeTestDone,
    RangeTestFailure,
    RangeTestWork,
    ReportAnswer,
    UnitDone,
    UnitFailure,
    UnitWork,
    WorkRequest,
)
from lrtune.api.deps import StoreDep, WriteAuth
from lrtune.api.routes._docs import error_responses
from lrtune.jobs import JobStore, Lease, WorkerRecord, WorkerRegistration

# The agents' protocol is lrtune's own, between ``lrtune agent`` and the service of the same
# version (its shapes: lrtune/agent_protocol.py), not an API for users: left out of the
# OpenAPI schema.
router = APIRouter(prefix="/agents", tags=["agents"], include_in_schema=False)

AgentId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00/]+$")]
JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[^\x00/]+$")]
AGENT_LEASE_S = 60.0
"""Seconds an agent's hold on a range test lasts without renewal."""


@router.post("", summary="Register an agent", responses=error_responses(401, 503))
def register(registration: WorkerRegistration, store: StoreDep, _: WriteAuth) -> WorkerRecord:
    """Record an agent that starts, with the tasks it runs (``plugin_registry.tasks``): jobs
    naming them are admitted and handed to it."""
    return store.register_worker(registration)


@router.post(
    "/{agent_id}/heartbeat", status_code=204, summary="Agent heartbeat",
    responses=error_responses(401, 404, 503),
)  # fmt: skip
def heartbeat(agent_id: AgentId, store: StoreDep, _: WriteAuth) -> Response:
    store.beat(agent_id, [])
    return Response(status_code=204)


@router.delete(
    "/{agent_id}", status_code=204, summary="An agent stops",
    responses=error_responses(401, 404, 503),
)  # fmt: skip
def stop(agent_id: AgentId, request: Request, store: StoreDep, _: WriteAuth) -> Response:
    store.stop_worker(agent_id)
    _brokers(request).pop(agent_id, None)
    return Response(status_code=204)


@router.post(
    "/{agent_id}/work", summary="Ask for work", responses=error_responses(401, 404, 503),
    response_model=NoWork | RangeTestWork | UnitWork,
)  # fmt: skip
def work(
    agent_id: AgentId, asked: WorkRequest, request: Request, store: StoreDep, _: WriteAuth
) -> Any:
    """The agent's next unit, range test, or nothing (ask again after ``retry_after_s``)."""
    with _broker(request, store, agent_id) as broker:
        return AgentWork.dump_python(broker.next_work(asked.job_id), mode="json")


@router.post(
    "/{agent_id}/leases/renew", summary="Renew a range test's lease",
    responses=error_responses(401, 409, 503),
)  # fmt: skip
def renew(
    agent_id: AgentId, renewal: LeaseRenewal, request: Request, store: StoreDep, _: WriteAuth
) -> Lease:
    with _broker(request, store, agent_id) as broker:
        return broker.renew(renewal.lease)


@router.post(
    "/{agent_id}/leases/hand-back", status_code=204, summary="Hand a range test back",
    responses=error_responses(401, 503),
)  # fmt: skip
def hand_back(
    agent_id: AgentId, renewal: LeaseRenewal, request: Request, store: StoreDep, _: WriteAuth
) -> Response:
    with _broker(request, store, agent_id) as broker:
        broker.hand_back(renewal.lease)
    return Response(status_code=204)


@router.post(
    "/{agent_id}/leases/fail", status_code=204, summary="Fail a job's range test",
    responses=error_responses(401, 409, 503),
)  # fmt: skip
def fail_range_test(
    agent_id: AgentId, failure: RangeTestFailure, request: Request, store: StoreDep, _: WriteAuth
) -> Response:
    with _broker(request, store, agent_id) as broker:
        broker.fail_range_test(failure.lease, failure.reason)
    return Response(status_code=204)


@router.post(
    "/{agent_id}/range-tests", status_code=204, summary="Send a range test back",
    responses=error_responses(401, 409, 503),
)  # fmt: skip
def range_test_done(
    agent_id: AgentId, done: RangeTestDone, request: Request, store: StoreDep, _: WriteAuth
) -> Response:
    with _broker(request, store, agent_id) as broker:
        broker.range_test_done(done)
    return Response(status_code=204)


@router.post(
    "/{agent_id}/units/{job_id}/{trial_id}/reports", summary="Report a unit's epoch",
    responses=error_responses(401, 404, 409, 503),
)  # fmt: skip
def report(
    agent_id: AgentId, job_id: JobId, trial_id: int, epoch: EpochReport, request: Request,
    store: StoreDep, _: WriteAuth,
) -> ReportAnswer:  # fmt: skip
    """The epoch's metric for the pruner; the answer says whether to stop the unit now."""
    with _broker(request, store, agent_id) as broker:
        return broker.report(job_id, trial_id, epoch)


@router.post(
    "/{agent_id}/units/{job_id}/{trial_id}/heartbeat", status_code=204,
    summary="A unit is still training", responses=error_responses(401, 404, 409, 503),
)  # fmt: skip
def unit_heartbeat(
    agent_id: AgentId, job_id: JobId, trial_id: int, request: Request, store: StoreDep,
    _: WriteAuth,
) -> Response:  # fmt: skip
    with _broker(request, store, agent_id) as broker:
        broker.beat(job_id, trial_id)
    return Response(status_code=204)


@router.post(
    "/{agent_id}/units/{job_id}/{trial_id}/complete", status_code=204,
    summary="Complete a unit", responses=error_responses(401, 404, 409, 503),
)  # fmt: skip
def complete(
    agent_id: AgentId, job_id: JobId, trial_id: int, done: UnitDone, request: Request,
    store: StoreDep, _: WriteAuth,
) -> Response:  # fmt: skip
    with _broker(request, store, agent_id) as broker:
        broker.complete(job_id, trial_id, done)
    return Response(status_code=204)


@router.post(
    "/{agent_id}/units/{job_id}/{trial_id}/fail", status_code=204,
    summary="Fail or hand back a unit", responses=error_responses(401, 404, 409, 503),
)  # fmt: skip
def fail(
    agent_id: AgentId, job_id: JobId, trial_id: int, failure: UnitFailure, request: Request,
    store: StoreDep, _: WriteAuth,
) -> Response:  # fmt: skip
    with _broker(request, store, agent_id) as broker:
        broker.fail(job_id, trial_id, failure)
    return Response(status_code=204)


class _Held:
    """A broker with its lock: one agent's requests (its work and its heartbeats) in turn."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.lock = threading.Lock()

    def __enter__(self) -> Any:
        self.lock.acquire()
        return self.broker

    def __exit__(self, *_exc: object) -> None:
        self.lock.release()


def _brokers(request: Request) -> dict[str, _Held]:
    state = request.app.state
    if not hasattr(state, "agent_brokers"):
        state.agent_brokers = {}
    return state.agent_brokers


def _broker(request: Request, store: JobStore, agent_id: str) -> _Held:
    """The agent's broker, made from its registration on first use (404: not registered)."""
    brokers = _brokers(request)
    held = brokers.get(agent_id)
    if held is None:
        from lrtune.workers.broker import AgentBroker

        agent = store.get_worker(agent_id)
        held = brokers.setdefault(
            agent_id,
            _Held(
                AgentBroker(
                    store,
                    agent_id,
                    device=agent.device,
                    tasks=sorted(agent.plugin_registry.tasks),
                    lease_s=AGENT_LEASE_S,
                )
            ),
        )
    return held
