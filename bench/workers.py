"""Workers on PostgreSQL: search throughput with 1 and 2 workers, and the store's per-trial cost.

What it measures, in one run, on one job shape (the registry's CNN over scikit-learn's digits,
SGD, batch 32, no pruning and no confirmation, so that every trial trains the same number of
epochs and the search is all there is to time; trials of about 0.5-1 s on one thread):

1. **Throughput.** A fresh job of ``--trials`` trials is submitted to the job store and run by
   ``lrtune worker --threads 1`` processes, first one, then two (each on a fresh job with the
   same spec). Finished trials per minute come from the trials' own start and end times in
   Optuna's tables: the window from the first trial's start to the last trial's end, so the range
   test (one worker's exclusive phase) is not counted. Target: 2 workers >= 1.8x one. Beside
   each worker run, the machine's ceiling: the same search on an in-memory study in one
   process, and in two processes at once (one torch thread each, no store, no queue); how much
   longer a trial takes side by side is what the machine alone costs two workers.
2. **Per-trial overhead of the store and queue.** The same job's trials are run in this process
   twice: by lrtune's library on an in-memory Optuna study (``prepare_study(storage=None)`` and
   ``run_trials``), and by a :class:`lrtune.workers.loop.Worker` on the PostgreSQL job store;
   both checkpoint every epoch, as a worker does.
   The overhead is measured directly: the time between trials (the window less the trials'
   own durations: a trial's start and end are its claim and its finish) beyond the in-memory
   study's, plus the time PostgreSQL took to answer the statements sent while a trial ran
   (timed from sent to answered by SQLAlchemy ``before_cursor_execute`` and
   ``after_cursor_execute`` listeners on every engine; they are also counted, grouped by verb
   and table, per trial). Training time does not blur it, as it blurs the difference of the
   two search windows, which is reported beside it. Target: under 20 ms a trial, and a
   handful of statements.

PostgreSQL runs on the same 2-core machine and shares the cores with the workers; the report
records the load average at the start and the end. Each kind of run is repeated ``--rounds``
times (default 2) in alternating order, so that load that comes and goes weighs on both sides
of a comparison alike. Compare the ratios from one run rather than absolute times across runs.

Run:
    .venv/bin/python bench/workers.py            # ~4 min on 2 cores: Markdown on stdout
    .venv/bin/python bench/workers.py --write    # ... and write docs/benchmark_workers.md
    .venv/bin/python bench/workers.py --quick    # a smoke test (4 trials, ~1 min)
    .venv/bin/python bench/workers.py --database postgresql+psycopg://postgres@127.0.0.1/x

It ends by printing one JSON line with the headline figures and their targets.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import multiprocessing
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
import torch

import lrtune
from lrtune.jobs import JobStatus, JobStore, upgrade
from lrtune.optuna_storage import open_storage
from lrtune.spec import JobSpec
from lrtune.training import TrainingSetup
from lrtune.tuner import prepare_study, run_trials

REPO = Path(__file__).resolve().parents[1]
DOC_PATH = REPO / "docs" / "benchmark_workers.md"
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BENCH_DB = "lrtune_bench_workers"
TARGET_SPEEDUP = 1.8  # 2 workers' trials a minute over one worker's
TARGET_OVERHEAD_MS = 20.0  # the store and queue's cost per trial

JOB: dict[str, Any] = {
    "model": {"name": "cnn"},
    "dataset": {"name": "digits"},
    "batch_size": 32,
    "range_test": {"seeds": 1, "num_iter": 20},
    "search": {
        "n_trials": 24,
        "epochs": 8,
        "pruner": "none",
        "sampler": "random",
        "families": ["constant", "cosine", "step"],
        "warmup": False,
        "baselines": False,
        "confirm_seeds": 0,
        "finalists": 1,
    },
}


@dataclass(frozen=True)
class Window:
    """A search phase as its trials' own times in the study show it."""

    trials: int
    seconds: float
    mean_trial_s: float

    @property
    def per_minute(self) -> float:
        return 60 * self.trials / self.seconds

    @property
    def per_trial_s(self) -> float:
        return self.seconds / self.trials

    def busy(self, workers: int) -> float:
        """The share of ``workers`` workers' time in the window spent inside trials."""
        return self.trials * self.mean_trial_s / (workers * self.seconds)

    @property
    def between_trials_s(self) -> float:
        """The window's time outside trials, per trial (one worker: the gaps between them)."""
        return self.per_trial_s - self.mean_trial_s

    @classmethod
    def combined(cls, windows: Sequence[Window]) -> Window:
        """Several runs as one: their trials and seconds summed."""
        trials = sum(w.trials for w in windows)
        mean_trial_s = sum(w.mean_trial_s * w.trials for w in windows) / trials
        return cls(trials, sum(w.seconds for w in windows), mean_trial_s)


def search_window(study: optuna.Study) -> Window:
    """From the first trial's start to the last trial's end, over the finished trials."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    starts = [t.datetime_start for t in done if t.datetime_start]
    ends = [t.datetime_complete for t in done if t.datetime_complete]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    seconds = (max(ends) - min(starts)).total_seconds()
    return Window(len(done), seconds, statistics.fmean(durations))


def job_spec(trials: int) -> JobSpec:
    job = {**JOB, "search": {**JOB["search"], "n_trials": trials}}
    return JobSpec.model_validate(job)


def fresh_database(admin_url: str) -> str:
    """Drop and create the benchmark's own database on the server; return its URL."""
    admin = sa.engine.make_url(admin_url)
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{BENCH_DB}"'))
    engine.dispose()
    url = admin.set(database=BENCH_DB).render_as_string(hide_password=False)
    upgrade(url)
    return url


# --------------------------------------------------------------------------------------------
# 1. Throughput: worker processes
# --------------------------------------------------------------------------------------------


def run_worker_processes(url: str, spec: JobSpec, workers: int, log: Any) -> Window:
    """Submit a job, run it with ``workers`` worker processes to success, return its window."""
    store = JobStore(url)
    job = store.submit(spec, name=f"bench-{workers}-workers", reuse=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lrtune.cli", "worker", "--database", url]
    command += ["--device", "cpu", "--threads", "1", "--max-jobs", "1"]
    with tempfile.TemporaryDirectory() as logs:
        procs = []
        for k in range(workers):
            out = open(Path(logs) / f"worker-{k}.log", "w")  # noqa: SIM115 - closed below
            procs.append((subprocess.Popen(command, env=env, stdout=out, stderr=out), out))
        try:
            _wait_finished(store, job.id, timeout_s=900)
        finally:
            for proc, out in procs:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                out.close()
    finished = store.get(job.id)
    if finished.status is not JobStatus.SUCCEEDED:
        ended = f"{finished.status.value}: {finished.error}"
        raise SystemExit(f"the {workers}-worker job ended {ended}")
    window = search_window(optuna.load_study(study_name=job.study_name, storage=open_storage(url)))
    log(f"{workers} worker(s): {window.trials} trials in {window.seconds:.1f} s")
    return window


def _wait_finished(store: JobStore, job_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not store.get(job_id).status.finished:
        if time.monotonic() > deadline:
            raise SystemExit(f"job {job_id} did not finish in {timeout_s:.0f} s")
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# 2. Overhead: the same trials in memory and through the store, in this process
# --------------------------------------------------------------------------------------------


def run_in_memory(spec: JobSpec) -> Window:
    """The same trials on an in-memory study, checkpointing every epoch as a worker does."""
    setup = TrainingSetup.from_spec(spec, "cpu")
    study = prepare_study(spec, None, setup=setup, progress=False)
    with tempfile.TemporaryDirectory() as artifacts:
        run_trials(study, setup, artifact_dir=Path(artifacts), progress=False)
    return search_window(study)


def run_in_memory_processes(spec: JobSpec, processes: int) -> Window:
    """``processes`` in-memory searches at once, each in a process of its own with one torch
    thread, as the workers run: their trials together. Against one such process, what the
    machine alone does to two trainings side by side, with no store and no queue."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, context, initializer=_quiet_one_thread) as pool:
        return Window.combined(list(pool.map(run_in_memory, [spec] * processes)))


def _quiet_one_thread() -> None:
    """A spawned process set up as this one: one torch thread, Optuna's warnings only."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class StatementLog:
    """Every SQL statement sent while listening: when it was sent, and how long it took to be
    answered (sent to answered, on the connection's thread)."""

    sent: list[tuple[float, str, float]]

    def between(self, start: float, end: float) -> list[tuple[float, str, float]]:
        return [sent for sent in self.sent if start <= sent[0] <= end]


@contextmanager
def logged_statements() -> Iterator[StatementLog]:
    log = StatementLog([])

    def sending(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        conn.info.setdefault("bench_sent", []).append((time.time(), time.perf_counter()))

    def answered(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent_at, started = conn.info["bench_sent"].pop()
        log.sent.append((sent_at, statement, time.perf_counter() - started))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", sending)
    sa.event.listen(sa.engine.Engine, "after_cursor_execute", answered)
    try:
        yield log
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", sending)
        sa.event.remove(sa.engine.Engine, "after_cursor_execute", answered)


@dataclass
class StoreSql:
    """The SQL a store search sent in its window: each kind's count and seconds answering
    it, and the seconds answering those sent while a trial ran and between trials."""

    statements: collections.Counter[str] = field(default_factory=collections.Counter)
    statement_s: collections.Counter[str] = field(default_factory=collections.Counter)
    in_trials_s: float = 0.0
    between_s: float = 0.0

    def add(self, kind: str, seconds: float, *, inside: bool) -> None:
        self.statements[kind] += 1
        self.statement_s[kind] += seconds
        if inside:
            self.in_trials_s += seconds
        else:
            self.between_s += seconds

    def __add__(self, other: StoreSql) -> StoreSql:
        return StoreSql(
            self.statements + other.statements,
            self.statement_s + other.statement_s,
            self.in_trials_s + other.in_trials_s,
            self.between_s + other.between_s,
        )


def run_in_store(url: str, spec: JobSpec) -> tuple[Window, StoreSql]:
    """One in-process worker on the job store: its window, the statements it sent in that
    window, and the seconds they took to be answered, inside trials and between them."""
    from lrtune.workers.loop import Worker

    store = JobStore(url)
    job = store.submit(spec, name="bench-in-process", reuse=False)
    with logged_statements() as statements:
        Worker(store, device="cpu", poll_s=0.05).run(once=True)
    finished = store.get(job.id)
    if finished.status is not JobStatus.SUCCEEDED:
        raise SystemExit(f"the in-process job ended {finished.status.value}: {finished.error}")
    study = optuna.load_study(study_name=job.study_name, storage=open_storage(url))
    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    trials = [(t.datetime_start.timestamp(), t.datetime_complete.timestamp()) for t in done]
    sent = statements.between(min(s for s, _ in trials), max(e for _, e in trials))
    sql = StoreSql()
    for at, statement, seconds in sent:
        inside = any(start <= at <= end for start, end in trials)
        sql.add(_statement_kind(statement), seconds, inside=inside)
    return search_window(study), sql


_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+\"?([A-Za-z_][A-Za-z0-9_]*)", re.I)


_MAIN_OF_WITH = re.compile(r"\)\s*(INSERT|UPDATE|DELETE|SELECT)\b(.*)$", re.I | re.S)


def _statement_kind(sql: str) -> str:
    words = sql.split()
    verb = words[0].upper() if words else "?"
    if verb in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
        return verb
    if verb == "WITH" and (main := _MAIN_OF_WITH.search(sql)):  # named by its main statement
        verb, sql = main.group(1).upper(), main.group(0)
    match = _TABLE.search(sql)
    return f"{verb} {match.group(1) if match else '-'}"


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """What one run measured: the worker processes' windows, the in-process searches', and the
    SQL the store search sent in its window."""

    one: Window
    two: Window
    memory: Window
    store: Window
    sql: StoreSql
    alone: Window  # one in-memory search in a process of its own
    side_by_side: Window  # two at once

    @property
    def speedup(self) -> float:
        return self.two.per_minute / self.one.per_minute

    @property
    def side_by_side_slowdown(self) -> float:
        """How much longer a trial took with two in-memory searches at once than with one."""
        return self.side_by_side.mean_trial_s / self.alone.mean_trial_s

    @property
    def machine_ceiling(self) -> float:
        """Two workers' speedup if they did nothing but train."""
        return 2 / self.side_by_side_slowdown

    @property
    def window_difference_ms(self) -> float:
        """The store's search window beyond the in-memory one, a trial: the issue's first
        measure, which the machine's drift (tens of ms a trial) blurs."""
        return 1000 * (self.store.per_trial_s - self.memory.per_trial_s)

    @property
    def between_trials_ms(self) -> float:
        return 1000 * (self.store.between_trials_s - self.memory.between_trials_s)

    @property
    def sql_in_trials_ms(self) -> float:
        return 1000 * self.sql.in_trials_s / self.store.trials

    @property
    def sql_between_ms(self) -> float:
        return 1000 * self.sql.between_s / self.store.trials

    @property
    def overhead_ms(self) -> float:
        """The store's cost a trial as measured directly, not as a difference of windows: the
        time between trials beyond an in-memory study's, and the SQL answered while trials ran
        (a floor: the Python of the store's bookkeeping inside a trial, and the commits of the
        few writes that are transactions, are not counted)."""
        return self.between_trials_ms + self.sql_in_trials_ms


def headline(figures: Figures) -> dict[str, float]:
    """The figures the benchmark is judged by, with their targets (the closing JSON line)."""
    return {
        "overhead_ms": round(figures.overhead_ms, 1),
        "target_ms": TARGET_OVERHEAD_MS,
        "window_difference_ms": round(figures.window_difference_ms, 1),
        "two_workers_speedup": round(figures.speedup, 2),
        "target_speedup": TARGET_SPEEDUP,
        "machine_ceiling": round(figures.machine_ceiling, 2),
        "two_workers_busy": round(figures.two.busy(2), 3),
        "statements_per_trial": round(figures.sql.statements.total() / figures.store.trials, 1),
        "between_trials_ms": round(figures.between_trials_ms, 1),
        "sql_in_trials_ms": round(figures.sql_in_trials_ms, 1),
    }


def report(
    args: argparse.Namespace, figures: Figures, loads: tuple[float, float], elapsed_s: float
) -> str:
    one, two, memory, store = figures.one, figures.two, figures.memory, figures.store
    alone, side_by_side = figures.alone, figures.side_by_side
    speedup, overhead_ms = figures.speedup, figures.overhead_ms
    statements = figures.sql.statements
    per_trial = {kind: n / store.trials for kind, n in statements.items()}
    total_per_trial = sum(per_trial.values())
    lines = [
        "# Benchmark: workers on PostgreSQL (bench/workers.py)",
        "",
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by "
        f"`.venv/bin/python bench/workers.py{' --quick' if args.quick else ''}` "
        f"({elapsed_s:.0f} s).",
        "",
        f"Environment: lrtune {lrtune.__version__}, torch {torch.__version__} (1 thread per "
        f"worker), optuna {optuna.__version__}, SQLAlchemy {sa.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} logical CPUs shared by the workers and "
        f"PostgreSQL; 1-minute load average {loads[0]:.2f} at start, {loads[1]:.2f} at end.",
        "",
        f"Job: the registry's CNN on digits, SGD, batch 32, {args.trials} trials of "
        f"{JOB['search']['epochs']} epochs, random sampler, no pruning, no confirmation runs. "
        f"Each kind of run ran {args.rounds} times, alternated (1, 2, 2, 1 workers; memory, "
        "store, store, memory), on a fresh job each; the tables sum the runs of a kind.",
        "",
        "## Throughput: `lrtune worker --threads 1` processes on one job",
        "",
        "| Workers | Trials | Search window (s) | Trials a minute | Mean trial (s) |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {n} | {w.trials} | {w.seconds:.1f} | {w.per_minute:.1f} | {w.mean_trial_s:.2f} |"
            for n, w in ((1, one), (2, two))
        ),
        "",
        f"2 workers / 1 worker: **{speedup:.2f}x** (target >= {TARGET_SPEEDUP}x: "
        f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}). A trial took "
        f"{two.mean_trial_s / one.mean_trial_s:.2f}x as long with two workers as with one.",
        "",
        "The machine's ceiling, measured in the same run (alternated with the workers): the "
        "same search on an in-memory study, in a process of its own with one torch thread, no "
        "store and no queue, alone and two at once:",
        "",
        "| In-memory searches | Trials | Mean trial (s) |",
        "|---|---:|---:|",
        f"| one | {alone.trials} | {alone.mean_trial_s:.2f} |",
        f"| two at once | {side_by_side.trials} | {side_by_side.mean_trial_s:.2f} |",
        "",
        f"Two trainings side by side took {figures.side_by_side_slowdown:.2f}x as long a "
        f"trial: two workers that did nothing but train would reach "
        f"**{figures.machine_ceiling:.2f}x**. The workers spent {100 * one.busy(1):.1f}% (one) "
        f"and {100 * two.busy(2):.1f}% (two) of their search window inside trials; what two "
        "lose beyond that is the last trial of the job, which one worker runs while the other "
        "has none left, and the helper's start.",
        "",
        "## Per-trial overhead of the store and queue (one worker, in this process)",
        "",
        "| Run | Trials | Search window (s) | Per trial (ms) | Mean trial (ms) | Between (ms) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| in-memory Optuna study (`run_trials`) | {memory.trials} | {memory.seconds:.2f} | "
        f"{1000 * memory.per_trial_s:.0f} | {1000 * memory.mean_trial_s:.0f} | "
        f"{1000 * memory.between_trials_s:.1f} |",
        f"| job store on PostgreSQL (`Worker`) | {store.trials} | {store.seconds:.2f} | "
        f"{1000 * store.per_trial_s:.0f} | {1000 * store.mean_trial_s:.0f} | "
        f"{1000 * store.between_trials_s:.1f} |",
        "",
        f"Overhead, measured directly: **{overhead_ms:.1f} ms a trial** (target < "
        f"{TARGET_OVERHEAD_MS:.0f} ms: {'met' if overhead_ms < TARGET_OVERHEAD_MS else 'NOT met'}"
        f"): the time between trials beyond an in-memory study's "
        f"({figures.between_trials_ms:.1f} ms), and the SQL answered while a trial ran "
        f"({figures.sql_in_trials_ms:.1f} ms; the SQL between trials, "
        f"{figures.sql_between_ms:.1f} ms, is inside the first figure). It leaves out the "
        "Python of the store's bookkeeping inside a trial, and the commits of the writes that "
        "are transactions (a commit is not a statement the listeners time; on PostgreSQL the "
        "worker's hot writes are single statements that commit on their own, and are timed "
        "whole), so it is a floor.",
        "",
        f"The difference of the two search windows: {figures.window_difference_ms:.1f} ms a "
        "trial. Training time blurs it (see below); it is not the verdict.",
        "",
        f"SQL statements the worker sent during its search window: {total_per_trial:.1f} a trial.",
        "",
        "| Statement | Per trial | Answered in (ms a trial) |",
        "|---|---:|---:|",
        *(
            f"| `{kind}` | {n:.1f} | {1000 * figures.sql.statement_s[kind] / store.trials:.1f} |"
            for kind, n in sorted(per_trial.items(), key=lambda x: -x[1])
        ),
        "",
        "## What limits the figures",
        "",
        f"- **Two workers on two cores** share them with PostgreSQL and with each other: a "
        f"trial took {two.mean_trial_s / one.mean_trial_s:.2f}x as long with two workers, "
        f"and {figures.side_by_side_slowdown:.2f}x with two bare in-memory searches. The "
        "machine sets the ceiling, and it moves from run to run with the load of the machine's "
        "neighbours (the load average above): two trainings side by side have taken from 0.9x "
        "to 1.2x as long a trial on this machine. What lrtune's workers control is the share "
        "of the window they spend training, and that is what is left of the gap.",
        f"- **The window difference blurs.** It is a difference of two windows of "
        f"~{memory.mean_trial_s:.1f} s trials, and this shared machine's speed drifts by tens "
        "of ms a trial within a minute, more than the store costs: it has come out below zero, "
        "and at several times the direct figure, from one run to the next. The time between "
        f"trials is not blurred by training: {1000 * store.between_trials_s:.1f} ms a trial on "
        f"the store against {1000 * memory.between_trials_s:.1f} ms in memory (the finish's "
        "append, the progress report, the gate's lock and read, the next claim's append); "
        "inside a trial are the plan's append, the per-epoch check whether the job was "
        "cancelled, the trial's heartbeat (from Optuna's thread, beside the training) and the "
        "appends of reports held past half a second or eight epochs.",
        f"- **The studies live in a journal** (`lrtune._journal`: Optuna's `JournalStorage` "
        "on an append-only table). Each append is a statement that commits on its own and "
        "waits for the disk; a running trial's writes (its parameters, attributes and each "
        "epoch's report) wait up to half a second for its next append and go with it "
        "(`lrtune._journal_writes`), so a trial of short epochs is a few appends: its claim, "
        "its plan, one each half second, its finish "
        f"({_per_trial(per_trial, 'INSERT lrtune_optuna_log'):.1f} a trial here; 17.5 before, "
        "one per write). A read is answered from memory after one SELECT of the operations "
        f"appended since ({_per_trial(per_trial, 'SELECT lrtune_optuna_log'):.1f} a trial): "
        "the reads that decide one thing together share one (`one_read`: the gate's count of "
        "running units and the pop after it; the progress report's counts and best value and "
        "the failure check), and a read of a finished trial, or of one this process runs, sends "
        "none. Before the journal (Optuna's RDB storage) a trial took 79 statements, 57 of them "
        "SELECTs, and 98.6 ms of overhead.",
        "- **The job store's part** goes on the worker's one held connection too (no checkout "
        "and ping a statement): the per-epoch check whether the job was cancelled, at most "
        "twice a second, and the progress report, a read of the job's row and one statement "
        "that updates it and inserts its event "
        f"({_per_trial(per_trial, 'SELECT lrtune_jobs'):.1f} `SELECT lrtune_jobs` a trial hold "
        "both's reads). The gate's lock (`pg_advisory_xact_lock`) is the one transaction left "
        "between trials.",
        "- **Round trips, not rows, are the cost**: each statement waits for PostgreSQL, which "
        "runs on the same two cores, and a write also waits for its commit to reach the disk "
        "(the table above has each kind's time). When other work keeps a core busy, every "
        "round trip also waits for a core: the overhead and the two-worker speedup move with "
        "the load average above more than with anything the store does.",
        "",
    ]
    return "\n".join(lines)


def _per_trial(per_trial: dict[str, float], kind: str) -> float:
    return per_trial.get(kind, 0.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC_PATH.name}")
    parser.add_argument("--quick", action="store_true", help="4 trials: a smoke test")
    parser.add_argument("--trials", type=int, default=24, help="trials per job (default 24)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs of each kind, alternated (default 2)"
    )
    parser.add_argument(
        "--database",
        default=os.environ.get("LRTUNE_BENCH_POSTGRES_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL URL whose server gets the benchmark's own scratch database",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.rounds = 4, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def log(message: str) -> None:
        print(f"[bench/workers] {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    load_start = os.getloadavg()[0]
    url = fresh_database(args.database)
    spec = job_spec(args.trials)
    # Other work on the machine comes and goes: the runs compared alternate (1, 2, 2, 1 workers;
    # memory, store, store, memory), so that a burst of load weighs on both sides alike.
    runs: dict[str, list[Window]] = collections.defaultdict(list)
    sql = StoreSql()
    for round_ in range(args.rounds):
        for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
            runs[f"{workers} workers"].append(run_worker_processes(url, spec, workers, log))
            runs[f"{workers} in-memory"].append(run_in_memory_processes(spec, workers))
            log(
                f"{workers} in-memory process(es): {runs[f'{workers} in-memory'][-1].trials} trials"
            )
    for round_ in range(args.rounds):
        for where in ("memory", "store") if round_ % 2 == 0 else ("store", "memory"):
            if where == "memory":
                runs[where].append(run_in_memory(spec))
            else:
                window, sent = run_in_store(url, spec)
                runs[where].append(window)
                sql += sent
            log(f"{where}: {runs[where][-1].trials} trials in {runs[where][-1].seconds:.1f} s")
    keys = ("1 workers", "2 workers", "memory", "store", "1 in-memory", "2 in-memory")
    one, two, memory, store, alone, side_by_side = (Window.combined(runs[key]) for key in keys)
    figures = Figures(one, two, memory, store, sql, alone, side_by_side)
    loads = (load_start, os.getloadavg()[0])
    text = report(args, figures, loads, time.monotonic() - started)
    print(text)
    if args.write:
        DOC_PATH.write_text(text)
        log(f"wrote {DOC_PATH.relative_to(REPO)}")
    print(json.dumps(headline(figures)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
