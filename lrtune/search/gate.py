"""When a job's queues hand out units: the search's target, its time, and ``max_parallel``.

A :class:`UnitGate` wraps every pop from a job's queues. It ends the search early once a trial
reaches ``search.target`` or ``search.timeout_s`` passed (the queued rest are closed unrun,
``skipped: <why>``, so the budget still adds up), and with a job store's lock bounds the units
running at once to ``search.max_parallel``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lrtune._optuna import (
    ATTR_STOP_REASON,
    CONFIRM_SUFFIX,
    QueuedStudy,
    QueueRefused,
    close_unstarted,
    count_running,
)
from lrtune.spec import SearchSpec

logger = logging.getLogger(__name__)

SKIPPED = "skipped"
"""Stop reasons of queued trials closed unrun start with this: ``skipped: target reached ...``."""


class SearchStopped(QueueRefused):
    """The search hands out no more trials: its target was reached, or its time is up."""


class AtCapacity(QueueRefused):
    """``search.max_parallel`` of the job's units are running: this process takes none now."""


def target_reached(study: optuna.Study, search: SearchSpec) -> str | None:
    """Why the search is over because a finished trial reached ``search.target``; else None.

    Only COMPLETE trials count (a pruned trial did not finish); of several, the earliest.
    """
    target = search.target
    if target is None:
        return None
    maximize = search.direction == "maximize"
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for trial in sorted(complete, key=lambda t: t.number):
        value = float(trial.value)  # type: ignore[arg-type]  # COMPLETE trials have one
        if (value >= target) if maximize else (value <= target):
            relation = ">=" if maximize else "<="
            return (
                f"target reached: trial {trial.number}'s {search.metric} {value:.4g} "
                f"{relation} search.target {target:g}"
            )
    return None


def timeout_passed(search: SearchSpec, searching_for_s: float | None) -> str | None:
    """Why the search is over because ``search.timeout_s`` passed; else None."""
    timeout = search.timeout_s
    if timeout is None or searching_for_s is None or searching_for_s < timeout:
        return None
    return f"search.timeout_s ({timeout:g} s) passed since the job entered searching"


def skipped_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The search's queued trials that were closed unrun when it stopped early."""
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    return [t for t in pruned if str(t.user_attrs.get(ATTR_STOP_REASON, "")).startswith(SKIPPED)]


class UnitGate:
    """What a job's queues check each time they are about to hand out a unit.

    Set on a :class:`~lrtune._optuna.QueuedStudy` (its ``gate``) by the processes that run a
    job's units (:meth:`lrtune.search.JobSearch.run_units`). On the search study: once
    :func:`target_reached`, or ``stop_reason`` (called with no argument) names a reason (a worker's
    :func:`timeout_passed`), the queued trials are closed unrun (PRUNED, stop reason
    ``skipped: <why>``: :func:`lrtune._optuna.close_unstarted`) and nothing more is handed out
    (:class:`SearchStopped`); the trials running finish, and the confirmation follows as after
    a full search. With a ``lock`` (a context manager factory every process that pops the
    job's units shares: :meth:`lrtune.jobs.JobStore.unit_lock`), at most
    ``search.max_parallel`` of the queue's trials run at once: a pop that would exceed it is
    refused (:class:`AtCapacity`) and the process helps another job.

    The bound is exact, with no race to overshoot it, when every process popping the job's
    units uses the lock (workers do): the count of RUNNING trials and the pop happen under
    it, and only a pop under it makes a trial RUNNING. A dead worker's trial keeps its place
    until its heartbeat goes stale (it is then FAILED, stops counting, and its retry is
    queued), so the job may briefly run fewer units than allowed. The one way more train at
    once: a worker cut off from the database (not dead) whose trial went stale keeps training
    it, unable to record it, while its retry runs elsewhere: one extra per such worker, until
    it notices the database is gone. Trials closed
    unrun are RUNNING only inside the lock, between two writes; in the trials' times they are
    zero-length. Without a lock (:func:`~lrtune.search.tune`;
    :func:`~lrtune.search.run_worker` processes sharing a study without a job store) only the
    target is enforced.
    ``handed_out`` counts the pops this gate let through (one may still find the queue
    empty, if another process took its last unit).
    """

    def __init__(
        self,
        search: SearchSpec,
        *,
        lock: Callable[[], AbstractContextManager[None]] | None = None,
        stop_reason: Callable[[], str | None] | None = None,
    ) -> None:
        self.search = search
        self.lock = lock
        self.stop_reason = stop_reason
        self.handed_out = 0

    def full(self, queue: optuna.Study) -> bool:
        """Whether the queue's running units already reach ``search.max_parallel`` (a read)."""
        return self.lock is not None and count_running(queue) >= self.search.max_parallel

    @contextmanager
    def __call__(self, queue: QueuedStudy) -> Iterator[None]:
        with self.lock() if self.lock is not None else nullcontext():
            if not queue.study_name.endswith(CONFIRM_SUFFIX):
                why = target_reached(queue, self.search) or (
                    self.stop_reason() if self.stop_reason is not None else None
                )
                if why is not None:
                    closed = close_unstarted(queue, f"{SKIPPED}: {why}")
                    if closed:
                        logger.info(
                            "study=%s event=search_stopped skipped=%d %s",
                            queue.study_name,
                            closed,
                            why,
                        )
                    raise SearchStopped(why)
            if self.full(queue):
                raise AtCapacity(
                    f"{self.search.max_parallel} units of {queue.study_name} are running "
                    "(search.max_parallel)"
                )
            yield
        self.handed_out += 1


def stop_progress(study: optuna.Study) -> dict[str, Any]:
    """``trials_skipped`` and ``search_stopped`` of a job's progress, from its search study."""
    skipped = skipped_trials(study)
    reason = skipped[0].user_attrs[ATTR_STOP_REASON] if skipped else None
    return {"trials_skipped": len(skipped), "search_stopped": reason}
