"""Wall-clock benchmark of the LR range test: lrtune vs a bare loop vs pytorch-lr-finder.

What it measures, in one run, on the registry's MLP 64-128-10 over scikit-learn's digits
(1437 training samples), SGD with momentum 0.9, an exponential LR sequence from 1e-5 to 10 in
100 steps, no divergence stop (every contender takes every step):

1. **Single sweep**, on one pre-built list of 22 batches of 64 that every contender cycles
   through in the same order:

   * lrtune: ``find_lr(..., seeds=1, diverge_threshold=None, progress=False)``;
   * a bare hand-written loop of the same steps (set the LR, forward, loss, backward, step, and
     ``loss.item()``: a range test needs each step's loss on the host);
   * pytorch-lr-finder: ``LRFinder(...)``, ``range_test(...)`` with its default smoothing and
     ``diverge_th=1e30``, then ``reset()``, as its README uses it.

   Each timing includes the contender's own snapshot and restore of the weights (lrtune's
   ``find_lr`` restores them itself, pytorch-lr-finder in ``reset()``, the bare loop clones the
   ``state_dict`` and copies it back) and the creation of its optimizer.
2. **Multi-seed**, with a ``DataLoader(batch_size=64, shuffle=True)`` (seeds need reshuffling):
   lrtune with ``seeds=1``, ``seeds=8, vectorize=True`` (one ``torch.func.vmap`` sweep) and
   ``seeds=8, vectorize=False`` (eight sweeps one after another), all with ``seed=0``.

Every contender runs once as a warm-up, then ``--repeats`` rounds (default 5) time each once,
in a rotating order, with the garbage collector paused; the median is reported. Before timing,
the script checks that the contenders compute the same curves (it exits with an error if not).
It also times two diagnostics: drawing the 8 seeds' batches alone, and the bare loop on batches
of 8 x 64 rows (the arithmetic of 8 copies without their overhead). Torch runs on ``--threads``
threads (default 1).

Run:
    .venv/bin/python bench/finder.py                 # Markdown on stdout (15-45 s on 2 cores)
    .venv/bin/python bench/finder.py --write         # ... and update docs/benchmarks.md
    .venv/bin/python bench/finder.py --quick         # a smoke test (one round, < 30 s)
    .venv/bin/python bench/finder.py --repeats 9 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import gc
import io
import math
import os
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import lrtune
from lrtune import find_lr
from lrtune.batches import endless, seeded_order, stack_batches
from lrtune.registry import build_model, load_dataset
from lrtune.result import LRFinderResult

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
SECTION_HEADING = "## Range test (bench/finder.py)"

START_LR, END_LR, NUM_ITER = 1e-5, 10.0, 100
BATCH_SIZE = 64
SEEDS = 8
MOMENTUM = 0.9
TLF_SMOOTH_F = 0.05  # pytorch-lr-finder's default smoothing
NO_DIVERGE = 1e30  # pytorch-lr-finder's divergence threshold, high enough to never stop

# Targets from the issue: ratio name -> upper bound.
TARGETS = {
    "lrtune / bare loop": 1.05,
    "lrtune / pytorch-lr-finder": 1.0,
    "K=8 vectorized / K=1": 2.0,
}
# Curves computed by the same operations must agree to this relative tolerance.
REL_TOL = 1e-4
# Batched (vmap) kernels round differently from unbatched ones.
VMAP_REL_TOL = 1e-3

try:
    import torch_lr_finder.lr_finder as tlf
except ImportError:  # a bench-only dependency: pip install -e '.[bench]'
    tlf = None


@dataclass
class Setup:
    """The model, data and LR sequence that every contender shares."""

    model: nn.Module
    batches: list[tuple[Tensor, Tensor]]
    loader: DataLoader
    lrs: np.ndarray
    initial: dict[str, Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def check_restored(self, who: str) -> None:
        state = self.model.state_dict()
        if any(not torch.equal(state[k], v) for k, v in self.initial.items()):
            raise SystemExit(f"{who} did not restore the model's weights")


def make_setup() -> Setup:
    bundle = load_dataset("digits")
    x, y = bundle.train.tensors
    full = len(x) - len(x) % BATCH_SIZE
    batches = [(x[i : i + BATCH_SIZE], y[i : i + BATCH_SIZE]) for i in range(0, full, BATCH_SIZE)]
    model = build_model("mlp", bundle, {"hidden": [128]}, seed=0)
    loader = DataLoader(bundle.train, batch_size=BATCH_SIZE, shuffle=True)
    return Setup(model, batches, loader, np.geomspace(START_LR, END_LR, NUM_ITER))


# --- contenders: each returns its per-step losses -------------------------------------------


def bare_loop(setup: Setup, batches: Sequence[tuple[Tensor, Tensor]] | None = None) -> list[float]:
    """The range test's steps written out by hand, with a snapshot and restore of the weights."""
    model, batches = setup.model, batches or setup.batches
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=START_LR, momentum=MOMENTUM)
    criterion = nn.CrossEntropyLoss()
    losses: list[float] = []
    for step, lr in enumerate(setup.lrs.tolist()):
        optimizer.param_groups[0]["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        inputs, targets = batches[step % len(batches)]
        loss = criterion(model(inputs), targets)
        loss.backward()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):  # as lrtune: a non-finite step ends the sweep
            break
        optimizer.step()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            value.copy_(snapshot[name])
    return losses


def lrtune_sweep(setup: Setup) -> list[float]:
    return lrtune_run(setup, setup.batches, seeds=1).seeds[0].raw


def lrtune_run(
    setup: Setup, data: Any, seeds: int, vectorize: bool = False, seed: int | None = None
) -> LRFinderResult:
    optimizer = torch.optim.SGD(setup.model.parameters(), lr=START_LR, momentum=MOMENTUM)
    return find_lr(
        setup.model,
        data,
        optimizer,
        nn.CrossEntropyLoss(),
        start_lr=START_LR,
        end_lr=END_LR,
        num_iter=len(setup.lrs),
        mode="exp",
        diverge_threshold=None,
        seeds=seeds,
        seed=seed,
        vectorize=vectorize,
        device="cpu",
        progress=False,
    )


def tlf_sweep(setup: Setup, smooth_f: float = TLF_SMOOTH_F) -> list[float]:
    """pytorch-lr-finder's range test (its recorded, smoothed losses), then its reset()."""
    assert tlf is not None
    optimizer = torch.optim.SGD(setup.model.parameters(), lr=START_LR, momentum=MOMENTUM)
    # It prints when done and warns on each get_lr() call (a torch scheduler deprecation):
    # silence both; the warning calls still run and are counted, as in its normal use.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        finder = tlf.LRFinder(setup.model, optimizer, nn.CrossEntropyLoss(), device="cpu")
        finder.range_test(
            tlf.TrainDataLoaderIter(setup.batches),  # cycles through the list, as lrtune does
            end_lr=END_LR,
            num_iter=len(setup.lrs),
            step_mode="exp",
            smooth_f=smooth_f,
            diverge_th=NO_DIVERGE,
        )
        finder.reset()
    return [float(v) for v in finder.history["loss"]]


def disable_tlf_progress_bar() -> None:
    """Its ``tqdm(range(num_iter))`` takes no ``disable``: rebind the module's name to a
    disabled bar, the state lrtune's own bar is in with ``progress=False``."""
    if tlf is not None:
        tlf.tqdm = functools.partial(tlf.tqdm, disable=True)


def tlf_smoothing(raw: Sequence[float], smooth_f: float) -> list[float]:
    """pytorch-lr-finder's smoothing (no bias correction), to apply to lrtune's raw losses."""
    out = [raw[0]]
    for loss in raw[1:]:
        out.append(smooth_f * loss + (1 - smooth_f) * out[-1])
    return out


def draw_seeded_batches(setup: Setup, seeds: int) -> None:
    """Only the data side of a vectorized sweep: ``num_iter`` stacked batches from K loaders."""
    streams = [endless(seeded_order(setup.loader, s)) for s in range(seeds)]
    for _ in range(len(setup.lrs)):
        stack_batches([next(s) for s in streams])


def wide_batches(setup: Setup, copies: int) -> list[tuple[Tensor, Tensor]]:
    """Batches of ``copies * 64`` rows: one model doing the arithmetic of ``copies`` models."""
    groups = len(setup.batches) // copies
    return [
        (
            torch.cat([x for x, _ in setup.batches[g * copies : (g + 1) * copies]]),
            torch.cat([y for _, y in setup.batches[g * copies : (g + 1) * copies]]),
        )
        for g in range(groups)
    ]


# --- checks ---------------------------------------------------------------------------------


@dataclass
class Agreement:
    """How far apart two loss curves are; ``tol`` is None for a figure given for information."""

    label: str
    max_abs: float
    max_rel: float
    tol: float | None = REL_TOL

    @property
    def ok(self) -> bool:
        return self.tol is None or self.max_rel <= self.tol

    def line(self) -> str:
        diff = f"max abs diff {self.max_abs:.3g} (relative {self.max_rel:.2g})"
        if self.tol is None:
            return f"{self.label}: {diff}"
        verdict = "ok" if self.ok else "MISMATCH"
        return f"{self.label}: {diff}, {verdict} (tolerance {self.tol:g} relative)"


def compare(
    label: str, got: Sequence[float], want: Sequence[float], tol: float | None = REL_TOL
) -> Agreement:
    a, b = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    if a.shape != b.shape:
        return Agreement(f"{label} (lengths {a.shape} vs {b.shape})", np.inf, np.inf, tol)
    diff = np.abs(a - b)
    rel = diff / np.maximum(1.0, np.abs(b))
    return Agreement(label, float(diff.max()), float(rel.max()), tol)


def check_curves(setup: Setup) -> list[Agreement]:
    """Run each contender once (untimed) and compare what it computed; the warm-up as well."""
    lrtune_raw = lrtune_sweep(setup)
    setup.check_restored("lrtune")
    checks = [compare("lrtune raw vs bare loop", lrtune_raw, bare_loop(setup))]
    setup.check_restored("the bare loop")
    if tlf is not None:
        smoothed = tlf_sweep(setup)
        setup.check_restored("pytorch-lr-finder")
        checks += [
            compare(
                "lrtune raw vs pytorch-lr-finder with smooth_f=0 (raw losses)",
                lrtune_raw,
                tlf_sweep(setup, 0.0),
            ),
            compare(
                f"pytorch-lr-finder (smooth_f={TLF_SMOOTH_F}) vs its smoothing of lrtune raw",
                smoothed,
                tlf_smoothing(lrtune_raw, TLF_SMOOTH_F),
            ),
        ]
    return checks + check_seeds(setup)


def lr_text(lr: float | None) -> str:
    return "none" if lr is None else f"{lr:.3g}"


def check_seeds(setup: Setup) -> list[Agreement]:
    """seeds=1 must be seed 0 of the sequential sweep exactly; the vectorized sweep runs batched
    kernels, whose rounding differs, and training amplifies that once the loss diverges: it must
    agree up to the minimum of the median curve (what the suggestion reads)."""
    one = lrtune_run(setup, setup.loader, seeds=1, seed=0)
    vec = lrtune_run(setup, setup.loader, seeds=SEEDS, vectorize=True, seed=0)
    seq = lrtune_run(setup, setup.loader, seeds=SEEDS, vectorize=False, seed=0)
    setup.check_restored("lrtune (multi-seed)")
    engines = (vec.config.engine, seq.config.engine)
    if engines != ("vectorized", "sequential"):
        raise SystemExit(f"expected vectorized and sequential engines, got {engines}")
    low = int(np.argmin(seq.median)) + 1
    vec_raw = np.array([s.raw for s in vec.seeds])
    seq_raw = np.array([s.raw for s in seq.seeds])
    return [
        compare("seeds=1 vs seed 0 of seeds=8 sequential", one.seeds[0].raw, seq.seeds[0].raw),
        compare(
            f"seeds=8 vectorized vs sequential, steps 1-{low} (to the median curve's minimum)",
            vec_raw[:, :low].ravel(),
            seq_raw[:, :low].ravel(),
            tol=VMAP_REL_TOL,
        ),
        compare(
            f"seeds=8 vectorized vs sequential, all steps (suggestions {lr_text(vec.suggestion)} "
            f"and {lr_text(seq.suggestion)})",
            vec_raw.ravel(),
            seq_raw.ravel(),
            tol=None,
        ),
    ]


# --- timing ---------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    finally:
        gc.enable()


def measure(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """A warm-up run of each, then ``repeats`` rounds timing each once, in a rotating order."""
    for fn in contenders.values():
        fn()
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(timed(contenders[name]))
    return times


def contenders_for(setup: Setup) -> dict[str, Callable[[], object]]:
    def seeds(k: int, vectorize: bool) -> Callable[[], object]:
        return lambda: lrtune_run(setup, setup.loader, seeds=k, vectorize=vectorize, seed=0)

    wide = wide_batches(setup, SEEDS)
    runs: dict[str, Callable[[], object]] = {
        "bare": lambda: bare_loop(setup),
        "lrtune": lambda: lrtune_sweep(setup),
    }
    if tlf is not None:
        runs["tlf"] = lambda: tlf_sweep(setup)
    runs |= {
        "k1": seeds(1, False),
        "k8v": seeds(SEEDS, True),
        "k8s": seeds(SEEDS, False),
        "data8": lambda: draw_seeded_batches(setup, SEEDS),
        "bare512": lambda: bare_loop(setup, wide),
    }
    return runs


# --- report ---------------------------------------------------------------------------------

LABELS = {
    "bare": "bare loop (hand-written)",
    "lrtune": "lrtune `find_lr(seeds=1)`",
    "tlf": f"pytorch-lr-finder {getattr(tlf, '__version__', '0.2.2')} (`range_test` + `reset`)",
    "k1": "lrtune `seeds=1`",
    "k8v": f"lrtune `seeds={SEEDS}, vectorize=True`",
    "k8s": f"lrtune `seeds={SEEDS}, vectorize=False`",
}


def environment(threads: int, load: tuple[float, float]) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        cpu = found.group(1).strip() if found else cpu
    tlf_version = "not installed"
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        tlf_version = version("torch-lr-finder")
    return (
        f"lrtune {lrtune.__version__}, torch {torch.__version__} ({threads} thread"
        f"{'s' if threads > 1 else ''}), torch-lr-finder {tlf_version}, numpy {np.__version__}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{cpu}, {os.cpu_count()} logical CPUs; 1-minute load average {load[0]:.2f} at start, "
        f"{load[1]:.2f} at end (this benchmark counts for 1)"
    )


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def timing_rows(names: Sequence[str], times: dict[str, list[float]]) -> list[str]:
    rows = ["| Contender | Median (ms) | Min-max (ms) |", "|---|---:|---:|"]
    for name in names:
        if name in times:
            ts = times[name]
            rows.append(
                f"| {LABELS[name]} | {ms(statistics.median(ts))} | {ms(min(ts))}-{ms(max(ts))} |"
            )
    return rows


RATIOS = {  # name -> (numerator, denominator)
    "lrtune / bare loop": ("lrtune", "bare"),
    "lrtune / pytorch-lr-finder": ("lrtune", "tlf"),
    "K=8 vectorized / K=1": ("k8v", "k1"),
    "K=8 sequential / K=1": ("k8s", "k1"),
}


def ratio_rows(times: dict[str, list[float]]) -> list[str]:
    """Ratios of medians (judged against the targets), and of minima as a check on noise."""
    rows = [
        "| Ratio | Of medians | Of minima | Target | Met (medians) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, (num, den) in RATIOS.items():
        if num not in times or den not in times:
            continue
        value = statistics.median(times[num]) / statistics.median(times[den])
        of_min = min(times[num]) / min(times[den])
        target = TARGETS.get(name)
        if target is None:
            rows.append(f"| {name} | {value:.2f} | {of_min:.2f} | (context) | |")
        else:
            met = "yes" if value <= target else "no"
            rows.append(f"| {name} | {value:.2f} | {of_min:.2f} | <= {target:.2f} | {met} |")
    return rows


def diagnostics(times: dict[str, list[float]], steps: int) -> list[str]:
    med = {name: statistics.median(ts) for name, ts in times.items()}
    per_step = (med["lrtune"] - med["bare"]) / steps * 1e6
    lines = [
        f"- lrtune costs {per_step:.0f} us per step more than the bare loop "
        f"(bare loop: {med['bare'] / steps * 1e6:.0f} us per step, snapshot and restore included).",
        f"- Drawing the {steps} x {SEEDS} batches of the {SEEDS} seeded DataLoaders (and stacking "
        f"them) alone takes {ms(med['data8'])} ms, {med['data8'] / med['k8v']:.0%} of the "
        f"vectorized sweep.",
        f"- Compute floor: the bare loop on batches of {SEEDS} x {BATCH_SIZE} rows (one model "
        f"doing the arithmetic of {SEEDS}, no per-copy overhead) takes {ms(med['bare512'])} ms, "
        f"{med['bare512'] / med['bare']:.2f}x the bare loop on {BATCH_SIZE} rows: on this CPU "
        f"and thread count, K={SEEDS} copies cannot cost much less than that times one.",
    ]
    return lines


PROFILE_NOTES = """\
Where the time goes (cProfile, 1 thread). The first run of this benchmark measured lrtune at
1.70x the bare loop and 1.30x pytorch-lr-finder, and K=8 at 5.5x one seed. Three fixes followed
(commit "Range test per-step overhead"): no progress-bar formatting when the bar is off (~60 us
a step), a lean step without the accumulation/AMP machinery when neither is used (~30 us), and
seeded batches of a `TensorDataset` taken by slicing a seeded permutation instead of collating
64 samples one by one (~145 us -> ~7 us a batch, 8 batches a step with 8 seeds).

- **Single sweep.** One step of this model is ~160 us, so any per-step Python shows. What is
  left (~35 us a step, the 1.19x) is lrtune's bookkeeping: setting each group's LR from its
  ratio, the generic batch reader (tuple, dict or `loss_fn`), the per-seed smoothing and
  divergence check, and the callback hook; plus ~1 ms per call for the snapshot/restore and the
  suggestions. It is a fixed cost per step: on a model whose step takes 2 ms it is under 2%.
- **pytorch-lr-finder** does the bare loop's work plus, every step, an `_LRScheduler.step()`
  and a deprecation `warnings.warn` from calling `get_lr()` outside `step()`.
- **Multi-seed.** (1) Arithmetic: 8 copies are 8x the FLOPs of one, and on one CPU thread this
  model is big enough for that to show (the compute floor above: 8 x 64 rows cost 2.6x 64 rows
  with no per-copy overhead at all). (2) Dispatch: `vmap(grad_and_value(functional_call(...)))`
  costs ~0.5 ms a step more than a plain module call. Hence K=8 <= 2x K=1 is out of reach on
  one CPU thread for this model, whatever the library does; the vectorized sweep still beats
  eight sequential ones. On a GPU, where a step of a model this small is bound by kernel
  launches, the K copies share each launch, which is the case the vectorized engine is for
  (not measured: no GPU was available to this session).
- Every contender syncs with the host once per step (`loss.item()`): a range test needs each
  step's loss to smooth it and stop at divergence, so no contender can queue steps ahead.
"""


@dataclass
class RunInfo:
    """What the report says about how and where it was measured."""

    when: str
    env: str
    repeats: int
    threads: int
    n_batches: int


def report(times: dict[str, list[float]], checks: list[Agreement], info: RunInfo) -> str:
    command = f".venv/bin/python bench/finder.py --repeats {info.repeats} --threads {info.threads}"
    lines = [
        SECTION_HEADING,
        "",
        f"Measured {info.when} by `{command}` (with `--write`, which rewrites this section).",
        "",
        f"Environment: {info.env}.",
        "",
        "MLP 64-128-10 (`build_model('mlp', digits, {'hidden': [128]}, seed=0)`), SGD momentum "
        f"0.9, LR {START_LR:g} -> {END_LR:g} exponential over {NUM_ITER} steps, no divergence "
        f"stop. Median of {info.repeats} rounds after a warm-up; times include each contender's "
        "snapshot and restore of the weights and its optimizer's creation. Every contender "
        "copies the loss to the host every step (`loss.item()`), as a range test needs it.",
        "",
        f"Single sweep, the same {info.n_batches} pre-built batches of {BATCH_SIZE} in the "
        "same order for all:",
        "",
        *timing_rows(["bare", "lrtune", "tlf"], times),
        "",
        f"Multi-seed, `DataLoader(batch_size={BATCH_SIZE}, shuffle=True)`, `seed=0`:",
        "",
        *timing_rows(["k1", "k8v", "k8s"], times),
        "",
        *ratio_rows(times),
        "",
        "Curve agreement (checked before timing):",
        "",
        *[f"- {check.line()}" for check in checks],
        "",
        "Diagnostics from the same run:",
        "",
        *diagnostics(times, NUM_ITER),
        "",
        "pytorch-lr-finder is driven as documented: an optimizer whose LR is the start LR, "
        f"`range_test(TrainDataLoaderIter(batches), end_lr={END_LR:g}, num_iter={NUM_ITER}, "
        f"step_mode='exp', diverge_th={NO_DIVERGE:g})` with its default "
        f"`smooth_f={TLF_SMOOTH_F}`, then `reset()` (timed: it restores the weights). Its "
        "progress bar is disabled as lrtune's is (`tqdm(..., disable=True)`), and its closing "
        "`print` goes to a buffer.",
        "",
        PROFILE_NOTES,
    ]
    return "\n".join(lines)


def replace_section(text: str, heading: str, body: str) -> str:
    """``text`` with the section under ``heading`` (up to the next ``## `` or EOF) replaced."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    section = body.rstrip("\n") + "\n"
    if start is None:
        prefix = text.rstrip("\n") + "\n\n" if text.strip() else "# Benchmarks\n\n"
        return prefix + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    after = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + after if after else "")


def write_doc(body: str) -> None:
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    current = DOC_PATH.read_text() if DOC_PATH.exists() else ""
    DOC_PATH.write_text(replace_section(current, SECTION_HEADING, body))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="one timed round: a smoke test")
    parser.add_argument("--write", action="store_true", help=f"update {DOC_PATH.name}")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = load_average()
    torch.set_num_threads(args.threads)
    disable_tlf_progress_bar()
    setup = make_setup()
    checks = check_curves(setup)
    for check in checks:
        print(check.line(), file=sys.stderr)
    if not all(check.ok for check in checks):
        raise SystemExit("the contenders do not compute the same curves: timings would mislead")
    if tlf is None:
        print("torch-lr-finder is not installed: skipping it", file=sys.stderr)
    times = measure(contenders_for(setup), args.repeats)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    threads = torch.get_num_threads()
    env = environment(threads, (load_start, load_average()))
    info = RunInfo(when, env, args.repeats, threads, len(setup.batches))
    body = report(times, checks, info)
    print(body)
    if args.write:
        write_doc(body)
        print(f"wrote {DOC_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
