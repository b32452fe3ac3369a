"""The writes a journal storage holds back: a running trial's own, appended with its next one.

Each operation appended to lrtune's journal (:mod:`lrtune._journal`) is a commit that waits for
the disk, and a search trial makes about twenty of them: its claim, each parameter, each
attribute, each epoch's report, its finish. :class:`PendingWrites` lets most of them wait and
go in one append (one commit) with a later one of the same trial:

- **What waits**: writes to a trial that this process claimed and has not finished (its
  parameters, user and system attributes, intermediate values), made within ``flush_s``
  seconds of the trial's last append, and no more than ``max_reports`` of its reports. Later
  writes append at once and carry the waiting ones before them. A claim (the trial going
  RUNNING), a finish, and every write that is not to a trial running here (creating a trial,
  a study's attributes) never wait.
- **When they go**: with the trial's next append (its finish: a trial's whole run of a few
  short epochs goes in one commit with its finish), or when lrtune publishes them
  (:func:`lrtune._optuna.publish`: a unit's plan, so that other workers' samplers see its
  parameters before it trains). Operations keep their order, and each carries the worker id
  of the thread that wrote it: the journal is the one Optuna's ``JournalStorage`` would have
  written, with the same operations in the same order, some of them later.
- **Who sees them**: this process at once (:meth:`PendingWrites.overlaid`: its reads show them
  on top of the journal); other processes when they are appended: a running trial's reports at
  most ``max_reports`` epochs, or ``flush_s`` seconds and one epoch, late (an observer that
  counts a trial's epochs while it runs sees them every few epochs, however short they are).

Why this keeps lrtune's guarantees:

- *Exactly-once accounting*: claims and finishes are appended at once, as before; the journal's
  one order decides which claim wins and a trial's state, and a waiting write never changes a
  state.
- *Fencing*: a trial that another process failed as stale refuses every later operation of
  this process; waiting writes are refused when they are appended (with the trial's next
  write, at most ``flush_s`` seconds or one epoch after the failure), raising
  ``UpdateFinishedTrialError`` there, so a stale worker's results are never taken.
- *Resume*: a unit checkpoints every epoch to a file; a retried trial resumes from that file's
  epoch, whatever intermediate values its dead predecessor had appended (it inherits those;
  the epochs of its last ``flush_s`` seconds are in its checkpoint, not in its reports, as the
  epoch checkpointed just before a kill always was).
- *Pruning*: a trial's own pruner reads its own reports from memory (Optuna's ``Trial`` caches
  them, and this process's reads show its waiting writes); the pruners lrtune uses compare with
  other trials' values only once those finished (median) or with the rung attributes that
  other trials appended (hyperband, asynchronous by design: a rung value seen later is as if
  its trial were slower).

Example:
    >>> writes = PendingWrites(flush_s=60.0)
    >>> writes.claimed(7)
    >>> report = {"op_code": 7, "worker_id": "w", "trial_id": 7, "step": 0,
    ...           "intermediate_value": 0.5}
    >>> writes.defer(report)
    True
    >>> finish = {"op_code": 6, "worker_id": "w", "trial_id": 7, "state": 1, "values": [0.5]}
    >>> [log["op_code"] for log in writes.due(finish)]
    [7, 6]
    >>> writes.running_here(7)
    False
"""

from __future__ import annotations

import collections
import contextlib
import copy
import time
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages.journal._storage import JournalOperation, JournalStorageReplayResult
from optuna.trial import FrozenTrial, TrialState

Log = dict[str, Any]

FLUSH_S = 0.5
"""How long a running trial's writes may wait for its next append, by default (seconds)."""
MAX_REPORTS = 8
"""How many of a running trial's reports (its epochs) may wait, by default."""

REPORT = JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE
DEFERRABLE_OPS = frozenset(
    {
        JournalOperation.SET_TRIAL_PARAM,
        JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE,
        JournalOperation.SET_TRIAL_USER_ATTR,
        JournalOperation.SET_TRIAL_SYSTEM_ATTR,
    }
)


class PendingWrites:
    """The trials this process runs, and their writes not appended yet (see the module).

    Not thread-safe on its own: the journal storage calls it under its lock.
    """

    def __init__(self, flush_s: float = FLUSH_S, max_reports: int = MAX_REPORTS) -> None:
        if flush_s < 0 or max_reports < 0:
            raise ValueError(f"flush_s and max_reports must be 0 or more: {flush_s}, {max_reports}")
        self.flush_s = flush_s
        self.max_reports = max_reports
        self._appended_at: dict[int, float] = {}  # running here -> its last append (monotonic)
        self._waiting: dict[int, list[Log]] = {}  # running here -> its writes, oldest first

    def claimed(self, trial_id: int) -> None:
        """This process runs ``trial_id`` now: its claim was just appended."""
        self._appended_at[trial_id] = time.monotonic()

    def ended(self, trial_id: int) -> None:
        """This process no longer runs ``trial_id`` (it lost the claim, or finished it)."""
        self._appended_at.pop(trial_id, None)
        self._waiting.pop(trial_id, None)

    def running_here(self, trial_id: int) -> bool:
        """Whether this process claimed ``trial_id`` and has not finished it."""
        return trial_id in self._appended_at

    def defer(self, log: Log) -> bool:
        """Hold ``log`` back if it may wait; whether it did."""
        trial_id = log.get("trial_id")
        appended_at = self._appended_at.get(trial_id)  # type: ignore[arg-type]
        if log["op_code"] not in DEFERRABLE_OPS or appended_at is None:
            return False
        if time.monotonic() - appended_at >= self.flush_s:
            return False
        waiting = self._waiting.setdefault(trial_id, [])  # type: ignore[arg-type]
        if log["op_code"] == REPORT and _reports(waiting) >= self.max_reports:
            return False
        waiting.append(log)
        return True

    def due(self, log: Log) -> list[Log]:
        """What to append now for ``log`` (that did not wait): its trial's waiting writes, then
        ``log``. A finish ends the trial here."""
        trial_id = log.get("trial_id")
        if trial_id is None or trial_id not in self._appended_at:
            return [log]
        logs = [*self._waiting.pop(trial_id, []), log]
        self._appended_at[trial_id] = time.monotonic()
        if log["op_code"] == JournalOperation.SET_TRIAL_STATE_VALUES and _finishes(log):
            self.ended(trial_id)
        return logs

    def take(self, trial_id: int) -> list[Log]:
        """``trial_id``'s waiting writes, to append now (none wait for it afterwards)."""
        logs = self._waiting.pop(trial_id, [])
        if logs:
            self._appended_at[trial_id] = time.monotonic()
        return logs

    def overlaid(self, replay: JournalStorageReplayResult) -> JournalStorageReplayResult:
        """``replay`` as this process sees it: with the waiting writes applied on top.

        ``replay`` itself is left as the journal has it. Optuna's replay replaces a trial it
        changes by a changed copy, so the overlay copies only the trials with waiting writes;
        a write the journal will refuse (its trial finished meanwhile) is left out.
        """
        if not self._waiting:
            return replay
        overlay = copy.copy(replay)
        overlay._trials = collections.ChainMap({}, replay._trials)  # type: ignore[assignment]
        for logs in self._waiting.values():
            for log in logs:
                with contextlib.suppress(KeyError, ValueError, UpdateFinishedTrialError):
                    overlay.apply_logs([log])
        return overlay


def detached(trial: FrozenTrial) -> FrozenTrial:
    """A copy of ``trial`` with dicts of its own. Optuna's ``Trial`` changes the dicts of the
    trial its storage gave it in place, after each write: harmless while every write replaces
    the trial in the replay, but a held write does not, and the replay's trial would change.
    """
    copied = copy.copy(trial)
    copied.params = dict(trial.params)
    copied.distributions = dict(trial.distributions)
    copied.user_attrs = dict(trial.user_attrs)
    copied.system_attrs = dict(trial.system_attrs)
    copied.intermediate_values = dict(trial.intermediate_values)
    return copied


def _reports(logs: list[Log]) -> int:
    return sum(log["op_code"] == REPORT for log in logs)


def _finishes(log: Log) -> bool:
    return TrialState(log["state"]).is_finished()
