"""What a worker's progress writes cost the range test: the same sweep with and without them.

On the wine/logreg job (2 seeds, ``--steps`` steps each, default 1500, no divergence stop, so
every round takes every step), times :func:`lrtune.tuner.range_test` with:

1. no step callback;
2. the worker's callback, :class:`lrtune.workers.reporting.RangeTestProgress` with its default
   throttle (one write per ``PROGRESS_INTERVAL_S`` = 0.5 s) to a job store, under a lease;
3. the same callback unthrottled (a write at every step): the cost of one write, and the
   reason for the throttle.

Each store is a fresh SQLite file, and with ``--postgres URL`` also that PostgreSQL database
(its lrtune schema must be current: ``lrtune db upgrade --database URL``). Every round
submits and claims a fresh job, so every write moves progress on (a report that moves
nothing writes nothing). One warm-up round, then ``--repeats`` rounds (default 5) in rotating
order; medians are reported. Torch runs on 1 thread.

Run:
    .venv/bin/python bench/progress_writes.py                  # SQLite, ~1 min on 2 cores
    .venv/bin/python bench/progress_writes.py --postgres postgresql+psycopg://postgres@127.0.0.1/lrtune_bench
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lrtune.jobs import JobStore, upgrade
from lrtune.spec import JobSpec
from lrtune.training import TrainingSetup
from lrtune.tuner import range_test
from lrtune.workers.reporting import RangeTestProgress


def _job(steps: int) -> JobSpec:
    return JobSpec.model_validate(
        {
            "model": {"name": "logreg"},
            "dataset": {"name": "wine"},
            "batch_size": 32,
            "range_test": {"seeds": 2, "num_iter": steps, "diverge_threshold": 1e9},
        }
    )


def _timed(setup: TrainingSetup, callback: Callable[..., None] | None) -> float:
    started = time.perf_counter()
    range_test(setup, progress=False, callback=callback)
    return time.perf_counter() - started


def _progress_callback(store: JobStore, spec: JobSpec, interval_s: float) -> RangeTestProgress:
    store.submit(spec)
    lease = store.claim("bench", lease_s=3600)
    assert lease is not None
    return RangeTestProgress(store, lease, spec, interval_s=interval_s)


def _progress_events(store: JobStore, job_id: str) -> int:
    count, after = 0, 0
    while page := store.events(job_id, after_id=after, limit=500):
        count += sum(event.kind == "progress" for event in page)
        after = page[-1].id
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres", metavar="URL", help="also time writes to this database")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = _job(args.steps)
    setup = TrainingSetup.from_spec(spec, "cpu")
    urls = {"SQLite": f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"}
    if args.postgres:
        urls["PostgreSQL"] = args.postgres
    for url in urls.values():
        upgrade(url)
    stores = {name: JobStore(url) for name, url in urls.items()}

    contenders: dict[str, Callable[[], Callable[..., None] | None]] = {"no callback": lambda: None}
    for name, store in stores.items():
        contenders[f"{name}, throttled (0.5 s)"] = lambda s=store: _progress_callback(s, spec, 0.5)
        contenders[f"{name}, every step"] = lambda s=store: _progress_callback(s, spec, 0.0)
    for make in contenders.values():  # warm-up
        _timed(setup, make())
    times: dict[str, list[float]] = {name: [] for name in contenders}
    writes: dict[str, int] = {}
    names = list(contenders)
    for round_ in range(args.repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            callback = contenders[name]()
            times[name].append(_timed(setup, callback))
            if isinstance(callback, RangeTestProgress):
                writes[name] = _progress_events(callback.store, callback.lease.job_id)

    base = statistics.median(times["no callback"])
    steps = args.steps
    print("## Range-test progress writes (bench/progress_writes.py)\n")
    print(
        f"wine/logreg, 2 seeds x {steps} steps (vectorised), 1 torch thread, median of "
        f"{args.repeats} rounds; load average at start {os.getloadavg()[0]:.1f}.\n"
    )
    print("| range test | median s | vs no callback | progress writes | per write |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        median = statistics.median(times[name])
        count = writes.get(name)
        per_write = "" if not count else f"{(median - base) / count * 1000:.2f} ms"
        shown = "" if count is None else str(count)
        print(f"| {name} | {median:.3f} | {median / base - 1:+.1%} | {shown} | {per_write} |")


if __name__ == "__main__":
    main()
