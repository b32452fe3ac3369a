"""An agent: the user's own machine serves its tasks' jobs over HTTP (``lrtune agent``).

For a GPU box that can reach the service's URL but not its database (behind the same token),
an agent does what a database worker does with the training, and leaves the rest to the
service (:mod:`lrtune.workers.broker`, :mod:`lrtune.agent_protocol`):

1. it registers, with the tasks it loaded (:mod:`lrtune.workers.tasks`), and beats a
   heartbeat: ``lrtune workers`` and the dashboard list it;
2. it asks for work: a job's range test (under the job's lease, renewed while it runs), or a
   unit (a search trial or confirmation run, planned by the service);
3. it trains the unit with :func:`lrtune.training.train`, the task made from the job's
   params; after each epoch it reports, and stops when the answer says so (pruned, the job
   cancelled); it beats the unit's heartbeat meanwhile;
4. it completes the unit with its run, or fails it: a task that raised fails it with the
   reason (the job fails); a stop (SIGTERM, Ctrl-C: :func:`lrtune.training.request_stop`)
   hands it back to be queued again, at the epoch's end or within ``unit_check_s`` seconds.

An agent killed with SIGKILL stops beating: the service's storage fails its unit after the
grace period and queues it again, from the start, for another agent or worker; its reports
after that are refused (409), so nothing is counted twice. An agent whose service goes away
retries with backoff, and says so once.

Example:

    .. code-block:: python

        from lrtune.client import Client

        with Client("http://127.0.0.1:8000", token="...") as client:
            client.agent(["mypkg.train:task"], once=True)  # until no work is left
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from lrtune import __version__
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
)
from lrtune.exceptions import ConflictError, LRTuneError, StorageUnavailableError
from lrtune.jobs.records import PluginRegistry, WorkerRegistration

if TYPE_CHECKING:
    from lrtune.training import TrainingSetup
    from lrtune.workers.tasks import LoadedTask

logger = logging.getLogger("lrtune.agent")


class ServiceClient(Protocol):
    """What an agent needs of :class:`lrtune.client.Client` (which imports this module)."""

    url: str

    def _call(self, method: str, path: str, **kwargs: Any) -> Any: ...


HEARTBEAT_S = 10.0
"""Seconds between the agent's heartbeats (and its running unit's, at most)."""
MAX_RETRY_S = 30.0
SETUPS_KEPT = 4
"""Jobs whose task an agent keeps made, so that their next units reuse it."""


class Agent:
    """One agent's loop (see the module).

    Args:
        client: the service, with its token (:class:`lrtune.client.Client`).
        tasks: the tasks it runs, by name (:func:`lrtune.workers.tasks.load_named`).
        device: where it trains (``auto``: CUDA when present).
        job_id: work on this job only.
        max_units: stop after this many units (range tests count too).
        once: stop as soon as no job of its tasks is unfinished (while one is, e.g. its range
            test runs on another agent, it waits for the job's units).
        agent_id: its id in the workers table (default ``agent-<host>-<pid>``).
    """

    def __init__(
        self,
        client: ServiceClient,
        tasks: Mapping[str, LoadedTask],
        *,
        device: str = "auto",
        job_id: str | None = None,
        max_units: int | None = None,
        once: bool = False,
        agent_id: str | None = None,
    ) -> None:
        from lrtune.device import resolve_device

        if not tasks:
            raise LRTuneError("an agent needs a task to run: --task package.module:task")
        self.client = client
        self.tasks = dict(tasks)
        self.device = str(resolve_device(device))
        self.job_id = job_id
        self.max_units = max_units
        self.once = once
        self.id = (agent_id or f"agent-{socket.gethostname()}-{os.getpid()}")[:64]
        self._setups: dict[str, TrainingSetup] = {}
        self._unreachable = False

    @property
    def path(self) -> str:
        return f"/v1/agents/{self.id}"

    def run(self) -> int:
        """Work until stopped, out of work (``once``) or ``max_units``; the units it ran."""
        from lrtune.training import stop_requested, wait_for_stop

        done = 0
        with self.registered():
            while not stop_requested():
                work = self._call("POST", "/work", json={"job_id": self.job_id})
                work = AgentWork.validate_python(work)
                if isinstance(work, NoWork):
                    if self.once and not work.pending:  # no unfinished job of its tasks
                        break
                    wait_for_stop(work.retry_after_s)
                    continue
                try:
                    if isinstance(work, RangeTestWork):
                        self._range_test(work)
                    else:
                        self._unit(work)
                except KeyboardInterrupt:  # handed back: stop
                    logger.info("agent=%s event=stopped reason=signal units=%d", self.id, done)
                    break
                done += 1
                if self.max_units is not None and done >= self.max_units:
                    break
        return done

    @contextmanager
    def registered(self) -> Iterator[None]:
        """The agent registered, with its tasks, and its heartbeat beating while in the
        ``with``; unregistered on exit. :meth:`run` works inside it; alone, it publishes the
        tasks, so that the service admits jobs naming them before the agent runs."""
        registration = WorkerRegistration(
            id=self.id,
            host=socket.gethostname(),
            device=self.device,
            pid=os.getpid(),
            version=__version__,
            heartbeat_s=HEARTBEAT_S,
            plugin_registry=PluginRegistry(tasks={n: t.info for n, t in self.tasks.items()}),
        )
        self._call("POST", "", whole="/v1/agents", json=registration.model_dump(mode="json"))
        logger.info("agent=%s event=started tasks=%s url=%s", self.id, ",".join(self.tasks),
                    self.client.url)  # fmt: skip
        with _every(HEARTBEAT_S, lambda: self._call("POST", "/heartbeat", retry=False)):
            try:
                yield
            finally:
                try:
                    self._call("DELETE", "", retry=False)
                except LRTuneError as exc:
                    logger.info("agent=%s event=unregister_failed error=%s", self.id, exc)

    # --- a job's range test ------------------------------------------------------------------

    def _range_test(self, work: RangeTestWork) -> None:
        from lrtune.search.prepare import range_test
        from lrtune.training import check_stop

        lease = work.lease
        lost: list[str] = []

        def renew() -> None:
            try:
                self._call("POST", "/leases/renew", json=_lease(lease), retry=False)
            except ConflictError as exc:
                lost.append(str(exc))

        def step(*_: Any) -> None:
            check_stop("during the range test")
            if lost:
                raise ConflictError(lost[0])

        try:
            setup = self._setup(work.spec, lease.job_id)
            with _every(work.lease_s / 3, renew):
                result = range_test(setup, progress=False, callback=step)
        except KeyboardInterrupt:
            self._call("POST", "/leases/hand-back", json=_lease(lease), retry=False)
            raise
        except ConflictError as exc:
            logger.warning("agent=%s job=%s event=lease_lost error=%s", self.id, lease.job_id, exc)
            return
        except Exception as exc:  # the task's own error: the job fails with it
            failure = RangeTestFailure(lease=lease, reason=_one_line(exc))
            self._call("POST", "/leases/fail", json=failure.model_dump(mode="json"))
            logger.warning("agent=%s job=%s event=range_test_failed reason=%s", self.id,
                           lease.job_id, failure.reason)  # fmt: skip
            return
        done = RangeTestDone(
            lease=lease,
            result=result,
            steps_per_epoch=setup.steps_per_epoch,
            group_multipliers=setup.group_multipliers,
        )
        self._call("POST", "/range-tests", json=done.model_dump(mode="json"))
        logger.info("agent=%s job=%s event=range_test_done", self.id, lease.job_id)

    # --- a unit --------------------------------------------------------------------------------

    def _unit(self, work: UnitWork) -> None:
        from lrtune.training import StopTraining, train

        unit = f"/units/{work.job_id}/{work.trial_id}"
        lost: list[str] = []

        def beat() -> None:
            try:
                self._call("POST", f"{unit}/heartbeat", retry=False)
            except ConflictError as exc:
                lost.append(str(exc))

        def report(epoch: int, record: dict[str, float]) -> None:
            body = EpochReport(epoch=epoch, record=record).model_dump(mode="json")
            try:
                answer = ReportAnswer.model_validate(
                    self._call("POST", f"{unit}/reports", json=body)
                )
            except ConflictError as exc:
                lost.append(str(exc))
                raise StopTraining(str(exc)) from None
            if answer.stop is not None:
                raise StopTraining(answer.stop)

        search = work.spec.search
        try:
            setup = self._setup(work.spec, work.job_id)
            with _every(min(work.heartbeat_s / 3, HEARTBEAT_S), beat):
                run = train(
                    setup,
                    work.schedule,
                    work.base_lr,
                    search.epochs,
                    lr_threshold=search.lr_threshold,
                    on_epoch=report,
                    seed=work.seed,
                    lr_free=work.lr_free,
                    stop_reason=lambda: lost[0] if lost else None,
                )
        except KeyboardInterrupt:
            self._fail(unit, UnitFailure(reason="interrupted", interrupted=True))
            raise
        except Exception as exc:  # the task's own error: the unit fails, the job with it
            failure = UnitFailure(reason=_one_line(exc))
            self._fail(unit, failure)
            logger.warning("agent=%s job=%s event=unit_failed trial=%d reason=%s", self.id,
                           work.job_id, work.number, failure.reason)  # fmt: skip
            return
        if lost:  # another agent or worker has it now
            logger.warning(
                "agent=%s job=%s event=unit_lost error=%s", self.id, work.job_id, lost[0]
            )
            return
        try:
            self._call("POST", f"{unit}/complete", json=UnitDone(run=run).model_dump(mode="json"))
        except ConflictError as exc:
            logger.warning("agent=%s job=%s event=unit_lost error=%s", self.id, work.job_id, exc)
            return
        logger.info("agent=%s job=%s event=unit_done trial=%d status=%s", self.id, work.job_id,
                    work.number, run.status)  # fmt: skip

    def _fail(self, unit: str, failure: UnitFailure) -> None:
        try:
            self._call("POST", f"{unit}/fail", json=failure.model_dump(mode="json"), retry=False)
        except LRTuneError as exc:  # its heartbeat stops: the service retakes it
            logger.warning("agent=%s event=fail_unreported error=%s", self.id, exc)

    def _setup(self, spec: Any, job_id: str) -> TrainingSetup:
        """The job's setup on this machine: the task it names, made with the job's params."""
        from lrtune.training import TrainingSetup

        if job_id not in self._setups:
            loaded = self.tasks.get(spec.task.name) if spec.task is not None else None
            if loaded is None:
                raise LRTuneError(f"this agent does not run what job {job_id} trains")
            task = loaded.make(spec.task.params)
            if len(self._setups) >= SETUPS_KEPT:
                del self._setups[next(iter(self._setups))]  # the oldest
            self._setups[job_id] = TrainingSetup.from_spec(spec, self.device, task=task)
        return self._setups[job_id]

    # --- HTTP ----------------------------------------------------------------------------------

    def _call(
        self, method: str, path: str, *, whole: str | None = None, retry: bool = True, **kw: Any
    ) -> Any:
        """The service's answer; an unreachable service is retried with backoff (said once)."""
        from lrtune.training import stop_requested, wait_for_stop

        wait = 0.5
        while True:
            try:
                answer = self.client._call(method, whole or f"{self.path}{path}", **kw)
            except StorageUnavailableError as exc:
                if not retry or stop_requested():
                    raise
                if not self._unreachable:
                    logger.warning("agent=%s event=service_unreachable retrying=yes error=%s",
                                   self.id, exc)  # fmt: skip
                    self._unreachable = True
                wait_for_stop(wait)
                wait = min(2 * wait, MAX_RETRY_S)
                continue
            if self._unreachable:
                logger.info("agent=%s event=service_reachable", self.id)
                self._unreachable = False
            return answer


def _lease(lease: Any) -> dict[str, Any]:
    return LeaseRenewal(lease=lease).model_dump(mode="json")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


@contextmanager
def _every(interval_s: float, call: Callable[[], None]) -> Iterator[None]:
    """``call()`` every ``interval_s`` seconds in a thread while in the ``with`` (its errors
    logged, not raised: a heartbeat that fails once is tried again)."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                call()
            except LRTuneError as exc:
                logger.debug("periodic call failed: %s", exc)

    thread = threading.Thread(target=loop, name="lrtune-agent-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
