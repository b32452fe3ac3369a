"""The text reports ``lrtune`` prints: a recommendation, a job, its range test, the job and
worker tables. ``lrtune serve --submit`` prints its recommendation with the same functions.

Example:
    >>> print(table([("id", "status"), ("3f2a", "queued"), ("9c", "succeeded")]))
    id    status
    3f2a  queued
    9c    succeeded
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lrtune.jobs import StoredRecommendation
    from lrtune.recommendation import Recommendation
    from lrtune.result import LRBounds, LRFinderResult

__all__ = [
    "CodeFor",
    "code_context",
    "describe_job",
    "describe_range_test",
    "jobs_table",
    "print_recommendation",
    "report",
    "table",
    "workers_table",
]

CodeFor = dict[str, int | None]
"""The run a snippet is written for: ``{"epochs": E, "steps_per_epoch": S}``, either None."""


def report(rec: Recommendation, code_for: CodeFor | None = None) -> str:
    """The report ``tune`` and ``recommend`` print; ``code_for`` writes the snippet for the
    user's run (:meth:`Recommendation.to_code`'s ``epochs`` and ``steps_per_epoch``)."""
    lines = [f"job {rec.study_name} ({rec.fingerprint[:12]})"]
    if rec.suggested_lr is not None:
        agreement = rec.range_test.consensus.agreement
        spread = (
            "one seed"
            if rec.spread_decades is None
            else f"seeds within {rec.spread_decades:.2f} decades, agreement {agreement}"
        )
        lines.append(f"range test: suggested lr {rec.suggested_lr:.4g} ({spread})")
    lines.append(f"lr bounds: {rec.bounds.low:.4g} .. {rec.bounds.high:.4g}: {rec.bounds.reason}")
    lines.append(f"search trials: {_counts(rec.n_trials)}")
    if any(rec.n_confirmation.values()):
        lines.append(f"confirmation runs: {_counts(rec.n_confirmation)}")
    skipped = [e for e in rec.history if (e.stop_reason or "").startswith("skipped:")]
    if skipped:
        lines.append(f"  {len(skipped)} queued trials {skipped[0].stop_reason}")
    for entry in rec.history:
        if entry.state == "FAIL":
            what = "trial" if entry.kind == "search" else "confirmation run"
            lines.append(f"  {what} {entry.number} failed: {entry.stop_reason}")
    if rec.best is not None:
        how = (
            f"mean over confirmation seeds {', '.join(map(str, rec.confirm_seeds))}"
            if rec.confirmed
            else f"search seed {rec.search_seed} only, unconfirmed"
        )
        lines += [
            "",
            f"recommended{' (PROVISIONAL)' if rec.provisional else ''}: {rec.best.describe}, "
            f"{rec.metric} {rec.value:.4g} ({how})",
        ]
    lines += ["", rec.table()]
    if rec.code is not None and code_for:
        tuned = f"{rec.spec.search.epochs} epochs of {rec.steps_per_epoch} steps"
        written = ", ".join(f"{key} = {value}" for key, value in code_for.items() if value)
        lines += ["", f"# paste into your training script ({written}; tuned for {tuned}):"]
        lines.append(rec.to_code(**code_for))
    elif rec.code is not None:
        lines += ["", "# paste into your training script:", rec.code]
    return "\n".join(lines)


def _counts(states: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in states.items() if n) or "none"


def code_context(code_for: CodeFor | None) -> dict[str, CodeFor] | None:
    """The serialization context that writes a recommendation's ``code`` for that run."""
    return None if code_for is None else {"code_for": code_for}


def print_recommendation(
    stored: StoredRecommendation, *, as_json: bool, code_for: CodeFor | None = None
) -> None:
    """What ``lrtune recommend JOB`` prints: the stored record as JSON, or the report; its
    snippet written for ``code_for``'s run when given."""
    if as_json:
        print(stored.model_dump_json(context=code_context(code_for)))
        return
    print(f"job {stored.job_id}, written {stored.created_at:%Y-%m-%d %H:%M:%S} UTC")
    print(report(stored.recommendation, code_for))


def workers_table(workers: list[Any]) -> str:
    """``lrtune workers``: one row a worker, with what it holds."""
    rows = [("id", "host", "device", "pid", "version", "units", "heartbeat", "tasks", "holds")]
    for w in workers:
        state = "" if w.live else (" (stopped)" if w.stopped_at else " (silent)")
        holds = ", ".join(
            f"{a.job_id[:8]} {a.phase.value}{' (lease)' if a.lease else ''}" for a in w.activity
        )
        rows.append(
            (
                w.id,
                w.host,
                w.device,
                str(w.pid),
                w.version,
                f"{w.concurrency}x{w.threads}t",
                f"{w.heartbeat_age_s:.1f}s ago{state}",
                ", ".join(sorted(w.plugin_registry.tasks)) or "-",
                holds or "idle",
            )
        )
    return table(rows)


def table(rows: list[tuple[str, ...]]) -> str:
    """``rows`` (the first one the header) in left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def describe_job(job: Any) -> str:
    """``lrtune status JOB``: the job's state, spec, progress, holder and error."""
    progress = job.progress
    lines = [
        f"job {job.id} ({job.name or 'unnamed'}): {job.status.value}",
        (
            f"task {job.spec.task.name}, "
            if job.spec.task is not None
            else f"model {job.spec.model.name}, dataset {job.spec.dataset.name}, "
        )
        + f"fingerprint {job.fingerprint[:12]}, study {job.study_name}",
        f"submitted {job.created_at:%Y-%m-%d %H:%M:%S} UTC, attempts {job.attempts}",
        f"range test steps {progress.range_test_steps_done}/{progress.range_test_steps_total}, "
        f"trials {progress.trials_done}/{progress.trials_total or job.spec.search.n_trials}, "
        f"confirmation runs {progress.confirmations_done}/{progress.confirmations_total}"
        + ("" if progress.best_value is None else f", best so far {progress.best_value:.4g}"),
    ]
    if progress.search_stopped:
        lines.append(
            f"search stopped early ({progress.trials_skipped} queued trials skipped): "
            f"{progress.search_stopped}"
        )
    if job.holder_worker_id:
        lines.append(f"held by worker {job.holder_worker_id} until {job.lease_expires_at}")
    if job.error:
        lines.append(f"error: {job.error}")
    return "\n".join(lines)


def describe_range_test(range_test: LRFinderResult, bounds: LRBounds, rule: str) -> str:
    """The range test's suggestion, the seeds' spread and the search's LR bounds."""
    if range_test.suggestion is None:
        suggested = f"no suggestion ({range_test.consensus.suggestion.reason})"
    else:
        suggested = f"suggested lr {range_test.suggestion:.3g}"
    spread = range_test.spread_decades
    agreement = "n/a" if spread is None else f"{spread:.2f} decades"
    lines = [
        f"range test: {suggested}, seeds' spread {agreement} "
        f"(agreement {range_test.consensus.agreement}, rule {rule})",
        f"search bounds: lr {bounds.low:.3g} to {bounds.high:.3g}"
        + (" (widened)" if bounds.widened else ""),
    ]
    return "\n".join(lines)


def jobs_table(jobs: list[Any]) -> str:
    """``lrtune status``: one row a job."""
    rows = [("id", "name", "status", "submitted (UTC)", "trials")]
    rows += [
        (
            job.id,
            job.name or "-",
            job.status.value,
            f"{job.created_at:%Y-%m-%d %H:%M:%S}",
            f"{job.progress.trials_done}/{job.progress.trials_total or job.spec.search.n_trials}",
        )
        for job in jobs
    ]
    return table(rows)
