"""The LR range test (Leslie Smith, 2015): train briefly while the LR grows, stop at divergence.

The whole test reads top to bottom in this file: the LR sequence, the smoothed-loss tracker
with its divergence stop, the engine that takes one optimizer step per point, the sweep loop,
and :func:`find_lr`, which snapshots the model, runs one sweep per seed and builds the result.
Several seeds of a small model run as one vectorized sweep (see :mod:`lrtune._multiseed`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from lrtune import find_lr
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x = torch.randn(512, 10); y = (x[:, 0] > 0).long()
    >>> batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 512, 32)]
    >>> model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    >>> result = find_lr(model, batches, num_iter=60, progress=False)
    >>> 1e-4 < result.suggestion < 10
    True
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lrtune._multiseed import VectorizeUnsupported, VmapEngine
from lrtune._state import preserved, reinitialize, seed_torch
from lrtune.batches import Criterion, LossFn, batch_loss, endless, move_to, seeded_order
from lrtune.device import resolve_device
from lrtune.optimizers import clone_optimizer, group_lr_ratios
from lrtune.result import LRFinderResult, RangeTestConfig, SeedCurve

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, float, Sequence[float]], None]


def lr_sequence(
    start_lr: float, end_lr: float, num_iter: int, mode: Literal["exp", "linear"] = "exp"
) -> np.ndarray:
    """The LR of each step: from ``start_lr`` to exactly ``end_lr`` at the last step.

    >>> lr_sequence(1e-3, 1.0, 4).round(6).tolist()
    [0.001, 0.01, 0.1, 1.0]
    """
    if num_iter < 2:
        raise ValueError(f"num_iter must be >= 2 to span a range, got {num_iter}")
    if not (start_lr > 0 and math.isfinite(start_lr)):
        raise ValueError(f"start_lr must be a positive finite number, got {start_lr}")
    if not math.isfinite(end_lr):
        raise ValueError(f"end_lr must be finite, got {end_lr}")
    if not end_lr > start_lr:
        raise ValueError(f"end_lr ({end_lr}) must be greater than start_lr ({start_lr})")
    if mode == "exp":
        return np.geomspace(start_lr, end_lr, num_iter)
    if mode == "linear":
        return np.linspace(start_lr, end_lr, num_iter)
    raise ValueError(f"mode must be 'exp' or 'linear', got {mode!r}")


@dataclass
class LossTracker:
    """Debiased exponential smoothing per seed, and the divergence stop.

    The bias correction divides by ``1 - beta**(t + 1)`` with ``t`` counted from 0, so the first
    smoothed point equals the first loss (an off-by-one here makes the curve rise at the start).
    A seed diverges at its first non-finite loss, or when its smoothed loss rises too far above
    its best (``best``, with ``initial`` its first loss and ``t`` the ``diverge_threshold``):

    - ``best > 0``: ``smoothed > t * best``, pytorch-lr-finder's and fastai's rule;
    - ``best <= 0`` (losses that can be negative, e.g. Gaussian NLL), where a multiple of the
      best means nothing: ``smoothed - best > (t - 1) * max(|initial|, initial - best)``, the
      rise measured on the loss's own scale (the larger of its starting magnitude and how far
      it has come down).

    A diverged seed records nothing afterwards.
    """

    seeds: int
    beta: float = 0.98
    diverge_threshold: float | None = 4.0
    raw: list[list[float]] = field(init=False)
    smoothed: list[list[float]] = field(init=False)
    diverged_at: list[int | None] = field(init=False)

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 1:
            raise ValueError(f"smooth_beta must be in [0, 1), got {self.beta}")
        if self.diverge_threshold is not None and not self.diverge_threshold > 1:
            raise ValueError(f"diverge_threshold must be > 1 or None, got {self.diverge_threshold}")
        self.raw = [[] for _ in range(self.seeds)]
        self.smoothed = [[] for _ in range(self.seeds)]
        self.diverged_at = [None] * self.seeds
        self._avg = [0.0] * self.seeds  # Python floats: numpy scalars are slow per step
        self._best = [math.inf] * self.seeds
        self._initial = [math.nan] * self.seeds

    @property
    def active(self) -> list[int]:
        return [k for k in range(self.seeds) if self.diverged_at[k] is None]

    def update(self, step: int, losses: Sequence[float]) -> None:
        for k in self.active:
            loss = float(losses[k])
            self.raw[k].append(loss)
            if not math.isfinite(loss):
                self.smoothed[k].append(math.nan)
                self.diverged_at[k] = step
                continue
            self._avg[k] = self.beta * self._avg[k] + (1 - self.beta) * loss
            smooth = self._avg[k] / (1 - self.beta ** (len(self.raw[k])))
            self.smoothed[k].append(smooth)
            if len(self.raw[k]) == 1:
                self._initial[k] = smooth
            self._best[k] = min(self._best[k], smooth)
            if self._rose_too_far(smooth, self._best[k], self._initial[k]):
                self.diverged_at[k] = step

    def _rose_too_far(self, smooth: float, best: float, initial: float) -> bool:
        if self.diverge_threshold is None:
            return False
        if best > 0:
            return smooth > self.diverge_threshold * best
        scale = max(abs(initial), initial - best)
        return smooth - best > (self.diverge_threshold - 1) * scale


class SweepEngine(Protocol):
    """What :func:`run_sweep` steps: ``copies`` models trained side by side, one point each."""

    copies: int

    def train_step(self, lr: float) -> np.ndarray:
        """One optimizer step of every copy at ``lr`` (scaled per group); the copies' losses."""
        ...

    def val_loss(self, batches: Sequence[Any]) -> np.ndarray:
        """Every copy's mean loss on ``batches`` in eval mode, without training."""
        ...


class ModuleEngine:
    """One model, one optimizer: each call is one optimizer step over ``accumulation_steps``
    micro-batches, with every param group's LR set to ``lr`` times its ratio to group 0."""

    copies = 1

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        batches: Iterable[Any],
        compute_loss: Callable[[nn.Module, Any], Tensor],
        lr_ratios: Sequence[float],
        device: torch.device,
        accumulation_steps: int = 1,
        amp: bool = False,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.batches = endless(batches)
        self.compute_loss = compute_loss
        self.lr_ratios = list(lr_ratios)
        self.device = device
        self.accumulation_steps = accumulation_steps
        self.amp = amp
        self.scaler = torch.amp.GradScaler("cuda") if amp else None

    def train_step(self, lr: float) -> np.ndarray:
        for group, ratio in zip(self.optimizer.param_groups, self.lr_ratios, strict=True):
            group["lr"] = lr * ratio
        self.optimizer.zero_grad(set_to_none=True)
        if self.accumulation_steps == 1 and not self.amp:  # the common case, kept lean
            loss = self.compute_loss(self.model, move_to(next(self.batches), self.device))
            loss.backward()
            mean_loss = loss.item()
        else:
            mean_loss = self._accumulate_gradients()
        if math.isfinite(mean_loss):  # a non-finite step ends this sweep; don't apply it
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        return np.array([mean_loss])

    def _accumulate_gradients(self) -> float:
        total = torch.zeros((), device=self.device)
        for _ in range(self.accumulation_steps):
            batch = move_to(next(self.batches), self.device)
            with torch.autocast(self.device.type, enabled=self.amp):
                loss = self.compute_loss(self.model, batch)
            scaled = loss / self.accumulation_steps
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            total += loss.detach().float()
        return total.item() / self.accumulation_steps

    @torch.no_grad()
    def val_loss(self, batches: Sequence[Any]) -> np.ndarray:
        self.model.eval()
        try:
            losses = [self.compute_loss(self.model, batch).float().item() for batch in batches]
        finally:
            self.model.train()
        return np.array([float(np.mean(losses))])


@dataclass
class SweepPlan:
    """What every sweep of one range test shares: model, optimizer recipe, data, seeds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_data: Iterable[Any]
    compute_loss: Callable[[nn.Module, Any], Tensor]
    lr_ratios: list[float]
    device: torch.device
    accumulation_steps: int
    seeds: list[int | None]
    reinit: bool
    amp: bool


@dataclass
class SweepOptions:
    lrs: np.ndarray
    beta: float
    diverge_threshold: float | None
    val_batches: list[Any] | None
    val_every: int
    progress: bool
    callback: StepCallback | None


def run_sweep(engine: SweepEngine, opts: SweepOptions, desc: str) -> list[SeedCurve]:
    """Step ``engine`` through the LRs until every copy diverged or the sequence ends."""
    tracker = LossTracker(engine.copies, opts.beta, opts.diverge_threshold)
    val: list[list[tuple[int, float]]] = [[] for _ in range(engine.copies)]
    last = len(opts.lrs) - 1
    bar = tqdm(total=len(opts.lrs), desc=desc, disable=None if opts.progress else True, leave=False)
    with bar:
        for step, lr in enumerate(opts.lrs):
            losses = engine.train_step(float(lr))
            tracker.update(step, losses)
            if opts.val_batches and (step % opts.val_every == 0 or step == last):
                val_losses = engine.val_loss(opts.val_batches)
                for k in tracker.active:
                    val[k].append((step, float(val_losses[k])))
            if opts.callback is not None:
                opts.callback(step, float(lr), [float(v) for v in losses])
            bar.update()
            if not bar.disable:  # formatting costs more than a tiny model's step
                bar.set_postfix(
                    lr=f"{lr:.2e}", loss=f"{float(np.median(losses)):.4g}", refresh=False
                )
            if not tracker.active:
                break
    return [
        SeedCurve(
            raw=tracker.raw[k],
            smoothed=tracker.smoothed[k],
            diverged_at=tracker.diverged_at[k],
            val=val[k],
        )
        for k in range(engine.copies)
    ]


def find_lr(
    model: nn.Module,
    train_data: Iterable[Any],
    optimizer: torch.optim.Optimizer | None = None,
    criterion: Criterion | None = None,
    *,
    loss_fn: LossFn | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_iter: int = 100,
    mode: Literal["exp", "linear"] = "exp",
    smooth_beta: float = 0.98,
    diverge_threshold: float | None = 4.0,
    accumulation_steps: int = 1,
    val_data: Iterable[Any] | None = None,
    val_every: int = 10,
    val_batches: int = 4,
    seeds: int = 1,
    seed: int | None = None,
    reinit: bool = False,
    vectorize: bool | Literal["auto"] = "auto",
    device: str | torch.device = "auto",
    amp: bool = False,
    progress: bool = True,
    callback: StepCallback | None = None,
) -> LRFinderResult:
    """Run the LR range test on ``model`` and suggest a learning rate.

    The model's parameters and their ``.grad``, its buffers (non-persistent ones too), extra
    state, train/eval modes and every RNG are restored exactly afterwards, also when the test
    raises midway; a run on CPU never initialises CUDA. The given optimizer is only read (its
    class, param groups and hyperparameters), never stepped, so an attached scheduler is fine.

    Args:
        model: the model to test, on any device.
        train_data: a DataLoader or any re-iterable of batches (see :mod:`lrtune.batches`).
        optimizer: the optimizer to emulate; default SGD with momentum 0.9. Param groups keep
            their LR ratios to group 0; the curve is reported against group 0's LR.
        criterion: ``criterion(output, target)``; default ``nn.CrossEntropyLoss()``.
        loss_fn: ``loss_fn(model, batch) -> loss`` for batches of any other shape.
        start_lr, end_lr, num_iter, mode: the sweep; ``end_lr`` is reached at the last step.
        smooth_beta: EMA factor of the debiased loss smoothing.
        diverge_threshold: stop once the smoothed loss exceeds this times its best (None: never);
            for a best at or below 0, once it rises above the best by (this - 1) times the
            larger of ``|first loss|`` and ``first loss - best`` (see :class:`LossTracker`).
        accumulation_steps: micro-batches per optimizer step (one point per optimizer step).
        val_data, val_every, val_batches: also record the loss on the first ``val_batches``
            batches of ``val_data`` every ``val_every`` steps.
        seeds: number of independent sweeps, differing in data order (and weights if
            ``reinit``); several seeds give a median curve, a band and a confidence.
        seed: base seed of the data orders; ``None`` with one seed keeps the data's own order.
        reinit: re-initialise each seed's weights (``reset_parameters``) from its seed.
        vectorize: run the seeds as one ``torch.func.vmap`` sweep: "auto" where it applies,
            True to require it, False for one sweep after another. With "auto", a step whose
            batches cannot be stacked (uneven batches) drops the vectorized sweep and runs the
            seeds one after another from the start, giving exactly the curves of False.
        device: "auto" (CUDA when present), "cpu", "cuda", ...
        amp: mixed precision (autocast + GradScaler) on CUDA; ignored on CPU.
        progress: show a progress bar on stderr.
        callback: ``callback(step, lr, losses_per_seed)`` after every step of every sweep
            (sequential sweeps each count steps from 0, a dropped vectorized one included).
    """
    lrs = lr_sequence(start_lr, end_lr, num_iter, mode)
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if val_data is not None and (val_every < 1 or val_batches < 1):
        raise ValueError("val_every and val_batches must be >= 1")
    LossTracker(1, smooth_beta, diverge_threshold)  # validates both before any training
    if next(model.parameters(), None) is None:
        raise ValueError("the model has no parameters to train")
    target = resolve_device(device)
    if amp and target.type != "cuda":
        warnings.warn("amp=True needs CUDA; running in full precision on CPU", stacklevel=2)
        amp = False
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=start_lr, momentum=0.9)
    criterion = criterion if criterion is not None or loss_fn else nn.CrossEntropyLoss()
    ratios = group_lr_ratios(optimizer)
    _check_optimizer_params(optimizer, model)

    def compute_loss(m: nn.Module, batch: Any) -> Tensor:
        return batch_loss(m, batch, criterion, loss_fn)

    if vectorize is True and amp:
        raise ValueError("vectorize=True cannot run with amp=True: vmap sweeps use full precision")
    plan = SweepPlan(
        model,
        optimizer,
        train_data,
        compute_loss,
        ratios,
        target,
        accumulation_steps,
        _seed_values(seeds, seed),
        reinit,
        amp,
    )
    with preserved(model, target):
        model.to(target).train()
        val = _take_val_batches(val_data, val_batches, target) if val_data is not None else None
        opts = SweepOptions(lrs, smooth_beta, diverge_threshold, val, val_every, progress, callback)
        curves = None
        if seeds > 1 and vectorize and not amp:
            curves = _vectorized_sweep(plan, opts, required=vectorize is True)
        engine_name = "sequential" if curves is None else "vectorized"
        if curves is None:
            curves = _sequential_sweeps(plan, opts)
    return LRFinderResult.from_curves(
        lrs=lrs,
        curves=curves,
        group_lr_ratios=ratios,
        config=RangeTestConfig(
            start_lr=start_lr,
            end_lr=end_lr,
            num_iter=num_iter,
            mode=mode,
            smooth_beta=smooth_beta,
            diverge_threshold=diverge_threshold,
            accumulation_steps=accumulation_steps,
            seeds=seeds,
            seed=seed,
            reinit=reinit,
            optimizer=type(optimizer).__name__,
            device=str(target),
            amp=amp,
            engine=engine_name,
        ),
    )


def _seed_values(seeds: int, seed: int | None) -> list[int | None]:
    if seeds == 1:
        return [seed]
    base = 0 if seed is None else seed
    return [base + k for k in range(seeds)]


def _check_optimizer_params(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    model_params = {id(p) for p in model.parameters()}
    foreign = sum(id(p) not in model_params for g in optimizer.param_groups for p in g["params"])
    if foreign:
        raise ValueError(f"the optimizer holds {foreign} parameter(s) that are not in the model")


def _take_val_batches(data: Iterable[Any], count: int, device: torch.device) -> list[Any]:
    batches = []
    for batch in data:
        batches.append(move_to(batch, device))
        if len(batches) == count:
            break
    if not batches:
        raise ValueError("val_data yielded no batches")
    return batches


def _sequential_sweeps(plan: SweepPlan, opts: SweepOptions) -> list[SeedCurve]:
    """One sweep per seed, each from the same state; find_lr's own snapshot restores the last."""
    curves: list[SeedCurve] = []
    last = len(plan.seeds) - 1
    for k, seed in enumerate(plan.seeds):
        with preserved(plan.model) if k < last else contextlib.nullcontext():
            if seed is not None:
                seed_torch(seed)
                if plan.reinit:
                    reinitialize(plan.model, seed)
            engine = ModuleEngine(
                plan.model,
                clone_optimizer(plan.optimizer),
                seeded_order(plan.train_data, seed),
                plan.compute_loss,
                plan.lr_ratios,
                plan.device,
                plan.accumulation_steps,
                plan.amp,
            )
            desc = "LR range test" if len(plan.seeds) == 1 else f"LR range test, seed {k + 1}"
            curves.extend(run_sweep(engine, opts, desc))
    return curves


def _vectorized_sweep(
    plan: SweepPlan, opts: SweepOptions, required: bool
) -> list[SeedCurve] | None:
    """All seeds as one vmap sweep, or None (after logging why) where that cannot apply.

    It cannot apply when the model, optimizer or first batches fail a vmap step, or at the first
    step whose batches cannot be stacked (uneven batches: each seed's order puts a short batch at
    another step). The sweep so far is then dropped: the caller's sequential sweeps start over,
    so the curves are exactly theirs. The model is only read here, never trained.
    """
    try:
        engine = VmapEngine(
            plan.model,
            plan.optimizer,
            [seeded_order(plan.train_data, s) for s in plan.seeds],
            plan.compute_loss,
            plan.lr_ratios,
            plan.device,
            plan.accumulation_steps,
            [int(s) for s in plan.seeds if s is not None],
            plan.reinit,
        )
        engine.check()
        seed_torch(plan.seeds[0] or 0)  # dropout masks; restored with the RNG afterwards
        return run_sweep(engine, opts, f"LR range test, {len(plan.seeds)} seeds")
    except VectorizeUnsupported as exc:
        if required:
            raise ValueError(f"vectorize=True, but the seeds cannot be vectorized: {exc}") from exc
        logger.info("running seeds one after another: %s", exc)
        return None
