"""How long a job has left, from the time each kind of unit has taken so far.

A job runs three kinds of unit, one after the other: range-test steps (many, fast), search
trials and confirmation runs (few, slow). Counting them as equal units makes a bar read 88%
with most of the time still ahead, so :class:`EtaEstimator` measures seconds per unit for each
kind from what a watcher sees (the job's :class:`~lrtune.jobs.records.JobProgress`, polled or
streamed), and adds up the units left of each kind at its own pace. A kind is timed between
two moments its count was seen to change (or from when the kind before it was seen to finish,
or, for the range test, from the job's start), never from when the watcher happened to look.
A trial and a confirmation run both train a model, so one stands in for the other until it
has been timed itself; before that the time left is unknown (``None``), not a guess.

The dashboard's ``common.js`` (``EtaEstimator``) is this class line for line: change both.

Example:
    >>> from lrtune.jobs.records import JobProgress
    >>> eta = EtaEstimator(started_at=0.0)
    >>> p = JobProgress(range_test_steps_done=100, range_test_steps_total=200, trials_total=4)
    >>> eta.observe(10.0, p)  # 100 steps in 10 s
    >>> eta.seconds_per_unit("range_test"), eta.remaining(p, now=10.0)  # trials not timed
    (0.1, None)
    >>> p = p.model_copy(update={"range_test_steps_done": 200})
    >>> eta.observe(20.0, p)
    >>> eta.observe(80.0, p.model_copy(update={"trials_done": 1}))  # a trial: 60 s
    >>> p = p.model_copy(update={"trials_done": 1})
    >>> eta.remaining(p, now=80.0), round(eta.fraction(p, now=80.0), 2)
    (180.0, 0.31)
"""

from __future__ import annotations

from typing import Literal

from lrtune.jobs.records import JobProgress

Kind = Literal["range_test", "trial", "confirmation"]

KINDS: dict[Kind, tuple[str, str]] = {
    "range_test": ("range_test_steps_done", "range_test_steps_total"),
    "trial": ("trials_done", "trials_total"),
    "confirmation": ("confirmations_done", "confirmations_total"),
}
"""Each kind of unit, in the order a job runs them: its (done, total) fields in the progress."""

_STANDS_IN: dict[Kind, Kind] = {"trial": "confirmation", "confirmation": "trial"}


class EtaEstimator:
    """Seconds per unit of each kind, measured from the progress one watcher sees over time.

    ``started_at``: when the job started (seconds, the same clock as :meth:`observe`'s
    ``t``), the start of its range test; ``search_started_at``: when it entered its search,
    the start of its first trial (the job record's fields); ``None`` when unknown. With them a
    watcher that opens a running job times its units at once. ``trials``: the search's
    budget (the spec's ``n_trials``), for the share done before the workers know it.
    """

    def __init__(
        self,
        started_at: float | None = None,
        search_started_at: float | None = None,
        trials: int = 0,
    ) -> None:
        self.started_at = started_at
        self.search_started_at = search_started_at
        self.trials = trials
        self._seen: dict[Kind, int] = {}
        self._anchor: dict[Kind, tuple[float, int]] = {}  # when a unit of the kind began
        self._last: dict[Kind, tuple[float, int]] = {}  # the latest change seen

    def observe(self, t: float, progress: JobProgress) -> None:
        """Record what the job's progress is at time ``t`` (seconds)."""
        before: dict[Kind, int] = dict(self._seen)
        previous: Kind | None = None
        for kind, (done_field, _total) in KINDS.items():
            done = getattr(progress, done_field)
            start = self.started_at if kind == "range_test" else self.search_started_at
            if kind not in self._seen and kind != "confirmation" and start is not None:
                self._anchor[kind] = (start, 0)
                if done:
                    self._last[kind] = (t, done)
                if kind == "range_test" and self.search_started_at is not None:
                    self._last[kind] = (self.search_started_at, done)  # it ended then
            elif kind in self._seen and done > self._seen[kind]:
                if kind in self._anchor:
                    self._last[kind] = (t, done)
                else:  # a unit just ended: the next one is timed from here
                    self._anchor[kind] = (t, done)
            if previous is not None and kind not in self._anchor and not done:
                prev_done, prev_total = (getattr(progress, f) for f in KINDS[previous])
                just_finished = previous in before and before[previous] < prev_done
                if just_finished and 0 < prev_total <= prev_done:
                    self._anchor[kind] = (t, 0)  # the kind before just finished: this one starts
            self._seen[kind] = done
            previous = kind

    def seconds_per_unit(self, kind: Kind) -> float | None:
        """The measured seconds per unit of ``kind`` (a trial's for a confirmation run not
        timed yet, and the other way round); ``None`` when neither has been timed."""
        own = self._measured(kind)
        return (
            own if own is not None or kind not in _STANDS_IN else self._measured(_STANDS_IN[kind])
        )

    def _measured(self, kind: Kind) -> float | None:
        if kind not in self._anchor or kind not in self._last:
            return None
        (t0, d0), (t1, d1) = self._anchor[kind], self._last[kind]
        return (t1 - t0) / (d1 - d0) if d1 > d0 else None

    def remaining(self, progress: JobProgress, now: float) -> float | None:
        """Seconds left: each kind's units left at its own pace, less the time the latest
        unit has already run; ``None`` while a kind with units left has not been timed, and
        during the range test while the search's size is not known yet (0 trials)."""
        p = progress
        if not p.trials_total and p.range_test_steps_done < max(1, p.range_test_steps_total):
            return None
        left, latest = 0.0, None
        for kind, (done_field, total_field) in KINDS.items():
            done, total = getattr(progress, done_field), getattr(progress, total_field)
            if total <= done:
                continue
            pace = self.seconds_per_unit(kind)
            if pace is None:
                return None
            if latest is None:  # the kind running now: its current unit has begun
                since = now - self._last.get(kind, self._anchor.get(kind, (now, 0)))[0]
                left -= min(max(0.0, since), pace)
                latest = kind
            left += (total - done) * pace
        return max(0.0, left)

    def fraction(self, progress: JobProgress, now: float) -> float:
        """How much of the job is done, by time where every kind has been timed, else by
        count (the range test as one unit, as a trial)."""
        left = self.remaining(progress, now)
        if left is not None:
            spent = sum(
                getattr(progress, done) * (self.seconds_per_unit(kind) or 0.0)
                for kind, (done, _total) in KINDS.items()
            )
            return 1.0 if spent + left <= 0 else min(1.0, spent / (spent + left))
        p = progress
        range_test = (
            min(1.0, p.range_test_steps_done / p.range_test_steps_total)
            if (p.range_test_steps_total)
            else 0.0
        )
        done = range_test + p.trials_done + p.confirmations_done
        return min(1.0, done / (1 + (p.trials_total or self.trials) + p.confirmations_total))
