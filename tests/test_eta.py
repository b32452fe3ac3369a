"""The time left for a job: each kind of unit at its own measured pace, the same for the CLI's
bar and the dashboard (whose ``common.js`` mirrors :mod:`lrtune.jobs.eta`)."""

from __future__ import annotations

import datetime as dt
import io
import math

import pytest
from tqdm import tqdm

from lrtune.jobs.eta import EtaEstimator
from lrtune.jobs.records import JobProgress
from lrtune.spec import JobSpec

STEPS, STEP_S = 300, 0.1  # the range test: 30 s
TRIALS, TRIAL_S = 10, 20.0  # the search: 200 s
CONFIRMATIONS, CONFIRMATION_S = 6, 25.0  # confirmation: 150 s
END = STEPS * STEP_S + TRIALS * TRIAL_S + CONFIRMATIONS * CONFIRMATION_S


def progress_at(t: float) -> JobProgress:
    """A job started at 0: its range test, then its trials, then its confirmation runs."""
    steps = min(STEPS, math.floor(t / STEP_S + 1e-9))
    search_t = t - STEPS * STEP_S
    trials = min(TRIALS, max(0, math.floor(search_t / TRIAL_S + 1e-9)))
    confirm_t = search_t - TRIALS * TRIAL_S
    confirmations = min(CONFIRMATIONS, max(0, math.floor(confirm_t / CONFIRMATION_S + 1e-9)))
    after_range_test = steps == STEPS
    return JobProgress(
        range_test_steps_done=steps,
        range_test_steps_total=STEPS,
        trials_done=trials,
        trials_total=TRIALS if after_range_test else 0,
        confirmations_done=confirmations,
        confirmations_total=CONFIRMATIONS if after_range_test else 0,
    )


def watch(eta: EtaEstimator, until: float, every: float = 1.5, since: float = 0.5):
    """Poll the job every ``every`` s from ``since`` to ``until``: (t, progress, time left)."""
    out = []
    t = since
    while t <= until:
        p = progress_at(t)
        eta.observe(t, p)
        out.append((t, p, eta.remaining(p, now=t)))
        t += every
    return out


def test_each_kind_is_timed_at_its_own_pace() -> None:
    eta = EtaEstimator(started_at=0.0)
    watch(eta, until=30 + 3 * TRIAL_S + 1)
    assert eta.seconds_per_unit("range_test") == pytest.approx(STEP_S, rel=0.06)
    assert eta.seconds_per_unit("trial") == pytest.approx(TRIAL_S, rel=0.1)
    # not timed yet: a confirmation run trains as a trial does, so it goes at a trial's pace
    assert eta.seconds_per_unit("confirmation") == eta.seconds_per_unit("trial")
    watch(eta, until=END, since=30 + TRIALS * TRIAL_S + 0.5)
    assert eta.seconds_per_unit("confirmation") == pytest.approx(CONFIRMATION_S, rel=0.1)


def test_after_the_range_test_most_of_the_time_is_still_ahead() -> None:
    """300 steps and one trial done of 316 units is 95% by count; by time, 13%."""
    eta = EtaEstimator(started_at=0.0)
    (t, p, left), *_ = reversed(watch(eta, until=30 + TRIAL_S + 1))
    assert p.trials_done == 1
    assert left == pytest.approx(END - t, rel=0.15)  # confirmations at a trial's pace
    assert eta.fraction(p, now=t) == pytest.approx(t / END, abs=0.05)


def test_the_time_left_counts_down_steadily_from_the_first_trial_to_the_end() -> None:
    """The dashboard's ETA went 8m -> 9m -> 20m -> 8m: here, once every kind with units left
    has a pace, the predicted end stays within 10% of the job's length of the true end."""
    eta = EtaEstimator(started_at=0.0)
    seen = watch(eta, until=END - 1)
    unknown = [t for t, _p, left in seen if left is None]
    assert max(unknown) < 30 + TRIAL_S + 1.5  # timed once the first trial has finished
    ends = [t + left for t, _p, left in seen if left is not None]
    assert all(abs(end - END) < 0.1 * END for end in ends), (min(ends), max(ends), END)


def test_a_watcher_that_opens_a_running_job_times_it_from_the_jobs_own_timestamps() -> None:
    eta = EtaEstimator(started_at=0.0, search_started_at=30.0)
    t = 30 + 4 * TRIAL_S + 5
    p = progress_at(t)
    eta.observe(t, p)
    assert eta.seconds_per_unit("range_test") == pytest.approx(STEP_S)
    assert eta.remaining(p, now=t) == pytest.approx(END - t, rel=0.15)


def test_the_time_left_is_unknown_until_a_kind_with_units_left_has_been_timed() -> None:
    eta = EtaEstimator(started_at=0.0, trials=TRIALS)
    t, p, left = watch(eta, until=20)[-1]
    assert left is None  # the trials: none timed
    assert eta.fraction(p, now=t) < 0.1  # by count, the range test as one trial


def test_the_cli_bar_shows_the_share_of_time_and_the_time_left() -> None:
    from lrtune.jobs.records import JobRecord
    from lrtune.jobs.waiting import BAR_TOTAL, _show

    now = dt.datetime.now(dt.UTC)
    started = now - dt.timedelta(seconds=30 + TRIAL_S)
    p = progress_at(30 + TRIAL_S)
    job = JobRecord.model_construct(
        id="0123456789abcdef",
        spec=JobSpec.model_validate(
            {"model": {"name": "mlp"}, "dataset": {"name": "digits"}, "search": {"n_trials": 10}}
        ),
        status=_status("searching"),
        progress=p,
        started_at=started,
        search_started_at=started + dt.timedelta(seconds=30),
    )
    out = io.StringIO()
    bar = tqdm(total=BAR_TOTAL, file=out, bar_format="{percentage:3.0f}%| {postfix}")
    _show(bar, job, EtaEstimator())
    assert bar.n / BAR_TOTAL == pytest.approx((30 + TRIAL_S) / END, abs=0.05)
    text = out.getvalue()
    assert "trials 1/10" in text and "5m 0s left" in text, text  # 9 + 6 units at 20 s
    bar.close()


def _status(value: str):
    from lrtune.jobs.records import JobStatus

    return JobStatus(value)


NODE_PROGRAM = """
const [common, trace] = [process.argv[1], JSON.parse(process.argv[2])];
const { EtaEstimator } = await import(common);
const eta = new EtaEstimator(trace.started_at, trace.search_started_at, trace.trials);
console.log(JSON.stringify(trace.points.map(([t, p]) => {
  eta.observe(t, p);
  return [eta.remaining(p, t), eta.fraction(p, t)];
})));
"""


@pytest.mark.parametrize(
    ("started_at", "search_started_at", "since"), [(0.0, None, 0.5), (0.0, 30.0, 95.0)]
)
def test_the_dashboard_estimates_as_the_cli_does(
    started_at: float, search_started_at: float | None, since: float
) -> None:
    """common.js's EtaEstimator gives the Python one's numbers on the same polls."""
    import json
    import shutil
    import subprocess
    from pathlib import Path

    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node")
    common = Path(__file__).resolve().parents[1] / "api" / "static" / "common.js"
    eta = EtaEstimator(started_at, search_started_at, trials=TRIALS)
    seen = watch(eta, until=END - 1, since=since)
    points = [[t, p.model_dump(mode="json")] for t, p, _left in seen]
    trace = {"started_at": started_at, "search_started_at": search_started_at}
    trace |= {"trials": TRIALS, "points": points}
    out = subprocess.run(
        [node, "--input-type=module", "-e", NODE_PROGRAM, common.as_uri(), json.dumps(trace)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    ours = EtaEstimator(started_at, search_started_at, trials=TRIALS)
    expected = []
    for t, p, _left in seen:
        ours.observe(t, p)
        expected.append([ours.remaining(p, t), ours.fraction(p, t)])
    theirs = json.loads(out.stdout)
    assert len(theirs) == len(expected)
    for (left, fraction), (our_left, our_fraction) in zip(theirs, expected, strict=True):
        assert (left is None) == (our_left is None), (left, our_left)
        assert left is None or left == pytest.approx(our_left)
        assert fraction == pytest.approx(our_fraction)
