"""Is lrtune's answer at least as good as the obvious alternatives, on seeds nobody chose on?

For each row (a job over the registry's models and scikit-learn's bundled datasets, or the
plateau task of ``bench/suggest.py``), six answers to "how should I train this?" are compared:

1. **lrtune**: ``lrtune.tuner.tune(spec)`` with the job's own search settings (the examples'
   files as they are; otherwise lrtune's defaults), on an in-memory Optuna storage. Its answer
   is ``rec.best``: a schedule and LR, or a learning-rate-free optimizer
   (``rec.best.lr_free``), whichever its confirmation picked.
2. **Grid-best constant LR**: 13 constant LRs log-spaced over 4 decades (``bench/suggest.py``'s
   grid), each trained on the search seed (0); the best final metric there wins, as a user
   with a grid would pick it.
3. **Best of 6 textbook schedules**: one-cycle, cosine and multistep (x0.1 at 1/2 and 3/4 of
   the run), each at 1x and 3x the grid-best constant LR, trained on the search seed; the best
   wins. Its compute includes the constant grid that found its LR.
4. **Prodigy** and 5. **schedule-free** at their documented defaults, no tuning
   (:func:`lrtune.lr_free.recipe`).
6. **pytorch-lr-finder's suggestion** as a constant LR: its ``range_test`` (1e-7 -> 10,
   100 steps, its own smoothing and divergence stop) on the search seed, read with its
   ``plot(suggest_lr=True)`` rule, the steepest descent per step after skipping 10 and 5
   points (:func:`lrtune.suggestions.steepest_per_step`, as ``bench/suggest.py`` reads it).
   Without the ``bench`` extra the sweep is lrtune's own on one seed.

Each answer is then retrained on :data:`EVALUATION_SEEDS` (1000..1004): other initial weights
and data order, the same validation split, seeds no side chose on. lrtune is compared with
each competitor seed by seed with lrtune's own rule (:func:`lrtune.recommendation.
paired_comparison`: the mean per-seed improvement ``m`` and its standard error ``se``;
``|m| <= se`` is inside the seed noise; a diverged run loses its seed).

Compute is counted in training epochs as ``bench/search.py`` counts it: a range test as the
optimizer steps it ran (lrtune's as ``num_iter * seeds * accumulation_steps``) over the steps
per epoch, every trial and confirmation run as the epochs it trained (a pruned one too),
every grid run likewise. Evaluation runs are the benchmark's, not counted.

Targets (issue 14), written down met or not: on every row lrtune at least the best of the
others on the evaluation seeds within their noise (not "does not beat" against the
competitor with the best evaluation mean), at <= 30% of the grid's compute (constant grid +
6 schedules).

Torch runs on ``--threads`` threads (default 1). A full run takes about 10 minutes on an idle
core (plan on 20-30 on a shared 2-core machine); progress goes to stderr, the report to stdout.

Run from the repository root:
    .venv/bin/python bench/quality.py                # Markdown on stdout
    .venv/bin/python bench/quality.py --write        # ... and docs/benchmark_quality.md
    .venv/bin/python bench/quality.py --quick        # two tiny rows, a smoke test (< 2 min)
    .venv/bin/python bench/quality.py --rows wine-logreg-sgd,plateau-gru-adamw
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import statistics
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import yaml

from lrtune.lr_free import LR_FREE, label, recipe
from lrtune.recommendation import (
    PairedComparison,
    Recommendation,
    TrainedSchedule,
    paired_comparison,
)
from lrtune.registry import register_dataset
from lrtune.schedules import parse_schedule
from lrtune.spec import JobSpec
from lrtune.suggestions import steepest_per_step
from lrtune.training import TrainingSetup, train
from lrtune.tuner import confirmation_records, range_test, search_records, tune

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # the sibling benchmarks, also when imported from elsewhere

from finder import disable_tlf_progress_bar, tlf  # noqa: E402
from search import EVALUATION_SEEDS, SEARCH_SEED, TARGET_SHARE, describe, environment  # noqa: E402
from suggest import GRID_DECADES, GRID_POINTS, first_token  # noqa: E402

ROOT = BENCH.parent
DOC_PATH = ROOT / "docs" / "benchmark_quality.md"
RAW_PATH = ROOT / "out" / "quality.json"
ANALYSIS_MARKER = "<!-- analysis: written by hand, kept by --write -->"
TLF_START_LR, TLF_END_LR, TLF_NUM_ITER = 1e-7, 10.0, 100
TEXTBOOK = ("onecycle", "cosine", "multistep")
TEXTBOOK_FACTORS = (1.0, 3.0)

Params = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One benchmark row: a job (minus seed and device) and the constant grid's top LR."""

    key: str
    title: str
    why: str
    job: Params
    grid_top: float

    def spec(self) -> JobSpec:
        job = {**self.job, "name": f"bench-quality-{self.key}", "seed": SEARCH_SEED}
        return JobSpec.model_validate({**job, "device": "cpu"})

    def lrs(self, points: int) -> list[float]:
        return np.geomspace(self.grid_top / 10**GRID_DECADES, self.grid_top, points).tolist()


def _job(
    model: str, params: Params, dataset: Params, optimizer: str, batch: int, **search: Any
) -> Params:
    optim = {"name": "sgd", "momentum": 0.9} if optimizer == "sgd" else {"name": optimizer}
    return {
        "model": {"name": model, "params": params},
        "dataset": dataset,
        "optimizer": optim,
        "batch_size": batch,
        "search": search,
    }


def _example(file: str) -> Params:
    """A job file of ``examples/`` as it is (its name and seed are the benchmark's)."""
    path = ROOT / "examples" / file
    data = (
        json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    )
    return {k: v for k, v in data.items() if k not in ("name", "seed")}


def build_rows() -> list[Row]:
    """The rows: classification and regression, SGD and Adam(W), small and noisy data, a plateau.

    A row's metric is the one its job searches; examples keep their own settings.
    """
    gru = [{"type": "gru", "hidden_size": 16}, {"type": "linear", "out_features": 4}]
    return [
        Row(
            "wine-logreg-sgd",
            "wine / logreg / SGD",
            "the README's curl job (logreg on wine, 178 samples, 36 for validation), searched "
            "with lrtune's default families",
            _job("logreg", {}, {"name": "wine"}, "sgd", 64, epochs=10),
            1.0,
        ),
        Row(
            "digits-mlp-sgd",
            "digits / MLP / SGD",
            "`examples/digits_mlp.yaml` as it is",
            _example("digits_mlp.yaml"),
            1.0,
        ),
        Row(
            "digits-mlp-adamw",
            "digits / MLP / AdamW",
            "the same MLP with AdamW",
            _job(
                "mlp",
                {"hidden": [128]},
                {"name": "digits"},
                "adamw",
                64,
                epochs=10,
                metric="accuracy",
            ),
            0.1,
        ),
        Row(
            "digits-seqcnn-sgd",
            "digits / sequential CNN / SGD",
            "`examples/digits_sequential_cnn.yaml` as it is (BatchNorm, a residual block)",
            _example("digits_sequential_cnn.yaml"),
            1.0,
        ),
        Row(
            "breast_cancer-mlp-adam",
            "breast_cancer / MLP / Adam",
            "binary classification, validation loss",
            _job("mlp", {"hidden": [64]}, {"name": "breast_cancer"}, "adam", 32, epochs=10),
            0.1,
        ),
        Row(
            "diabetes-mlp-sgd",
            "diabetes / MLP / SGD",
            "regression (442 samples), MSE",
            _job("mlp", {"hidden": [64]}, {"name": "diabetes"}, "sgd", 32, epochs=20, metric="mse"),
            1.0,
        ),
        Row(
            "diabetes-mlp-adam",
            "diabetes / MLP+BN / Adam",
            "`examples/diabetes_regression.json` as it is",
            _example("diabetes_regression.json"),
            0.1,
        ),
        Row(
            "synthetic300-mlp-adamw",
            "synthetic, 300 samples / MLP / AdamW",
            "noisy small data: 240 training and 60 validation samples, 3 classes (one sample "
            "is 1.7 accuracy points)",
            _job(
                "mlp",
                {"hidden": [64]},
                {"name": "synthetic", "params": {"n_samples": 300, "n_classes": 3}},
                "adamw",
                32,
                epochs=10,
                metric="accuracy",
            ),
            0.1,
        ),
        Row(
            "plateau-gru-adamw",
            "first-token GRU / AdamW (plateau)",
            "`bench/suggest.py`'s plateau task through the registry's `sequential` GRU: the loss "
            "sits at ln 4 until the LR is high enough, and keeps falling after",
            _job("sequential", {"layers": gru}, {"name": "first_token"}, "adamw", 32, epochs=12),
            0.3,
        ),
    ]


QUICK_ROWS = ("wine-logreg-sgd", "diabetes-mlp-sgd")


def quick_row(row: Row) -> Row:
    """The row shrunk to a smoke test: 3 epochs, a small search and range test."""
    search = {**row.job.get("search", {}), "epochs": 3, "n_trials": 4, "finalists": 2}
    search |= {"confirm_seeds": 2, "max_confirm_seeds": 3}
    job = {**row.job, "search": search, "range_test": {"num_iter": 40, "seeds": 2}}
    return Row(row.key, row.title, row.why, job, row.grid_top)


def register_plateau_dataset() -> None:
    """``first_token``: bench/suggest.py's sequences whose label is their first token."""
    with contextlib.suppress(ValueError):  # already registered in this process
        register_dataset("first_token")(first_token)


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One way to train: a schedule from an LR, or a learning-rate-free optimizer's recipe."""

    schedule: Params
    lr: float
    lr_free: str | None = None

    def __post_init__(self) -> None:  # one spelling per schedule: defaults filled in
        normal = parse_schedule(self.schedule).model_dump(mode="json")
        object.__setattr__(self, "schedule", normal)

    @property
    def key(self) -> str:
        return json.dumps([self.schedule, self.lr, self.lr_free], sort_keys=True)

    def describe(self, optimizer: Any) -> str:
        if self.lr_free is not None:
            return f"{label(self.lr_free, optimizer)} ({describe(self.schedule, self.lr)})"
        return describe(self.schedule, self.lr)


@dataclass
class Contender:
    """One answer: how it was chosen, what it trains, its compute, its evaluation."""

    name: str
    config: Config | None
    chosen: str
    epochs: float  # compute spent choosing it, in training epochs
    wall_s: float
    values: dict[int, float] = field(default_factory=dict)  # evaluation seed -> metric


@dataclass
class GridRun:
    label: str
    config: Config
    value: float  # on the search seed; NaN if it diverged
    val_loss: float
    epochs: int


@dataclass
class RowResult:
    row: Row
    spec: JobSpec
    steps_per_epoch: int
    constant_grid: list[GridRun]
    schedule_grid: list[GridRun]
    lrtune: Contender
    others: list[Contender]
    rec: Recommendation
    breakdown: dict[str, Any]
    tlf_detail: str

    @property
    def metric(self) -> str:
        return self.spec.search.metric

    @property
    def direction(self) -> str:
        return self.spec.search.direction or "minimize"

    @property
    def grid_epochs(self) -> int:
        return sum(r.epochs for r in self.constant_grid + self.schedule_grid)

    def share(self, contender: Contender) -> float:
        return contender.epochs / self.grid_epochs

    def versus(self, other: Contender) -> PairedComparison:
        """lrtune against ``other`` on the evaluation seeds (positive: lrtune better)."""
        return paired_comparison(other.name, self.lrtune.values, other.values, self.direction)

    def same_as_lrtune(self, other: Contender) -> bool:
        return other.config is not None and other.config == self.lrtune.config

    def best_other(self) -> Contender:
        """The competitor with the best evaluation mean (a diverged seed ranks it last)."""
        return min(self.others, key=lambda c: _badness(_mean(c.values), self.direction))

    def met_quality(self) -> bool:
        return bool(self.lrtune.values) and self.versus(self.best_other()).verdict != (
            "does not beat"
        )

    def met_compute(self) -> bool:
        return self.share(self.lrtune) <= TARGET_SHARE


def _mean(values: dict[int, float]) -> float:
    return statistics.fmean(values.values()) if values else math.nan


def _badness(value: float, direction: str) -> float:
    if not math.isfinite(value):
        return math.inf
    return -value if direction == "maximize" else value


def final_value(setup: TrainingSetup, config: Config, seed: int) -> tuple[float, float, int]:
    """(metric, val_loss, epochs trained) of one run; NaN metric if it diverged."""
    run = train(
        setup,
        parse_schedule(config.schedule),
        config.lr,
        setup.spec.search.epochs,
        seed=seed,
        lr_free=config.lr_free,
    )
    if run.status == "diverged" or not run.epochs:
        return math.nan, math.nan, len(run.epochs)
    return run.final(setup.metric), run.final("val_loss"), len(run.epochs)


def grid_pick(runs: Sequence[GridRun], direction: str) -> GridRun:
    """The best run on the search seed; equal metrics (accuracy ties) go to the lower val loss."""

    def key(run: GridRun) -> tuple[float, float]:
        loss = run.val_loss if math.isfinite(run.val_loss) else math.inf
        return _badness(run.value, direction), loss

    return min(runs, key=key)


def textbook_schedules(lr: float, epochs: int) -> list[tuple[str, Config]]:
    """One-cycle, cosine and multistep at ``lr`` times 1 and 3, with textbook settings."""
    half, late = max(1, epochs // 2), max(1, (3 * epochs) // 4)
    shapes: dict[str, Callable[[float], Params]] = {
        "onecycle": lambda top: {"family": "onecycle", "max_lr": top},
        "cosine": lambda top: {"family": "cosine", "T_max": epochs},
        "multistep": lambda top: {
            "family": "multistep",
            "milestones": sorted({half, max(half + 1, late)}),
            "gamma": 0.1,
        },
    }
    out = []
    for factor in TEXTBOOK_FACTORS:
        for family in TEXTBOOK:
            top = lr * factor
            schedule = parse_schedule(shapes[family](top)).model_dump(mode="json")
            out.append((f"{family} at {factor:g}x", Config(schedule, top)))
    return out


def run_grid(setup: TrainingSetup, configs: Sequence[tuple[str, Config]]) -> list[GridRun]:
    runs = []
    for name, config in configs:
        value, loss, epochs = final_value(setup, config, SEARCH_SEED)
        runs.append(GridRun(name, config, value, loss, epochs))
    return runs


def tlf_suggestion(setup: TrainingSetup) -> tuple[float | None, int, str]:
    """pytorch-lr-finder's suggestion on the search seed: (LR or None, steps run, how).

    Its ``range_test`` from 1e-7 to 10 over 100 steps with its defaults (``smooth_f=0.05``,
    stop when the loss passes 5x its best), then its ``plot(suggest_lr=True)`` rule.
    """
    if tlf is None:  # lrtune's sweep on one seed, read with the same rule (bench/suggest.py)
        one = setup.spec.model_copy(
            update={"range_test": setup.spec.range_test.model_copy(update={"seeds": 1})}
        )
        result = range_test(TrainingSetup.from_spec(one), progress=False)
        curve = result.seeds[0].smoothed
        lr = steepest_per_step(result.lrs[: len(curve)], curve).lr
        steps = one.range_test.num_iter * one.range_test.accumulation_steps
        return lr, steps, "lrtune's one-seed sweep read with tlf's rule (tlf not installed)"
    model = setup.build_model(SEARCH_SEED)
    optimizer = setup.build_optimizer(model, TLF_START_LR)
    loader = setup.task.train_loader(torch.Generator().manual_seed(SEARCH_SEED))
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        finder = tlf.LRFinder(model, optimizer, setup.bundle.loss_fn(), device=setup.device)
        finder.range_test(loader, end_lr=TLF_END_LR, num_iter=TLF_NUM_ITER, step_mode="exp")
    lrs, losses = finder.history["lr"], finder.history["loss"]
    version = getattr(tlf, "__version__", None) or _version("torch-lr-finder")
    return steepest_per_step(lrs, losses).lr, len(lrs), f"torch-lr-finder {version}"


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def run_lrtune(spec: JobSpec, setup: TrainingSetup) -> tuple[Recommendation, dict[str, Any]]:
    """``tune(spec)`` on an in-memory storage; its compute read back from the studies."""
    storage = optuna.storages.InMemoryStorage()
    start = time.perf_counter()
    rec = tune(spec, storage, progress=False)
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=spec.study_name(), storage=storage)
    trials, confirmations = search_records(study), confirmation_records(study)
    options = spec.range_test
    range_steps = options.num_iter * options.seeds * options.accumulation_steps

    def epochs(records: Sequence[Any]) -> int:
        return sum(len(r.run.epochs) for r in records if r.run is not None)

    states = [t.state for t in trials]
    breakdown = {
        "range_test": range_steps / setup.steps_per_epoch,
        "trials": epochs(trials),
        "confirmation": epochs(confirmations),
        "n_trials": len(trials),
        "pruned": states.count("PRUNED"),
        "confirmation_runs": sum(1 for c in confirmations if c.run is not None),
        "wall_s": wall,
        "decided_on_seeds": getattr(rec, "decided_on_seeds", None),
    }
    breakdown["total"] = breakdown["range_test"] + breakdown["trials"] + breakdown["confirmation"]
    return rec, breakdown


def candidate_config(candidate: TrainedSchedule) -> Config:
    """What a finalist or baseline of lrtune's trains (``lr_free``: None for the others)."""
    schedule = candidate.schedule
    if not isinstance(schedule, dict):
        schedule = schedule.model_dump(mode="json")
    return Config(schedule, float(candidate.base_lr), getattr(candidate, "lr_free", None))


def recommended_config(rec: Recommendation) -> Config | None:
    return None if rec.best is None else candidate_config(rec.best)


class Evaluator:
    """Retrains configs on the evaluation seeds, once per distinct config."""

    def __init__(self, setup: TrainingSetup, seeds: Sequence[int]) -> None:
        self.setup, self.seeds = setup, tuple(seeds)
        self.cache: dict[str, dict[int, float]] = {}

    def __call__(self, config: Config | None) -> dict[int, float]:
        if config is None:
            return {}
        if config.key not in self.cache:
            self.cache[config.key] = {s: final_value(self.setup, config, s)[0] for s in self.seeds}
        return self.cache[config.key]


def benchmark_row(
    row: Row, grid_points: int, seeds: Sequence[int], log: Callable[[str], None]
) -> RowResult:
    spec = row.spec()
    setup = TrainingSetup.from_spec(spec)
    epochs, direction = spec.search.epochs, spec.search.direction or "minimize"
    started = time.perf_counter()

    def note(message: str) -> None:
        log(f"[{row.key} {time.perf_counter() - started:5.0f} s] {message}")

    constant = parse_schedule({"family": "constant"}).model_dump(mode="json")
    t0 = time.perf_counter()
    constant_grid = run_grid(
        setup, [(f"constant {lr:.3g}", Config(constant, lr)) for lr in row.lrs(grid_points)]
    )
    best_constant = grid_pick(constant_grid, direction)
    constant_wall = time.perf_counter() - t0
    note(f"constant grid: best {best_constant.label} ({best_constant.value:.4g} on seed 0)")
    t0 = time.perf_counter()
    schedule_grid = run_grid(setup, textbook_schedules(best_constant.config.lr, epochs))
    best_schedule = grid_pick(schedule_grid, direction)
    schedule_wall = time.perf_counter() - t0
    note(f"6 schedules: best {best_schedule.label} ({best_schedule.value:.4g} on seed 0)")

    t0 = time.perf_counter()
    tlf_lr, tlf_steps, tlf_how = tlf_suggestion(setup)
    tlf_wall = time.perf_counter() - t0
    note(f"tlf suggests {tlf_lr}")

    rec, breakdown = run_lrtune(spec, setup)
    config = recommended_config(rec)
    note(
        f"lrtune: {breakdown['total']:.0f} epochs, recommends "
        f"{config.describe(spec.optimizer) if config else '-'}"
    )

    grid_epochs = sum(r.epochs for r in constant_grid)
    all_epochs = grid_epochs + sum(r.epochs for r in schedule_grid)
    lrtune = Contender(
        "lrtune",
        config,
        "`tune(spec)`: its confirmation's pick",
        breakdown["total"],
        breakdown["wall_s"],
    )
    others = [
        Contender(
            "best of 6 schedules",
            best_schedule.config,
            f"{best_schedule.label} of the grid-best constant LR, on seed {SEARCH_SEED}",
            all_epochs,
            constant_wall + schedule_wall,
        ),
        Contender(
            "grid-best constant",
            best_constant.config,
            f"{len(constant_grid)} constant LRs on seed {SEARCH_SEED}",
            grid_epochs,
            constant_wall,
        ),
        *[
            Contender(
                label(name, spec.optimizer),
                Config(*recipe(name, spec.optimizer, epochs), lr_free=name),
                "its documented defaults, no tuning",
                0.0,
                0.0,
            )
            for name in LR_FREE
        ],
        Contender(
            "tlf suggestion",
            None if tlf_lr is None else Config(constant, float(tlf_lr)),
            f"{tlf_how}: {tlf_steps} range-test steps on seed {SEARCH_SEED}",
            tlf_steps / setup.steps_per_epoch,
            tlf_wall,
        ),
    ]
    evaluate = Evaluator(setup, seeds)
    for contender in [lrtune, *others]:
        contender.values = evaluate(contender.config)
    note(
        "evaluated: lrtune "
        + f"{_mean(lrtune.values):.4g}, "
        + ", ".join(f"{c.name} {_mean(c.values):.4g}" for c in others)
    )
    return RowResult(
        row=row,
        spec=spec,
        steps_per_epoch=setup.steps_per_epoch,
        constant_grid=constant_grid,
        schedule_grid=schedule_grid,
        lrtune=lrtune,
        others=others,
        rec=rec,
        breakdown=breakdown,
        tlf_detail=tlf_how,
    )


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _scale(metric: str) -> float:
    return 100.0 if metric == "accuracy" else 1.0


def _unit(metric: str) -> str:
    return "accuracy points" if metric == "accuracy" else metric


def fmt_value(value: float, metric: str) -> str:
    if not math.isfinite(value):
        return "diverged"
    return f"{_scale(metric) * value:.2f}" if metric == "accuracy" else f"{value:.4g}"


def fmt_mean_se(values: dict[int, float], metric: str) -> str:
    if not values:
        return "-"
    finite = [v for v in values.values() if math.isfinite(v)]
    if len(finite) < len(values):
        return f"diverged on {len(values) - len(finite)}/{len(values)} seeds"
    scale = _scale(metric)
    se = statistics.stdev(finite) / math.sqrt(len(finite)) if len(finite) > 1 else math.nan
    if metric == "accuracy":
        return f"{scale * statistics.fmean(finite):.2f} ± {scale * se:.2f}"
    return f"{statistics.fmean(finite):.4g} ± {se:.2g}"


def fmt_comparison(c: PairedComparison, metric: str) -> str:
    """lrtune's mean improvement ± paired se, in the metric's units (positive: lrtune better)."""
    if c.mean_improvement is None:
        return f"{c.verdict} ({c.wins}/{c.seeds} seeds)"
    scale = _scale(metric)
    digits = "+.2f" if metric == "accuracy" else "+.3g"
    se = "" if c.standard_error is None else f" ± {scale * c.standard_error:.2g}"
    return f"{scale * c.mean_improvement:{digits}}{se}"


def row_table(r: RowResult) -> list[str]:
    metric = r.metric
    lines = [
        f"| answer | trains | chosen by | evaluation mean ± se ({_unit(metric)}) | lrtune's "
        "improvement, paired ± se | lrtune's verdict | lrtune better on | compute (epochs) | "
        "share of the grid's |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in [r.lrtune, *r.others]:
        trains = f"`{c.config.describe(r.spec.optimizer)}`" if c.config else "none (no suggestion)"
        if c is r.lrtune:
            versus = ["", "", ""]
        else:
            p = r.versus(c)
            versus = [fmt_comparison(p, metric), p.verdict, f"{p.wins}/{p.seeds}"]
        name = f"**{c.name}**" if c is r.lrtune else c.name
        lines.append(
            f"| {name} | {trains} | {c.chosen} | {fmt_mean_se(c.values, metric)} | "
            + " | ".join(versus)
            + f" | {c.epochs:.1f} | {r.share(c):.0%} |"
        )
    return lines


def confirmation_lines(r: RowResult) -> list[str]:
    """What lrtune's own confirmation said: each candidate's mean on its confirmation seeds."""
    rec = r.rec
    best = rec.best
    lines = [
        "| candidate | trains | search seed | confirmation mean (seeds) | |",
        "|---|---|---|---|---|",
    ]
    for c in [*rec.finalists, *rec.baselines]:
        config = candidate_config(c)
        values = [s.value for s in c.seed_values]
        mean = c.mean
        confirmed = f"{fmt_value(mean, r.metric)} ({len(values)})" if mean is not None else "-"
        lines.append(
            f"| {c.name} | `{config.describe(r.spec.optimizer)}` | "
            f"{fmt_value(c.value(r.metric), r.metric)} | {confirmed} | "
            f"{'**recommended**' if c is best else ''} |"
        )
    return lines


def reading(r: RowResult) -> list[str]:
    """The targets, and where quality is missed, who won and what lrtune's evidence said."""
    metric = r.metric
    best = r.best_other()
    p = r.versus(best)
    b = r.breakdown
    quality = "met" if r.met_quality() else "**not met**"
    compute = "met" if r.met_compute() else "**not met**"
    lines = [
        f"- Quality target {quality}: the best other answer on the evaluation seeds is "
        f"{best.name} ({fmt_mean_se(best.values, metric)}"
        f"{', the same answer as lrtune' if r.same_as_lrtune(best) else ''}); lrtune's "
        "improvement over it is "
        f"{fmt_comparison(p, metric)} {_unit(metric)} ({p.verdict}, lrtune better on "
        f"{p.wins}/{p.seeds} seeds).",
        f"- Compute target {compute}: lrtune {b['total']:.0f} epochs = {r.share(r.lrtune):.0%} of "
        f"the grid's {r.grid_epochs} (range test {b['range_test']:.0f}, {b['n_trials']} trials "
        f"{b['trials']} with {b['pruned']} pruned, {b['confirmation_runs']} confirmation runs "
        f"{b['confirmation']}; the pick was decided on {b['decided_on_seeds'] or '-'} "
        "confirmation seeds).",
    ]
    if not r.met_quality():
        lines.append(f"- Why: {_why(r, best)}")
    return lines


def _why(r: RowResult, winner: Contender) -> str:
    """Where lrtune's confirmation had the winner (or its nearest candidate), and what it said."""
    rec = r.rec
    best = rec.best
    if best is None:
        return "no trial finished, so there was no recommendation."
    metric = r.metric
    twin = None
    for c in [*rec.finalists, *rec.baselines]:
        free = getattr(c, "lr_free", None)
        if winner.config is not None and free is not None and free == winner.config.lr_free:
            twin = c
        elif winner.config is not None and free is None and winner.config.lr_free is None:
            same_family = c.schedule.family == winner.config.schedule["family"]
            close = abs(math.log10(c.base_lr / winner.config.lr)) <= 0.25
            if same_family and close and twin is None:
                twin = c
    text = (
        f"lrtune recommended `{recommended_config(rec).describe(r.spec.optimizer)}` with "
        f"{fmt_value(best.mean if best.mean is not None else math.nan, metric)} on its "
        f"{len(best.seed_values)} confirmation seeds. "
    )
    if twin is None:
        answer = winner.config.describe(r.spec.optimizer) if winner.config else "-"
        return text + (
            f"The winning answer (`{answer}`) was not among its candidates (no finalist or "
            "baseline of the same family within a quarter decade of its LR)."
        )
    mean = twin.mean if twin.mean is not None else math.nan
    return text + (
        f"Its candidate `{twin.name}` is the closest to the winning answer and had "
        f"{fmt_value(mean, metric)} on its {len(twin.seed_values)} confirmation seeds there, so "
        "the confirmation seeds ranked them the other way from the evaluation seeds."
        if twin is not best
        else "That is the winner's own answer: the difference is the evaluation's noise."
    )


def summary_table(results: Sequence[RowResult]) -> list[str]:
    lines = [
        "| row | metric | lrtune's answer | lrtune | best other answer | lrtune's improvement "
        "over it (paired ± se) | quality | lrtune's compute / grid's | compute |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        best = r.best_other()
        config = r.lrtune.config
        answer = f"`{config.describe(r.spec.optimizer)}`" if config else "-"
        lines.append(
            f"| {r.row.title} | {r.metric} | {answer} | {fmt_mean_se(r.lrtune.values, r.metric)} "
            f"| {best.name}{' (the same answer)' if r.same_as_lrtune(best) else ''}: "
            f"{fmt_mean_se(best.values, r.metric)} | "
            f"{fmt_comparison(r.versus(best), r.metric)} | "
            f"{'met' if r.met_quality() else '**not met**'} | {r.share(r.lrtune):.0%} | "
            f"{'met' if r.met_compute() else '**not met**'} |"
        )
    return lines


def shares_table(results: Sequence[RowResult]) -> list[str]:
    names = [c.name for c in results[0].others]
    lines = [
        "| row | grid epochs | lrtune | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for r in results:
        cells = [f"{c.epochs:.0f} ({r.share(c):.0%})" for c in r.others]
        lines.append(
            f"| {r.row.title} | {r.grid_epochs} | {r.lrtune.epochs:.0f} "
            f"({r.share(r.lrtune):.0%}) | " + " | ".join(cells) + " |"
        )
    return lines


def intro_lines(grid_points: int, seeds: Sequence[int]) -> list[str]:
    """What the report compares, and how, as one wrapped paragraph."""
    text = (
        "Per row, six answers: **lrtune** (`tune(spec)` with the job's own search settings; its "
        "confirmation's pick, which may be a baseline or a learning-rate-free optimizer); the "
        f"**grid-best constant LR** ({grid_points} constant LRs over {GRID_DECADES} decades, "
        f"picked on seed {SEARCH_SEED}); the **best of 6 textbook schedules** (one-cycle, cosine, "
        "multistep x0.1 at 1/2 and 3/4 of the run, at 1x and 3x that LR, picked on seed "
        f"{SEARCH_SEED}); **Prodigy** and **schedule-free** at their documented defaults; "
        "**pytorch-lr-finder's suggestion** as a constant LR. Each answer is retrained on the "
        f"evaluation seeds {', '.join(map(str, seeds))}, which nobody chose on (other initial "
        "weights and data order, the same validation split). lrtune is compared with each, seed "
        "by seed, with its own rule (`paired_comparison`: mean improvement `m` and its standard "
        "error `se`; `|m| <= se` is inside the seed noise; a diverged run loses its seed). "
        "Compute is in training epochs, counted as `bench/search.py` counts it (range tests as "
        "their optimizer steps, trials and confirmation runs as the epochs they trained, pruned "
        "ones too); the grid's is the constant grid plus the 6 schedules; evaluation runs are "
        "not counted."
    )
    return textwrap.wrap(text, 92, break_on_hyphens=False)


def render(
    results: Sequence[RowResult], args: argparse.Namespace, total_s: float, commit: str
) -> str:
    met_q = sum(r.met_quality() for r in results)
    met_c = sum(r.met_compute() for r in results)
    out = ["# Benchmark: lrtune's recommendation against the obvious alternatives", ""]
    if args.quick:
        out += ["> `--quick` smoke run: tiny rows, not a benchmark result.", ""]
    out += [
        "Generated by `bench/quality.py` (`.venv/bin/python bench/quality.py --write`); how it",
        "works is in [bench/README.md](../bench/README.md) and the script's docstring.",
        "",
        *intro_lines(args.grid_points, args.seeds),
        "",
        "Targets (issue 14): on every row lrtune at least the best other answer within the",
        "evaluation seeds' noise (its verdict against the answer with the best evaluation mean is",
        f'not "does not beat"), at <= {TARGET_SHARE:.0%} of the grid\'s compute.',
        "",
        f"**Quality target met on {met_q} of {len(results)} rows; compute target on {met_c} of "
        f"{len(results)}.**",
        "",
        "## Summary",
        "",
        *summary_table(results),
        "",
        "Compute of every answer in epochs (share of the grid's):",
        "",
        *shares_table(results),
        "",
        "## Environment",
        "",
        *[f"- {k}: {v}" for k, v in environment(args.threads).items()],
        f"- lrtune at commit {commit}",
        f"- pytorch-lr-finder: {results[0].tlf_detail if results else '-'}",
        f"- total benchmark wall time: {total_s:.0f} s",
        "",
    ]
    for r in results:
        spec = r.spec
        search = spec.search
        out += [
            f"## {r.row.title}",
            "",
            f"{r.row.why[:1].upper()}{r.row.why[1:]}. Metric `{r.metric}` ({search.direction}), "
            f"{search.epochs} epochs, "
            f"batch {spec.batch_size}, {r.steps_per_epoch} steps per epoch; lrtune: "
            f"{search.n_trials} trials, pruner {search.pruner}, {search.finalists} finalists, "
            f"{search.confirm_seeds} confirmation seeds (up to {search.max_confirm_seeds}), "
            f"baselines {', '.join(search.baselines) or 'none'}; range test "
            f"{spec.range_test.num_iter} steps x {spec.range_test.seeds} seeds.",
            "",
            *row_table(r),
            "",
            *reading(r),
            "",
            "lrtune's confirmation (the evidence its pick rests on):",
            "",
            *confirmation_lines(r),
            "",
            f"Verdict: {r.rec.verdict}",
            "",
            "The grid on seed 0: "
            + ", ".join(
                f"{g.label.removeprefix('constant ')}: {fmt_value(g.value, r.metric)}"
                for g in r.constant_grid
            )
            + "; schedules: "
            + ", ".join(f"{g.label}: {fmt_value(g.value, r.metric)}" for g in r.schedule_grid)
            + ".",
            "",
        ]
    out += ["## README summary", "", *readme_summary(results), ""]
    return "\n".join(out)


def readme_summary(results: Sequence[RowResult]) -> list[str]:
    lines = [
        "| row (`bench/quality.py`) | lrtune's answer | lrtune vs the best other answer, "
        "paired ± se | quality | compute / grid |",
        "|---|---|---|---|---:|",
    ]
    for r in results:
        best = r.best_other()
        config = r.lrtune.config
        answer = config.describe(r.spec.optimizer).split("(")[0].strip() if config else "-"
        unit = " pts" if r.metric == "accuracy" else f" {r.metric}"
        lines.append(
            f"| {r.row.title} | {answer} | {fmt_comparison(r.versus(best), r.metric)}{unit} vs "
            f"{best.name} | {'met' if r.met_quality() else 'not met'} | "
            f"{r.share(r.lrtune):.0%} |"
        )
    return lines


def raw(results: Sequence[RowResult]) -> dict[str, Any]:
    """Every number of the report, for a look without re-running."""

    def contender(c: Contender) -> dict[str, Any]:
        return {
            "name": c.name,
            "config": None if c.config is None else c.config.__dict__,
            "epochs": c.epochs,
            "values": c.values,
        }

    return {
        r.row.key: {
            "metric": r.metric,
            "grid": [(g.label, g.value, g.epochs) for g in r.constant_grid + r.schedule_grid],
            "lrtune": contender(r.lrtune),
            "others": [contender(c) for c in r.others],
            "breakdown": r.breakdown,
            "recommendation": r.rec.model_dump(mode="json", exclude={"range_test", "history"}),
        }
        for r in results
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two tiny rows: a smoke test")
    parser.add_argument("--write", action="store_true", help=f"write {DOC_PATH.name}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--rows", default=None, help="comma-separated row keys or indices (default: all)"
    )
    parser.add_argument(
        "--trials",
        type=int,
        default=None,
        help="lrtune's n_trials on each row (default: the job's)",
    )
    args = parser.parse_args(argv)
    args.grid_points = 5 if args.quick else GRID_POINTS
    args.seeds = EVALUATION_SEEDS[:2] if args.quick else EVALUATION_SEEDS
    return args


def select_rows(args: argparse.Namespace) -> list[Row]:
    rows = build_rows()
    if args.quick and args.rows is None:
        rows = [r for r in rows if r.key in QUICK_ROWS]
    if args.rows:
        by_key = {r.key: r for r in rows}
        picked = []
        for item in args.rows.split(","):
            item = item.strip()
            if item.isdigit():
                picked.append(rows[int(item)])
            elif item in by_key:
                picked.append(by_key[item])
            else:
                raise SystemExit(f"unknown row {item!r}; rows: {', '.join(by_key)}")
        rows = picked
    if args.quick:
        rows = [quick_row(r) for r in rows]
    if args.trials is not None:
        rows = [
            Row(
                r.key,
                r.title,
                r.why,
                {**r.job, "search": {**r.job.get("search", {}), "n_trials": args.trials}},
                r.grid_top,
            )
            for r in rows
        ]
    return rows


def git_commit() -> str:
    import subprocess

    try:
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "lrtune"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"`{head[:90]}`" + (" (with uncommitted changes to lrtune/)" if dirty else "")


def write_doc(markdown: str) -> None:
    """Write the report, keeping the hand-written analysis after :data:`ANALYSIS_MARKER`."""
    kept = ""
    if DOC_PATH.exists():
        old = DOC_PATH.read_text()
        if ANALYSIS_MARKER in old:
            kept = old[old.index(ANALYSIS_MARKER) :]
    DOC_PATH.write_text(markdown.rstrip() + "\n\n" + (kept or ANALYSIS_MARKER + "\n"))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lrtune").setLevel(logging.WARNING)
    register_plateau_dataset()
    disable_tlf_progress_bar()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows = select_rows(args)
    commit = git_commit()
    log(f"{len(rows)} rows on {commit}: {', '.join(r.key for r in rows)}")
    start = time.perf_counter()
    results = [benchmark_row(r, args.grid_points, args.seeds, log) for r in rows]
    markdown = render(results, args, time.perf_counter() - start, commit)
    print(markdown)
    raw_path = RAW_PATH.with_name("quality-quick.json") if args.quick else RAW_PATH
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw(results), indent=1, default=str))
    if args.write:
        write_doc(markdown)
        log(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
