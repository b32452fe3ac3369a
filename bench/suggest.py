"""Which LR should the range test suggest? Every rule against a grid of constant LRs.

For each row (a built-in task x {SGD momentum 0.9, AdamW}, plus a recurrent task whose loss
sits on a plateau before it learns):

1. **Grid**: train at 13 constant LRs, log-spaced over 4 decades, on 3 seeds each (seed = model
   init and data order; the validation split is fixed), for the row's fixed epoch budget. The
   grid's best is the LR with the best mean final validation metric over the 3 seeds; its seed
   standard deviation and standard error (std / sqrt(3)) say how much the grid itself is noise.
2. **Range test**: the job's range test as ``lrtune tune`` runs it (``lrtune.tuner.range_test``:
   4 seeds, 1e-7 -> 10 over 100 steps), then every rule's suggestion from it:

   * ``default``: what lrtune suggests today (``LRFinderResult.suggestion``, the consensus);
   * ``consensus:<rule>``: the median over the 4 seeds of ``<rule>`` on each seed's curve;
   * ``single:<rule>``: ``<rule>`` on seed 0's curve alone: one sweep, as the peers run it.

   Rules: fastai's ``valley``, the contiguous ``longest_run``, pytorch-lr-finder's
   ``steepest_per_step``, Lightning's ``steepest_per_lr``, ``minimum`` (/10), fastai's
   ``slide`` and lrtune's log-spaced ``steepest``.
3. **Train** at each suggested LR on the same 3 seeds and epochs; the gap to the grid's best:
   accuracy points for classification (best - rule), percent of the best MSE for regression
   (rule / best - 1). A diverged run scores accuracy 0 (or MSE inf).

Results go to ``out/suggest.json`` after every training run (a cut-off run resumes where it
stopped; ``--fresh`` starts over), the Markdown table to stdout, and with ``--write`` to
``docs/benchmark_suggest.md`` (between its table markers) with the raw results in
``docs/benchmark_suggest.json``.

Run from the repository root (with ``PYTHONPATH=.`` when lrtune is not installed from this
checkout; the script warns when it measures another copy), on one CPU thread. A full run takes
about 15-25 minutes; ``--quick`` (two rows, one epoch) is a smoke test of a minute or two:
    OMP_NUM_THREADS=1 .venv/bin/python bench/suggest.py --write
    OMP_NUM_THREADS=1 .venv/bin/python bench/suggest.py --quick     # out/suggest-quick.json
    OMP_NUM_THREADS=1 .venv/bin/python bench/suggest.py --report-only --write
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lrtune
from lrtune.datasets import DatasetBundle
from lrtune.registry import register_dataset, register_model
from lrtune.schedules import parse_schedule
from lrtune.spec import JobSpec
from lrtune.suggestions import PEER_RULES, RULES, consensus
from lrtune.training import TrainingSetup, train
from lrtune.tuner import range_test

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "out" / "suggest.json"
DOC_PATH = ROOT / "docs" / "benchmark_suggest.md"

GRID_POINTS = 13  # 3.25 points per decade over 4 decades
GRID_DECADES = 4
SEEDS = (1, 2, 3)
RANGE_TEST_SEEDS = (0, 1)  # job seeds of two independent range tests (4 sweeps each)
ALL_RULES = {**RULES, **PEER_RULES}
RULE_NAMES = tuple(ALL_RULES)

# (rule label in the table, how it is read off the range test)
PEER_LABELS = {
    "steepest_per_step": "pytorch-lr-finder steepest",
    "steepest_per_lr": "Lightning",
    "valley": "fastai valley",
    "slide": "fastai slide",
    "minimum": "minimum/10",
    "longest_run": "contiguous run",
    "steepest": "lrtune steepest (log LR)",
}


@dataclass(frozen=True)
class Row:
    """One benchmark row: a job spec minus its seed, and the grid's top LR."""

    name: str
    job: dict[str, Any]
    grid_top: float
    epochs: int

    @property
    def grid(self) -> list[float]:
        return np.geomspace(self.grid_top / 10**GRID_DECADES, self.grid_top, GRID_POINTS).tolist()

    def spec(self, seed: int) -> JobSpec:
        job = {**self.job, "seed": seed, "device": "cpu"}
        job["search"] = {**job.get("search", {}), "epochs": self.epochs}
        return JobSpec.model_validate(job)


def _job(model: str, params: dict[str, Any], dataset: str, optimizer: str, **extra: Any) -> dict:
    optim = {"name": "sgd", "momentum": 0.9} if optimizer == "sgd" else {"name": "adamw"}
    return {
        "model": {"name": model, "params": params},
        "dataset": {"name": dataset, "params": extra.pop("dataset_params", {})},
        "optimizer": optim,
        "batch_size": extra.pop("batch_size", 64),
        **extra,
    }


def build_rows(quick: bool) -> list[Row]:
    tasks = [  # name, model, params, dataset, batch size, epochs
        ("digits MLP", "mlp", {"hidden": [128]}, "digits", 64, 8),
        ("digits CNN", "cnn", {}, "digits", 64, 6),
        ("wine", "mlp", {"hidden": [64, 32]}, "wine", 32, 12),
        ("breast_cancer", "mlp", {"hidden": [64]}, "breast_cancer", 32, 8),
        ("diabetes", "mlp", {"hidden": [64]}, "diabetes", 32, 20),
        ("synthetic", "mlp", {"hidden": [64]}, "synthetic", 64, 8),
    ]
    rows = []
    for name, model, params, dataset, batch, epochs in tasks:
        for optimizer, top in (("sgd", 1.0), ("adamw", 0.1)):
            job = _job(model, params, dataset, optimizer, batch_size=batch)
            rows.append(Row(f"{name} / {optimizer}", job, top, epochs))
    plateau = _job("first_token_gru", {}, "first_token", "adamw", batch_size=32)
    rows.append(Row("first-token GRU / adamw (plateau)", plateau, 0.3, 12))
    if quick:
        rows = [rows[0], rows[-1]]
        rows = [Row(r.name, r.job, r.grid_top, 1) for r in rows]
    return rows


# --- the plateau task: a GRU must output the first token of a long sequence -------------------

FIRST_TOKEN_LENGTH = 30
FIRST_TOKEN_CLASSES = 4


def first_token(**params: Any) -> DatasetBundle:
    """Sequences of random one-hot tokens; the label is the first token (a long memory).

    A recurrent net sits at loss ln(4) for many steps before it finds the first token.
    """
    seed = int(params.get("seed", 0))
    generator = torch.Generator().manual_seed(seed)
    n_train, n_val = 1024, 256
    tokens = torch.randint(
        FIRST_TOKEN_CLASSES, (n_train + n_val, FIRST_TOKEN_LENGTH), generator=generator
    )
    features = nn.functional.one_hot(tokens, FIRST_TOKEN_CLASSES).float()
    labels = tokens[:, 0].clone()
    return DatasetBundle(
        name="first_token",
        task="classification",
        train=TensorDataset(features[:n_train], labels[:n_train]),
        val=TensorDataset(features[n_train:], labels[n_train:]),
        input_shape=(FIRST_TOKEN_LENGTH, FIRST_TOKEN_CLASSES),
        output_dim=FIRST_TOKEN_CLASSES,
    )


class FirstTokenGRU(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], output_dim: int, hidden: int = 16) -> None:
        super().__init__()
        self.gru = nn.GRU(input_shape[-1], hidden, batch_first=True)
        self.head = nn.Linear(hidden, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, last = self.gru(x)
        return self.head(last[-1])


def register_plateau_task() -> None:
    register_dataset("first_token")(first_token)
    register_model("first_token_gru")(FirstTokenGRU)


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Store:
    """Every training run and range test so far, saved to JSON after each one."""

    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path, fresh: bool) -> Store:
        if path.exists() and not fresh:
            return cls(path, json.loads(path.read_text()))
        return cls(path, {"rows": {}})

    def row(self, name: str) -> dict[str, Any]:
        row = self.data["rows"].setdefault(name, {"runs": {}, "range_tests": {}})
        if "range_test" in row:  # results from before the replicate range test
            row["range_tests"] = {"0": row.pop("range_test")}
        return row

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def lr_key(lr: float) -> str:
    return repr(float(lr))


def score(setup: TrainingSetup, lr: float, epochs: int) -> float:
    """Final validation metric of a constant-LR run; a diverged run scores the worst value."""
    run = train(setup, parse_schedule({"family": "constant"}), lr, epochs)
    metric = setup.bundle.metric_name
    if run.status == "diverged" or not run.epochs:
        return 0.0 if metric == "accuracy" else math.inf
    value = run.final(metric)
    return value if math.isfinite(value) else (0.0 if metric == "accuracy" else math.inf)


def train_seeds(row: Row, stored: dict[str, Any], store: Store, lr: float) -> list[float]:
    runs = stored["runs"]
    key = lr_key(lr)
    values = runs.setdefault(key, {})
    for seed in SEEDS:
        if str(seed) not in values:
            setup = TrainingSetup.from_spec(row.spec(seed))
            stored["metric"] = setup.bundle.metric_name
            values[str(seed)] = score(setup, lr, row.epochs)
            store.save()
    return [values[str(seed)] for seed in SEEDS]


def suggestions_of(
    row: Row, stored: dict[str, Any], store: Store, range_seed: int
) -> dict[str, float | None]:
    """Every rule's answer from the row's range test run with job seed ``range_seed``."""
    tests = stored["range_tests"]
    if str(range_seed) not in tests:
        result = range_test(TrainingSetup.from_spec(row.spec(range_seed)), progress=False)
        tests[str(range_seed)] = {
            "lrs": result.lrs,
            "curves": [curve.smoothed for curve in result.seeds],
            "default": result.suggestion,
            "default_spread": result.consensus.spread_decades,
        }
        store.save()
    test = tests[str(range_seed)]
    lrs, curves = np.asarray(test["lrs"]), test["curves"]
    answers: dict[str, float | None] = {"default": test["default"]}
    for name in RULE_NAMES:
        answers[f"consensus:{name}"] = consensus(lrs, curves, rule=name).suggestion.lr
        single = ALL_RULES[name](lrs[: len(curves[0])], curves[0])
        answers[f"single:{name}"] = single.lr
    return answers


def measure_row(row: Row, store: Store, log: Callable[[str], None]) -> None:
    stored = store.row(row.name)
    started = time.perf_counter()
    for lr in row.grid:
        train_seeds(row, stored, store, lr)
    for range_seed in RANGE_TEST_SEEDS:
        for lr in suggestions_of(row, stored, store, range_seed).values():
            if lr is not None:
                train_seeds(row, stored, store, lr)
    log(f"{row.name}: {time.perf_counter() - started:.0f} s")


# --- reporting ---------------------------------------------------------------------------------


@dataclass
class RowSummary:
    name: str
    metric: str
    best_lr: float
    best_mean: float
    best_std: float
    best_se: float
    tolerance: float  # in gap units
    spread_decades: float | None
    gaps: dict[str, float | None]  # label -> gap (points, or percent MSE); None: no suggestion
    lrs: dict[str, float | None]


def mean_of(values: list[float]) -> float:
    return statistics.fmean(values)


def summarise(
    row: Row, stored: dict[str, Any], answers: dict[str, float | None], range_seed: int
) -> RowSummary:
    classification = stored["metric"] == "accuracy"
    runs = {float(k): [v[str(s)] for s in SEEDS] for k, v in stored["runs"].items()}
    grid = {lr: runs[float(lr_key(lr))] for lr in row.grid}
    pick = max if classification else min
    best_lr = pick(grid, key=lambda lr: mean_of(grid[lr]))
    best = grid[best_lr]
    best_mean, best_std = mean_of(best), statistics.stdev(best)
    best_se = best_std / math.sqrt(len(best))

    def gap(values: list[float]) -> float:
        if classification:
            return 100 * (best_mean - mean_of(values))
        return 100 * (mean_of(values) / best_mean - 1)

    # 1 accuracy point or 2% of the MSE, or the grid best's own standard error if larger.
    floor, se = (1.0, 100 * best_se) if classification else (2.0, 100 * best_se / best_mean)
    tolerance = max(floor, se)
    gaps = {
        label: gap(runs[float(lr_key(lr))])
        for label, lr in answers.items()
        if lr is not None and float(lr_key(lr)) in runs
    }
    return RowSummary(
        name=row.name,
        metric="accuracy" if classification else "mse",
        best_lr=best_lr,
        best_mean=best_mean,
        best_std=best_std,
        best_se=best_se,
        tolerance=tolerance,
        spread_decades=stored["range_tests"][str(range_seed)]["default_spread"],
        gaps=gaps,
        lrs=answers,
    )


TABLE_COLUMNS = [
    ("default", "default"),
    ("consensus:valley", "cons. fastai valley"),
    ("consensus:longest_run", "cons. contiguous run"),
    ("consensus:minimum", "cons. minimum/10"),
    ("consensus:steepest", "cons. steepest (log)"),
    ("single:valley", "fastai valley"),
    ("single:longest_run", "contiguous run"),
    ("single:steepest_per_step", "tlf steepest"),
    ("single:steepest_per_lr", "Lightning"),
    ("single:minimum", "minimum/10"),
    ("single:slide", "fastai slide"),
]


def fmt_gap(value: float | None, tolerance: float) -> str:
    if value is None:
        return "none"
    if math.isinf(value):
        return "div."
    mark = "" if value <= tolerance else "*"
    return f"{value:+.1f}{mark}"


def report(by_seed: dict[int, list[RowSummary]], elapsed: float | None) -> str:
    """One table per range test, then the rules' scores pooled over both."""
    parts = []
    for seed, summaries in by_seed.items():
        parts += [f"### Range test with job seed {seed}", "", markdown(summaries), ""]
    pooled = [s for summaries in by_seed.values() for s in summaries]
    parts += [
        f"### Both range tests pooled ({len(pooled)} row-tests)",
        "",
        *aggregate_lines(pooled),
    ]
    if elapsed is not None:
        parts += ["", f"Measured in {elapsed / 60:.1f} minutes (wall clock) on one CPU thread."]
    return "\n".join(parts)


def markdown(summaries: list[RowSummary]) -> str:
    lines = [
        "| row | metric | grid best LR | grid best (mean ± std, 3 seeds) | tol. | seeds' spread "
        "(dec.) | " + " | ".join(title for _, title in TABLE_COLUMNS) + " |",
        "|" + "---|" * (6 + len(TABLE_COLUMNS)),
    ]
    for s in summaries:
        unit = "pts" if s.metric == "accuracy" else "% MSE"
        scale = 100 if s.metric == "accuracy" else 1
        best = f"{scale * s.best_mean:.4g} ± {scale * s.best_std:.2g}"
        spread = "n/a" if s.spread_decades is None else f"{s.spread_decades:.2f}"
        cells = [fmt_gap(s.gaps.get(label), s.tolerance) for label, _ in TABLE_COLUMNS]
        lines.append(
            f"| {s.name} | {s.metric} | {s.best_lr:.3g} | {best} | {s.tolerance:.1f} {unit} | "
            f"{spread} | " + " | ".join(cells) + " |"
        )
    lines += ["", "Suggested LRs (the LR each rule picked):", ""]
    lines.append(
        "| row | grid best | log10(grid best / default) | "
        + " | ".join(t for _, t in TABLE_COLUMNS)
        + " |"
    )
    lines.append("|" + "---|" * (3 + len(TABLE_COLUMNS)))
    for s in summaries:
        cells = [
            "none" if s.lrs.get(label) is None else f"{s.lrs[label]:.2g}"
            for label, _ in TABLE_COLUMNS
        ]
        default = s.lrs.get("default")
        offset = "n/a" if default is None else f"{math.log10(s.best_lr / default):+.2f}"
        lines.append(f"| {s.name} | {s.best_lr:.2g} | {offset} | " + " | ".join(cells) + " |")
    lines += ["", *aggregate_lines(summaries)]
    return "\n".join(lines)


def aggregate_lines(summaries: list[RowSummary]) -> list[str]:
    """Per rule: rows within tolerance, and gaps (a missing answer or a divergence counts 50).

    The mean over the built-in rows leaves out the plateau row, where every rule but one
    misses by some 70 points and would swamp the differences between rules.
    """
    lines = [
        "| rule | rows within tolerance | mean gap, built-in rows | mean gap, all rows | "
        "median gap | worst gap |",
        "|---|---|---|---|---|---|",
    ]
    built_in = [not s.name.endswith("(plateau)") for s in summaries]
    for label, title in TABLE_COLUMNS:
        gaps = [s.gaps.get(label) for s in summaries]
        met = sum(g is not None and g <= s.tolerance for g, s in zip(gaps, summaries, strict=True))
        capped = [50.0 if g is None or not math.isfinite(g) else min(g, 50.0) for g in gaps]
        built_in_gaps = [g for g, keep in zip(capped, built_in, strict=True) if keep]
        lines.append(
            f"| {title} | {met}/{len(summaries)} | {statistics.fmean(built_in_gaps):.2f} | "
            f"{statistics.fmean(capped):.2f} | {statistics.median(capped):.2f} | "
            f"{max(capped):.1f} |"
        )
    return lines


def _rounded(value: Any) -> Any:
    """``value`` with every float cut to 6 significant digits (the curves are most of it)."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


def write_doc(table: str, store: Store) -> None:
    """Put the table between its markers in the doc, and the raw results beside it."""
    compact = json.dumps(_rounded(store.data), separators=(",", ":"))
    DOC_PATH.with_suffix(".json").write_text(compact + "\n")
    text = DOC_PATH.read_text() if DOC_PATH.exists() else ""
    start, end = "<!-- suggest-table:start -->", "<!-- suggest-table:end -->"
    block = f"{start}\n{table}\n{end}"
    if start in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = block + "\n" + text
    DOC_PATH.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two rows, one epoch: smoke test")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON ({DEFAULT_OUT})")
    parser.add_argument("--fresh", action="store_true", help="ignore saved results")
    parser.add_argument("--write", action="store_true", help=f"update {DOC_PATH.name}")
    parser.add_argument("--rows", default=None, help="comma-separated row indices to run")
    parser.add_argument("--report-only", action="store_true", help="table from saved results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    register_plateau_task()
    if not Path(lrtune.__file__).resolve().is_relative_to(ROOT):
        print(f"warning: measuring lrtune from {lrtune.__file__}, not {ROOT}", file=sys.stderr)
    out = args.out or (DEFAULT_OUT.with_name("suggest-quick.json") if args.quick else DEFAULT_OUT)
    store = Store.open(out, args.fresh)
    rows = build_rows(args.quick)
    if args.rows:
        rows = [rows[int(i)] for i in args.rows.split(",")]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    if not args.report_only:
        for row in rows:
            measure_row(row, store, log)
        store.data["elapsed_s"] = store.data.get("elapsed_s", 0.0) + time.perf_counter() - started
        store.save()
    by_seed = {
        seed: [
            summarise(row, stored, suggestions_of(row, stored, store, seed), seed)
            for row in rows
            if str(seed) in (stored := store.row(row.name))["range_tests"]
        ]
        for seed in RANGE_TEST_SEEDS
    }
    table = report(by_seed, store.data.get("elapsed_s"))
    print(table)
    if args.write and not args.quick:
        write_doc(table, store)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
