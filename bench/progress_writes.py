"""What a worker's progress writes cost the range test: the same sweep with and without them.

On the wine/logreg job (2 seeds, ``--steps`` steps each, default 1500, no divergence stop, so
every round takes every step), times :func:`lrtune.tuner.range_test` with:

1. no step callback;
2. the worker's callback, :class:`lrtune.workers.reporting.RangeTestProgress`, whose thread
   writes the steps done to a job store, under a lease, every ``PROGRESS_INTERVAL_S`` (0.5 s);
3. the same with an interval of 1 ms (the thread writes as fast as the database takes it): how
   much a stream of writes beside the sweep costs it, and how long one write takes.

Each store is a fresh SQLite file, and with ``--postgres URL`` also that PostgreSQL database
(its lrtune schema must be current: ``lrtune db upgrade --database URL``). Every round
submits and claims a fresh job, so every write moves progress on (a report that moves
nothing writes nothing). One warm-up round, then ``--repeats`` rounds (default 5) in rotating
order; medians are reported. Torch runs on 1 thread.

Reported per contender: wall seconds (noisy on a shared machine), the CPU seconds of the thread
that runs the sweep (what the step callback costs the sweep itself; steadier under load), and
the process's CPU seconds (adding the reporting thread's work for its writes).

Run:
    .venv/bin/python bench/progress_writes.py                  # SQLite, ~1 min on 2 cores
    .venv/bin/python bench/progress_writes.py --throttled-only --repeats 15
    .venv/bin/python bench/progress_writes.py --postgres postgresql+psycopg://postgres@127.0.0.1/lrtune_bench
"""

from __future__ import annotations

import argparse
import contextlib
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


def _timed(setup: TrainingSetup, callback: RangeTestProgress | None) -> tuple[float, ...]:
    """One range test's wall seconds, the sweep thread's CPU seconds and the process's."""
    started = time.perf_counter(), time.thread_time(), time.process_time()
    with callback if callback is not None else contextlib.nullcontext():
        range_test(setup, progress=False, callback=callback)
    ended = time.perf_counter(), time.thread_time(), time.process_time()
    return tuple(end - start for start, end in zip(started, ended, strict=True))


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
    parser.add_argument(
        "--throttled-only", action="store_true", help="skip the nonstop-writing rounds"
    )
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

    contenders: dict[str, Callable[[], RangeTestProgress | None]] = {"no callback": lambda: None}
    for name, store in stores.items():
        contenders[f"{name}, every 0.5 s"] = lambda s=store: _progress_callback(s, spec, 0.5)
        if not args.throttled_only:
            contenders[f"{name}, nonstop"] = lambda s=store: _progress_callback(s, spec, 0.001)
    for make in contenders.values():  # warm-up
        _timed(setup, make())
    times: dict[str, list[tuple[float, ...]]] = {name: [] for name in contenders}
    writes: dict[str, int] = {}
    names = list(contenders)
    for round_ in range(args.repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            callback = contenders[name]()
            times[name].append(_timed(setup, callback))
            if isinstance(callback, RangeTestProgress):
                writes[name] = _progress_events(callback.store, callback.lease.job_id)

    def median(name: str, k: int) -> float:
        return statistics.median(t[k] for t in times[name])

    steps = args.steps
    print("## Range-test progress writes (bench/progress_writes.py)\n")
    print(
        f"wine/logreg, 2 seeds x {steps} steps (vectorised), 1 torch thread, median of "
        f"{args.repeats} rounds; load average at start {os.getloadavg()[0]:.1f}.\n"
    )
    print(
        "| range test | wall s | sweep thread CPU s | vs no callback | process CPU s "
        "| vs no callback | progress writes | process CPU per write |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        wall, sweep, cpu = (median(name, k) for k in range(3))
        count = writes.get(name)
        extra = cpu - median("no callback", 2)
        per_write = "" if not count else f"{extra / count * 1000:.2f} ms"
        print(
            f"| {name} | {wall:.3f} | {sweep:.3f} | {sweep / median('no callback', 1) - 1:+.1%} "
            f"| {cpu:.3f} | {cpu / median('no callback', 2) - 1:+.1%} | "
            f"{'' if count is None else count} | {per_write} |"
        )


if __name__ == "__main__":
    main()
