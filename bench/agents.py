"""Agents over HTTP against a database worker: what a unit's trip through the service costs.

The same job (a small task: a linear classifier on 192 rows, 5 batches an epoch, so training
is a few milliseconds and the protocol is what shows), on the same PostgreSQL job store, run
side by side in one process, one arm after the other for ``--rounds`` rounds:

- **worker**: a :class:`lrtune.workers.loop.Worker` that loaded the task, on the store;
- **agent**: a :class:`lrtune.agent.Agent` with the same task, against the service (uvicorn on
  loopback, the app of ``lrtune serve --no-worker``, in a thread of this process), which hands
  it units, takes a report each epoch and the completion (:mod:`lrtune.workers.broker`).

Each arm's search window (first search trial's start to the last one's end, from the trials'
own times in Optuna's tables) divided by its search trials is the time a trial; the agent's
extra time a trial divided by the epochs a trial reports is the cost of an epoch report, what
an agent adds for each epoch it trains. Target: under 20 ms more per epoch report.

Both arms share the 2 cores with PostgreSQL (and, for the agent, the API's threads): compare
the ratio from one run, not absolute times across runs.

Run:
    .venv/bin/python bench/agents.py            # ~1-2 min: Markdown on stdout
    .venv/bin/python bench/agents.py --write    # ... and write docs/benchmark_agents.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import optuna
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the fixture task and the loopback server helper
sys.path.insert(0, str(REPO / "bench"))

from live_api import serve  # noqa: E402

from lrtune.agent import Agent  # noqa: E402
from lrtune.api.config import ApiSettings  # noqa: E402
from lrtune.api.main import create_app  # noqa: E402
from lrtune.client import Client  # noqa: E402
from lrtune.jobs import JobStatus, JobStore  # noqa: E402
from lrtune.spec import JobSpec  # noqa: E402
from lrtune.workers.loop import Worker  # noqa: E402
from lrtune.workers.tasks import load_named  # noqa: E402
from workers import fresh_database, search_window  # noqa: E402

DOC_PATH = REPO / "docs" / "benchmark_agents.md"
TASK = "task_fixtures:blobs"
EPOCHS = 6
TARGET_MS = 20.0
ADMIN_URL = os.environ.get(
    "LRTUNE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def job(trials: int) -> dict:
    """Every trial trains every epoch (no pruning) and nothing is confirmed: the search is all
    there is to time."""
    return {
        "task": {"name": "Blobs"},
        "range_test": {"seeds": 2, "num_iter": 30},
        "search": {
            "n_trials": trials,
            "epochs": EPOCHS,
            "pruner": "none",
            "families": ["constant", "cosine"],
            "confirm_seeds": 0,
            "max_confirm_seeds": 0,
            "baselines": [],
        },
    }


def run_worker(store: JobStore, trials: int) -> float:
    """Seconds a trial, a worker on the store running the job."""
    worker = Worker(store, device="cpu", worker_id="bench-worker", tasks=load_named([TASK]))
    with worker._presence():
        job_id = store.submit(JobSpec.model_validate(job(trials)), reuse=False).id
    worker.run(once=True)
    return _per_trial(store, job_id)


class TimedAgent(Agent):
    """An agent that times each request it sends, by what it is for."""

    calls: ClassVar[dict[str, list[float]]] = {}

    def _call(self, method: str, path: str, **kwargs: object) -> object:
        kind = path.rsplit("/", 1)[-1] or method.lower()
        start = time.perf_counter()
        try:
            return super()._call(method, path, **kwargs)
        finally:
            self.calls.setdefault(kind, []).append(1000 * (time.perf_counter() - start))


def run_agent(store: JobStore, url: str, trials: int) -> float:
    """Seconds a trial, an agent over HTTP running the job."""
    agent = TimedAgent(
        Client(url), load_named([TASK]), device="cpu", once=True, agent_id="bench-agent"
    )
    with agent.registered():
        job_id = Client(url).submit(job(trials), reuse=False).id
    agent.run()
    return _per_trial(store, job_id)


def _per_trial(store: JobStore, job_id: str) -> float:
    record = store.get(job_id)
    if record.status is not JobStatus.SUCCEEDED:
        raise RuntimeError(f"job {job_id} ended {record.status.value}: {record.error}")
    storage = optuna.storages.RDBStorage(store.url)
    study = optuna.load_study(study_name=record.study_name, storage=storage)
    return search_window(study).per_trial_s


def report(rows: list[tuple[float, float]], trials: int, load: tuple[float, float]) -> str:
    worker = statistics.median(w for w, _ in rows)
    agent = statistics.median(a for _, a in rows)
    per_epoch_ms = 1000 * (agent - worker) / EPOCHS
    met = per_epoch_ms < TARGET_MS
    lines = [
        "# Agents: the cost of a unit's trip through the service",
        "",
        f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `bench/agents.py` on "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 torch "
        f"thread; load average {load[0]:.1f} at the start, {load[1]:.1f} at the end.",
        "",
        f"One job of {trials} search trials of {EPOCHS} epochs each (a linear classifier on 192 "
        "rows, 5 batches an epoch: milliseconds of training, so the protocol shows), on "
        "PostgreSQL, run by a database worker and by an agent over HTTP (uvicorn on "
        "loopback), one after the other, "
        f"{len(rows)} rounds; seconds a trial from the trials' own times.",
        "",
        "| round | worker s/trial | agent s/trial | agent extra ms/trial |",
        "|---:|---:|---:|---:|",
        *(
            f"| {i + 1} | {w:.3f} | {a:.3f} | {1000 * (a - w):.1f} |"
            for i, (w, a) in enumerate(rows)
        ),
        f"| median | {worker:.3f} | {agent:.3f} | {1000 * (agent - worker):.1f} |",
        "",
        "The agent's requests, timed at the agent (milliseconds, median over every request):",
        "",
        "| request | count | median ms | p90 ms |",
        "|---|---:|---:|---:|",
        *(
            f"| `{kind}` | {len(times)} | {statistics.median(times):.1f} | "
            f"{sorted(times)[int(0.9 * (len(times) - 1))]:.1f} |"
            for kind, times in sorted(TimedAgent.calls.items())
        ),
        "",
        f"**An epoch report costs {per_epoch_ms:.1f} ms more on an agent than on a worker** "
        f"(the median extra time a trial over its {EPOCHS} epoch reports): the target, under "
        f"{TARGET_MS:.0f} ms, is {'met' if met else 'not met'}.",
        "",
        "What limits it: each report is an HTTP request that the service answers with what a "
        "worker does in-process (Optuna's report and pruner, the trial's heartbeat, a read of "
        "the job), plus the trial's read-back that Optuna's cached storage needs before it "
        "writes; the hand-out and the completion add two requests a trial (planning the unit "
        "runs the sampler on the service). On this machine the service, PostgreSQL and the "
        "agent share 2 cores, so the figure includes their contention; on a real fleet the "
        "agent's GPU box adds its network round trip to each report.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC_PATH.name}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load_start = os.getloadavg()[0]
    url = fresh_database(ADMIN_URL)
    store = JobStore(url)
    rows = []
    with serve(create_app(ApiSettings(database_url=url), store=store)) as base:
        for _ in range(args.rounds):
            rows.append((run_worker(store, args.trials), run_agent(store, base, args.trials)))
    text = report(rows, args.trials, (load_start, os.getloadavg()[0]))
    print(text)
    if args.write:
        DOC_PATH.write_text(text)
        print(f"[bench/agents] wrote {DOC_PATH.relative_to(REPO)}", file=sys.stderr)
    extra_ms = 1000 * (
        statistics.median(a for _, a in rows) - statistics.median(w for w, _ in rows)
    )
    summary = {
        "report_overhead_ms": round(extra_ms / EPOCHS, 2),
        "target_ms": TARGET_MS,
        "met": extra_ms / EPOCHS < TARGET_MS,
        "worker_s_per_trial": round(statistics.median(w for w, _ in rows), 4),
        "agent_s_per_trial": round(statistics.median(a for _, a in rows), 4),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
