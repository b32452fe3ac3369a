"""The Task path on the built-in MLP against the built-in loop: seconds per epoch of ``train``.

What it measures, in one run, on one job shape (the registry's MLP 64-128-10 over
scikit-learn's digits, SGD with momentum 0.9, batch 64, a constant LR, no checkpoint):

- **(a) built-in**: the registry job, ``TrainingSetup.from_spec(JobSpec(model mlp, dataset
  digits, batch_size 64, optimizer sgd))``: a :class:`lrtune.registry_task.RegistryTask`
  (one checkpointed generator's order, batches sliced by ``LoaderOrderRows``, the dataset's
  own evaluate);
- **(b) task**: the same model, data, batch size and optimizer written as a user's
  :class:`lrtune.task.TaskBase` subclass (``DigitsMLP``): the MLP built as the registry builds
  it (same layers, same init for the seed), ``train_batches`` from a generator seeded per
  (seed, epoch) over the same tensors, TaskBase's default ``loss`` and ``evaluate``; it goes
  through the generic path (``EpochBatches``, ``checked_scores``);
- **(c) own loop**: (b) with its own ``train_epoch`` calling ``on_step(loss)`` after each
  ``optimizer.step()`` (``_task_epoch``).

Each arm's ``train(setup, constant, base_lr, --epochs)`` is timed whole (model and optimizer
build, every epoch's training and evaluation) and divided by its epochs. The arms run
interleaved, round after round (the order rotated each round), after one warm-up round; each
arm's figure is its median over ``--rounds``, and the headline ratios are the medians of the
per-round ratios (a round's arms run within a second of each other, so a slow spell of the
shared machine hits them alike). Target: (b)/(a) and (c)/(a) <= 1.03. Torch runs on one
thread. As a floor, a bare hand-written loop of the same steps (no lrtune) is timed too.

Sanity checks, printed with the table: (a) and (b) start from the same weights, and every
arm's final validation accuracy (they train on different batch orders, so they are close,
not equal).

Run:
    .venv/bin/python bench/tasks.py            # ~1-2 min on 2 cores: Markdown on stdout
    .venv/bin/python bench/tasks.py --write    # ... and write docs/benchmark_tasks.md
    .venv/bin/python bench/tasks.py --quick    # a smoke test (10 rounds, ~10 s)

The last line of stdout is one JSON object with the headline figures and the target.
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

import lrtune
from lrtune.registry import load_dataset
from lrtune.schedules import parse_schedule
from lrtune.spec import JobSpec
from lrtune.task import TaskBase, _on_model_device, task_job
from lrtune.training import TrainingSetup, train

REPO = Path(__file__).resolve().parents[1]
DOC_PATH = REPO / "docs" / "benchmark_tasks.md"
TARGET = 1.03  # a task's seconds per epoch over the built-in job's
BATCH_SIZE = 64
BASE_LR = 0.05
SEED = 0
JOB: dict[str, Any] = {
    "model": {"name": "mlp"},
    "dataset": {"name": "digits"},
    "batch_size": BATCH_SIZE,
    "optimizer": {"name": "sgd"},
    "seed": SEED,
    "device": "cpu",
}


class DigitsMLP(TaskBase):
    """The registry's ``mlp`` on ``digits`` as a user would write it (arm b)."""

    metric, direction = "accuracy", "maximize"

    def __init__(self) -> None:
        bundle = load_dataset("digits", {})  # the registry job's split: the same tensors
        self.x, self.y = bundle.train.tensors
        self.val_x, self.val_y = bundle.val.tensors

    def build_model(self, seed: int, device: torch.device) -> nn.Module:
        # As the registry's mlp draws its weights: torch's CPU generator at ``seed``, restored
        # afterwards (``torch.manual_seed`` would also do, at ~0.1 ms more a run: it seeds
        # every device's generator).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        return model.to(device)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=BASE_LR, momentum=0.9)

    def train_batches(self, seed: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(self.y), generator=generator)
        return [(self.x[rows], self.y[rows]) for rows in order.split(BATCH_SIZE)]

    def val_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.val_x, self.val_y)]


class DigitsMLPLazy(DigitsMLP):
    """Arm (b) with ``train_batches`` a generator (a diagnostic): batches built as they are read."""

    name = "DigitsMLP"

    def train_batches(self, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(len(self.y), generator=generator)
        for rows in order.split(BATCH_SIZE):
            yield self.x[rows], self.y[rows]


class DigitsMLPOwnLoop(DigitsMLP):
    """Arm (b) with its own loop (arm c): ``on_step(loss)`` after each step."""

    name = "DigitsMLP"  # the same task, trained by its own loop

    def train_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        on_step: Callable[..., None],
        *,
        seed: int,
        epoch: int,
        device: torch.device,
    ) -> None:
        for inputs, targets in self.train_batches(seed, epoch):
            loss = functional.cross_entropy(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            on_step(loss)


@dataclass
class Arm:
    key: str
    label: str
    run: Callable[[], dict[str, float]]  # one timed run: its final epoch's record
    seconds: list[float] = field(default_factory=list)  # wall seconds per epoch, per round
    cpu: list[float] = field(default_factory=list)  # this thread's CPU seconds per epoch
    record: dict[str, float] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def make_arms(epochs: int) -> tuple[list[Arm], dict[str, Any]]:
    schedule = parse_schedule({"family": "constant"})
    builtin = TrainingSetup.from_spec(JobSpec.model_validate(JOB))
    task, lazy, own = DigitsMLP(), DigitsMLPLazy(), DigitsMLPOwnLoop()
    task_setup, lazy_setup, own_setup = (
        TrainingSetup.from_spec(task_job(t, seed=SEED, device="cpu"), task=t)
        for t in (task, lazy, own)
    )

    def runner(setup: TrainingSetup) -> Callable[[], dict[str, float]]:
        def run() -> dict[str, float]:
            result = train(setup, schedule, BASE_LR, epochs)
            if result.status != "completed":
                raise SystemExit(f"{setup.task.name}: run ended {result.status}: {result.reason}")
            return result.epochs[-1]

        return run

    def bare() -> dict[str, float]:
        """The same steps by hand: no lrtune, no per-step LR record, one evaluation an epoch."""
        model = task.build_model(SEED, torch.device("cpu"))
        optimizer = task.build_optimizer(model)
        torch.manual_seed(SEED)
        correct = 0.0
        for epoch in range(epochs):
            model.train()
            for inputs, targets in task.train_batches(SEED, epoch):
                loss = functional.cross_entropy(model(inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            model.eval()
            with torch.no_grad():
                correct = float((model(task.val_x).argmax(1) == task.val_y).float().mean())
        return {"accuracy": correct}

    same_init = all(
        torch.equal(p, q)
        for p, q in zip(
            builtin.build_model().state_dict().values(),
            task_setup.build_model().state_dict().values(),
            strict=True,
        )
    )
    arms = [
        Arm("builtin", "(a) built-in job (`RegistryTask`)", runner(builtin)),
        Arm("task", "(b) `TaskBase` subclass, default loss/evaluate", runner(task_setup)),
        Arm("own_loop", "(c) (b) with its own `train_epoch` + `on_step`", runner(own_setup)),
        Arm("lazy", "(b) with `train_batches` a generator (diagnostic)", runner(lazy_setup)),
        Arm("bare", "bare hand-written loop (no lrtune; the floor)", bare),
    ]
    facts = {
        "same_init": same_init,
        "steps_per_epoch": (builtin.steps_per_epoch, task_setup.steps_per_epoch),
        "train_rows": len(task.y),
        "val_rows": len(task.val_y),
        "setups": (builtin, task_setup),
    }
    return arms, facts


def measure(arms: list[Arm], rounds: int, epochs: int, log: Callable[[str], None]) -> None:
    for arm in arms:  # warm-up: first-call costs (kernels, caches, lazy imports) stay out
        arm.record = arm.run()
    for round_ in range(rounds):
        shift = round_ % len(arms)
        for arm in arms[shift:] + arms[:shift]:
            wall, cpu = time.perf_counter(), time.thread_time()
            arm.record = arm.run()
            arm.cpu.append((time.thread_time() - cpu) / epochs)
            arm.seconds.append((time.perf_counter() - wall) / epochs)
        log(
            f"round {round_ + 1}/{rounds}: "
            + ", ".join(f"{arm.key} {1000 * arm.seconds[-1]:.1f} ms" for arm in arms)
        )


def components(arms_setups: tuple[Any, Any], repeats: int) -> list[tuple[str, float, int]]:
    """Microseconds a call of the parts where (b)'s epoch differs from (a)'s, and calls an epoch:
    ``(what, us a call over its counterpart, calls an epoch)``, medians of interleaved repeats."""
    builtin, task_setup = arms_setups
    task, registry = task_setup.task, builtin.task
    cpu = torch.device("cpu")
    model = task.build_model(SEED, cpu)
    batch = task.train_batches(SEED, 0)[0]
    steps = task_setup.steps_per_epoch
    parts: dict[str, tuple[Callable[[], Any], int]] = {
        "plain": (lambda: functional.cross_entropy(model(batch[0]), batch[1]), 400),
        "task_loss": (lambda: task.loss(model, batch), 400),
        "registry_loss": (lambda: registry.loss(model, batch), 400),
        "device": (lambda: _on_model_device(model, batch), 4000),
        "batches": (lambda: task.train_batches(SEED, 0), 40),
        "task_eval": (lambda: task.evaluate(model, cpu), 40),
        "registry_eval": (lambda: registry.evaluate(model, cpu), 40),
    }
    times: dict[str, list[float]] = {key: [] for key in parts}
    for _ in range(repeats):
        for key, (call, number) in parts.items():
            start = time.perf_counter()
            for _ in range(number):
                call()
            times[key].append(1e6 * (time.perf_counter() - start) / number)
    us = {key: statistics.median(values) for key, values in times.items()}
    return [
        (
            "`TaskBase.loss` over `RegistryTask.loss` (a step)",
            us["task_loss"] - us["registry_loss"],
            steps,
        ),
        (
            "of which `_on_model_device` (moves the batch only when it is elsewhere)",
            us["device"],
            steps,
        ),
        (
            "`RegistryTask.loss` over a plain `cross_entropy(model(x), y)`",
            us["registry_loss"] - us["plain"],
            steps,
        ),
        (
            "`TaskBase.evaluate` over `RegistryTask.evaluate` (an epoch)",
            us["task_eval"] - us["registry_eval"],
            1,
        ),
    ]


def paired_ratio(arm: Arm, base: Arm, values: str = "seconds") -> float:
    """The median over rounds of ``arm``'s per-epoch time over ``base``'s in the same round."""
    ours, theirs = getattr(arm, values), getattr(base, values)
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def report(
    args: argparse.Namespace,
    arms: list[Arm],
    facts: dict[str, Any],
    parts: list[tuple[str, float, int]],
    loads: tuple[float, float],
    elapsed: float,
) -> tuple[str, dict[str, Any]]:
    by_key = {arm.key: arm for arm in arms}
    base = by_key["builtin"]
    ratios = {key: paired_ratio(arm, base) for key, arm in by_key.items()}
    cpu_ratios = {key: paired_ratio(arm, base, "cpu") for key, arm in by_key.items()}
    task_ratio, own_ratio = ratios["task"], ratios["own_loop"]
    met = task_ratio <= TARGET and own_ratio <= TARGET
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    acc = {key: arm.record.get("accuracy", float("nan")) for key, arm in by_key.items()}
    steps = facts["steps_per_epoch"][0]
    per_step_us = {
        key: 1e6 * (arm.median - by_key["bare"].median) / steps for key, arm in by_key.items()
    }
    lines = [
        "# Benchmark: the Task path against the built-in loop (bench/tasks.py)",
        "",
        f"Measured {now} by `.venv/bin/python bench/tasks.py` ({elapsed:.0f} s).",
        "",
        f"Environment: lrtune {lrtune.__version__}, torch {torch.__version__} (1 thread), "
        f"Python {platform.python_version()}, {os.cpu_count()} logical CPUs shared with other "
        f"work; 1-minute load average {loads[0]:.2f} at start, {loads[1]:.2f} at end.",
        "",
        f"Job: the registry's MLP 64-128-10 (ReLU) on digits ({facts['train_rows']} train / "
        f"{facts['val_rows']} validation rows), SGD (momentum 0.9) at a constant LR "
        f"{BASE_LR}, batch {BATCH_SIZE} ({steps} steps an epoch), {args.epochs} epochs a run, "
        "no checkpoint. Each arm's `train(...)` is timed whole (model and optimizer build, "
        "training, one evaluation an epoch) and divided by its epochs; the arms run "
        f"interleaved, the order rotated each round, {args.rounds} rounds after a warm-up. "
        "Per-epoch times are medians over the rounds; ratios are medians of the per-round "
        "ratios to (a).",
        "",
        "- (a) the built-in job: `TrainingSetup.from_spec(JobSpec(model mlp, dataset digits, "
        "batch_size 64, optimizer sgd))`, a `RegistryTask` (one checkpointed generator's "
        "order, batches sliced by `LoaderOrderRows`, the dataset's own evaluate);",
        "- (b) the same model (built as the registry builds it: "
        f"same initial weights: {'yes' if facts['same_init'] else 'NO'}), data, batch size and "
        "optimizer as a user's `TaskBase` subclass: `train_batches(seed, epoch)` from a "
        "generator seeded per (seed, epoch) over the same tensors, TaskBase's default `loss` "
        "and `evaluate` (`EpochBatches`, `checked_scores`);",
        "- (c) (b) with its own `train_epoch`, calling `on_step(loss)` after each step "
        "(`_task_epoch`);",
        "- a bare hand-written loop of the same steps and one evaluation an epoch, no lrtune "
        "(the floor; not a target).",
        "",
        "| Arm | ms / epoch (median) | min-max | CPU ms / epoch | / (a) wall | / (a) CPU "
        "| over the floor, us / step | final val accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {arm.label} | {1000 * arm.median:.1f} | {1000 * min(arm.seconds):.1f}-"
            f"{1000 * max(arm.seconds):.1f} | {1000 * statistics.median(arm.cpu):.1f} | "
            f"{ratios[arm.key]:.3f} | {cpu_ratios[arm.key]:.3f} | "
            f"{per_step_us[arm.key]:.0f} | {acc[arm.key]:.4f} |"
            for arm in arms
        ),
        "",
        f"(b) / (a): **{task_ratio:.3f}**; (c) / (a): **{own_ratio:.3f}** "
        f"(target <= {TARGET}: {'met' if met else 'NOT met'}).",
        "",
        "The arms train on different batch orders ((a) one generator for the run, (b) and (c) "
        "one per epoch), so their accuracies are close, not equal.",
        "",
        "## Where (b)'s epoch differs from (a)'s",
        "",
        "Each part timed alone (medians of interleaved repeats, same thread), as a share of "
        "(a)'s epoch:",
        "",
        "| Part | us a call | calls an epoch | us an epoch | % of (a)'s epoch |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {what} | {us:.1f} | {calls} | {us * calls:.0f} | "
            f"{100 * us * calls / (1e6 * base.median):.1f} |"
            for what, us, calls in parts
        ),
        "",
        "## What limits the figures",
        "",
        f"- **The steps are tiny** (a 64-128-10 MLP on 64 rows): the bare loop takes "
        f"{1000 * by_key['bare'].median:.1f} ms an epoch, so a few microseconds of Python a "
        "step show. Over that floor, lrtune's own loop ((a), `_train_epoch`) records each "
        "step's LR (`run.lr_steps`), steps the schedule driver, looks at the stop clock and "
        "keeps the loss sum and its finiteness on the device (three small tensor ops a step), "
        "and `RegistryTask.loss` goes through `move_to`, `batch_loss` and a null autocast "
        "context (the table above). (c)'s own loop skips the loss sum, the finiteness check "
        "and the loss wrapper (`_task_epoch`'s `on_step` keeps a list of detached losses, "
        "stacked and read once an epoch), which is why it is at or under (a).",
        "- **What (b) adds is in lrtune's generic path, not in the task's code** (the parts "
        "table). A first run of this benchmark measured (b) at 1.04-1.05x and found three "
        "costs, since removed: `_train` built epoch 0's batches again after every epoch for "
        "`prepare_to_evaluate` (now only for a schedule-free optimizer), `TaskBase.loss` "
        "walked every batch with `move_to` (now it moves a batch only when it is on another "
        "device), and `TaskBase.evaluate` ran the model twice per validation batch (now once "
        "with the default loss). A generator `train_batches` (the diagnostic arm, "
        f"{ratios['lazy']:.3f}) and a list ((b), {task_ratio:.3f}) now cost the same. "
        "`EpochBatches` and `checked_scores` cost a few microseconds an epoch.",
        "- On a shared 2-core machine the per-epoch times move with the load (see min-max): "
        "the paired per-round ratios cancel most of it, not all (runs of a few tens of "
        "milliseconds; repeated runs of this benchmark put the headline ratios within about "
        "+-2% of each other). The CPU-time ratios (this thread's CPU seconds) are a "
        "cross-check; on a virtual machine they still count time the host took away.",
        "",
    ]
    summary = {
        "task_over_builtin": round(task_ratio, 3),
        "own_loop_over_builtin": round(own_ratio, 3),
        "target": TARGET,
        "met": met,
        "builtin_ms_per_epoch": round(1000 * base.median, 2),
        "val_accuracy": {key: round(value, 4) for key, value in acc.items()},
    }
    return "\n".join(lines), summary


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DOC_PATH.name}")
    parser.add_argument("--quick", action="store_true", help="10 rounds: a smoke test")
    parser.add_argument("--rounds", type=int, default=150, help="timed rounds (default 150)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs a run (default 5)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 10
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)

    def log(message: str) -> None:
        print(f"[bench/tasks] {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    load_start = os.getloadavg()[0]
    arms, facts = make_arms(args.epochs)
    measure(arms, args.rounds, args.epochs, log)
    parts = components(facts["setups"], 3 if args.quick else 9)
    loads = (load_start, os.getloadavg()[0])
    text, summary = report(args, arms, facts, parts, loads, time.monotonic() - started)
    print(text)
    if args.write:
        DOC_PATH.write_text(text)
        log(f"wrote {DOC_PATH.relative_to(REPO)}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
