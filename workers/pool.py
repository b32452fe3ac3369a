"""Child processes that run a worker's shared units: ``lrtune worker --concurrency N``.

A :class:`UnitPool` keeps ``size`` child processes (multiprocessing's *spawn* context: a fresh
interpreter each, no state inherited from the parent but what it is sent) on the parent
worker's device. Each child pins its own torch threads, builds what runs a unit with the
pool's runner (:func:`lrtune.workers.loop.unit_runner`: its own job store and Optuna storage),
and waits for tasks on its pipe. A task is one job (a :class:`~lrtune.jobs.JobRecord` in a
shared phase); the child runs one queued unit of it (a search trial or a confirmation run,
popped from the job's Optuna queue by :meth:`lrtune.workers.loop.Worker.run_unit`) and
answers with a :class:`UnitOutcome`. The parent decides what each child does next, holds the
leases and the workers-table heartbeat, and moves jobs on; children never claim a lease.

A child that dies (SIGKILL, out of memory) is noticed by its process sentinel and replaced;
the trial it was running is left RUNNING in Optuna, goes stale once its heartbeat stops, and
is retried by whoever next looks at the job's queue (``fail_stale_trials``), resuming from the
trial's checkpoint. A child that dies within ``EARLY_DEATH_S`` of its start is restarted only
after ``RESTART_DELAY_S``, so a broken environment does not spin.

Children ignore SIGINT and SIGTERM (Ctrl-C reaches the whole process group; a service manager
may signal every process): the parent tells them. ``SIGUSR2`` asks a child to stop at its
unit's next epoch boundary or look within an epoch (:func:`lrtune.training.request_stop`);
``SIGUSR1`` stops it at once. Either way its unit is recorded as interrupted and queued again
by the child, which then exits with status 0. A child whose parent has gone stops the same way
as after ``SIGUSR2``.

Example:
    >>> UnitOutcome(job_id="j1", ran=True).failed
    False
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import FrameType
from typing import Any

from lrtune.jobs import JobRecord

logger = logging.getLogger("lrtune.workers")

EARLY_DEATH_S = 10.0
"""A child that dies sooner than this after starting is restarted only after a delay."""
RESTART_DELAY_S = 5.0
"""How long a slot whose child died early waits before its next child starts."""
CLOSE_TIMEOUT_S = 30.0
"""How long closing the pool waits for a child to exit before killing it."""
PARENT_CHECK_S = 1.0
"""How often a child checks that its parent is still there."""


@dataclass(frozen=True)
class ChildConfig:
    """What a child needs to run units as its parent would (sent to it; picklable)."""

    database_url: str
    device: str
    worker_id: str
    lease_s: float
    artifact_dir: Path | None
    threads: int
    log_level: int = logging.INFO
    task_paths: tuple[str, ...] = ()
    """The import paths of the tasks the parent loaded (each child imports them again)."""
    population: int = 1
    """Search trials a child trains at once (the parent's ``population``)."""


RunnerFactory = Callable[[ChildConfig, str], Callable[[JobRecord], "UnitOutcome"]]
"""Builds, in a child, what runs one unit: ``runner(config, child_worker_id)(job)``. A
module-level function (the spawn context sends it by name)."""


@dataclass(frozen=True)
class UnitOutcome:
    """What a child did with one task.

    ``ran``: it ran a unit (False: the queue was empty by the time it looked). ``interrupted``:
    it was told to stop and queued its unit again. ``error``: the job's own error (its data,
    its model), which fails the job; ``storage_error``: the store could not be reached.
    ``died``: the child died running the unit, which is left to go stale in Optuna.
    """

    job_id: str
    ran: bool = False
    interrupted: bool = False
    error: str | None = None
    storage_error: str | None = None
    died: bool = False  # the child died running it (the parent makes this one up)

    @property
    def failed(self) -> bool:
        """Whether the job itself failed (not the store, not an interruption)."""
        return self.error is not None


@dataclass
class _Slot:
    index: int
    process: Any = None  # multiprocessing's SpawnProcess
    conn: Connection | None = None
    task: JobRecord | None = None  # the job of the unit it is running
    started: float = 0.0
    restart_at: float = 0.0


class UnitPool:
    """``size`` child processes running shared units for one worker (see the module)."""

    def __init__(self, size: int, config: ChildConfig, runner: RunnerFactory) -> None:
        self.size = size
        self.config = config
        self.runner = runner
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(k) for k in range(size)]
        self._closing = False
        self._told: set[int] = set()  # slots told to exit

    def start(self) -> None:
        """Start every child (each takes seconds to import torch; tasks wait in its pipe)."""
        for slot in self._slots:
            self._start(slot)

    def free(self) -> int:
        """How many children have no task (including those still starting)."""
        return sum(s.task is None and s.conn is not None for s in self._slots)

    def in_flight(self, job_id: str | None = None) -> int:
        """Tasks handed out and not answered yet (of job ``job_id``, if given)."""
        return sum(s.task is not None and job_id in (None, s.task.id) for s in self._slots)

    def running(self) -> list[JobRecord]:
        """The jobs of the tasks in flight, one per task."""
        return [s.task for s in self._slots if s.task is not None]

    def submit(self, job: JobRecord) -> bool:
        """Hand one unit of ``job`` to a free child; False if the child has just died (the
        next :meth:`collect` replaces it). ValueError if no child is free."""
        slot = next((s for s in self._slots if s.task is None and s.conn is not None), None)
        if slot is None:
            raise ValueError("no free child: check UnitPool.free() first")
        assert slot.conn is not None
        try:
            slot.conn.send(job.model_dump_json())
        except OSError:  # a broken pipe: it died
            return False
        slot.task = job
        return True

    def collect(self, timeout_s: float = 0.0) -> list[UnitOutcome]:
        """The outcomes of finished tasks, waiting up to ``timeout_s`` for the first one.

        Children found dead are replaced (see the module); a task one was running comes back
        as an outcome with ``died`` set.
        """
        self._restart_due()
        conns = [s.conn for s in self._slots if s.conn is not None]
        sentinels = [s.process.sentinel for s in self._slots if s.process is not None]
        if not conns and not sentinels:
            time.sleep(timeout_s)
            return []
        ready = set(wait([*conns, *sentinels], timeout=timeout_s))
        outcomes = []
        for slot in self._slots:
            if slot.conn is not None and slot.conn in ready:
                try:
                    outcomes.append(slot.conn.recv())
                    slot.task = None
                    continue
                except (EOFError, OSError):  # it died: its sentinel says so too
                    pass
            if slot.process is not None and not slot.process.is_alive():
                if slot.task is not None:
                    outcomes.append(UnitOutcome(job_id=slot.task.id, died=True))
                self._died(slot)
        return outcomes

    def stop(self, *, now: bool = False) -> None:
        """Tell every child to stop: at its unit's next epoch boundary, or ``now``."""
        self._closing = True
        for slot in self._slots:
            if slot.process is not None and slot.process.is_alive():
                os.kill(slot.process.pid, signal.SIGUSR1 if now else signal.SIGUSR2)

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> list[UnitOutcome]:
        """Let idle children exit and wait for every child; return the last outcomes.

        Call :meth:`stop` first to interrupt running units; otherwise this waits for them. A
        child still there after ``timeout_s`` is killed (its unit goes stale and is retried).
        """
        self._closing = True
        outcomes: list[UnitOutcome] = []
        deadline = time.monotonic() + timeout_s
        while any(s.process is not None for s in self._slots):
            self._send_exit()
            if time.monotonic() > deadline:
                for slot in self._slots:
                    if slot.process is not None:
                        logger.warning(
                            "worker=%s event=child_killed slot=%d reason=did not exit",
                            self.config.worker_id,
                            slot.index,
                        )
                        slot.process.kill()
                        slot.process.join()
                        slot.process = None
                break
            outcomes += self.collect(timeout_s=0.5)
        return outcomes

    def _send_exit(self) -> None:
        """Tell each idle child, once, that no task will come (it exits)."""
        for slot in self._slots:
            if slot.conn is not None and slot.task is None and slot.index not in self._told:
                self._told.add(slot.index)
                with contextlib.suppress(OSError):  # already gone
                    slot.conn.send(None)

    def _start(self, slot: _Slot) -> None:
        parent_end, child_end = self._context.Pipe()
        config = self.config
        process = self._context.Process(
            target=_child_main,
            args=(config, slot.index, child_end, os.getpid(), self.runner),
            name=f"lrtune-unit-{slot.index}",
            daemon=False,
        )
        process.start()
        child_end.close()
        slot.process, slot.conn, slot.task = process, parent_end, None
        slot.started = time.monotonic()
        logger.info(
            "worker=%s event=child_started slot=%d pid=%d threads=%d",
            config.worker_id,
            slot.index,
            process.pid,
            config.threads,
        )

    def _died(self, slot: _Slot) -> None:
        process = slot.process
        process.join()
        job = slot.task
        if not self._closing or process.exitcode != 0:
            logger.warning(
                "worker=%s event=child_died slot=%d pid=%d exitcode=%s job=%s",
                self.config.worker_id,
                slot.index,
                process.pid,
                process.exitcode,
                job.id if job is not None else "-",
            )
        if slot.conn is not None:
            slot.conn.close()
        slot.process, slot.conn, slot.task = None, None, None
        if self._closing:
            return
        lived = time.monotonic() - slot.started
        slot.restart_at = time.monotonic() + (RESTART_DELAY_S if lived < EARLY_DEATH_S else 0.0)
        self._restart_due()

    def _restart_due(self) -> None:
        if self._closing:
            return
        for slot in self._slots:
            if slot.process is None and time.monotonic() >= slot.restart_at:
                self._start(slot)


def _child_main(
    config: ChildConfig, index: int, conn: Connection, parent_pid: int, runner: RunnerFactory
) -> None:
    """A child's life: pin threads, then run one unit per task until told to stop."""
    from lrtune.device import set_torch_threads
    from lrtune.training import request_stop, stop_requested

    def stop_now(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    def stop_soon(signum: int, frame: FrameType | None) -> None:
        request_stop()

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, stop_now)
    signal.signal(signal.SIGUSR2, stop_soon)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lrtune.workers").setLevel(config.log_level)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    set_torch_threads(config.threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_unit = runner(config, f"{config.worker_id[:60]}/{index}")
    try:
        while not stop_requested():
            if not conn.poll(0.5):
                continue
            task = conn.recv()
            if task is None:
                break
            conn.send(run_unit(JobRecord.model_validate_json(task)))
    except (KeyboardInterrupt, EOFError, OSError):
        pass
    finally:
        conn.close()


def _watch_parent(parent_pid: int) -> None:
    """Stop this child (at its next epoch boundary) once its parent has gone."""
    from lrtune.training import request_stop

    while os.getppid() == parent_pid:
        time.sleep(PARENT_CHECK_S)
    logger.warning("event=parent_gone parent=%d: stopping", parent_pid)
    request_stop()
