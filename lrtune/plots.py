"""Figures of a job: the recommended LR schedule, the trial history, the range test as it runs.

Each returns a matplotlib ``Figure`` built without pyplot (headless, no GUI backend); the
finished range test's loss-vs-LR curve is :meth:`lrtune.LRFinderResult.plot`.
:func:`render_png` turns a figure into PNG bytes with the Agg backend, one figure at a time
(matplotlib is not thread-safe; a server renders from its threadpool).

Example:
    >>> from lrtune.recommendation import TrialSummary
    >>> trial = TrialSummary(kind="search", number=0, state="COMPLETE", value=0.5,
    ...                      family="cosine", base_lr=0.1, stop_reason=None)
    >>> fig = plot_history([trial], metric="val_loss", direction="minimize")
    >>> fig.axes[0].get_xlabel()
    'trial'
    >>> live = plot_live_range_test([(1e-4, 2.3, 0), (1e-3, 2.1, 0), (1e-4, 2.4, 1)])
    >>> render_png(lambda: live)[:8] == PNG_SIGNATURE
    True
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lrtune.recommendation import Recommendation, TrialSummary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
"""The eight bytes every PNG file starts with."""

_render_lock = threading.Lock()


def render_png(draw: Callable[[], Figure], dpi: int = 100) -> bytes:
    """The figure ``draw`` builds, as PNG bytes (Agg); one figure is drawn at a time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    with _render_lock:
        fig = draw()
        FigureCanvasAgg(fig)  # the figure's canvas from now on: savefig draws with Agg
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def plot_live_range_test(
    points: Sequence[tuple[float, float, int]], lr_reference: str = "param group 0"
) -> Figure:
    """The range test while it runs: each seed's smoothed loss so far, by LR (log axis).

    ``points`` are ``(lr, smoothed loss, seed)`` as the live feed carries them (the workers'
    progress reports); the median, band and suggestions come with the finished test.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    seeds = sorted({seed for _, _, seed in points})
    for seed in seeds:
        curve = sorted((lr, loss) for lr, loss, s in points if s == seed)
        ax.plot(
            *zip(*curve, strict=True),
            color="tab:blue",
            alpha=0.6 if len(seeds) > 1 else 1.0,
            lw=1.2,
            label=f"seed {seed + 1}" if len(seeds) <= 5 else None,
        )
    ax.set_xscale("log")
    ax.set_xlabel(f"learning rate ({lr_reference})")
    ax.set_ylabel("loss (smoothed, so far)")
    ax.set_title(
        f"range test running: {len(points)} points from {len(seeds)} seed"
        f"{'s' if len(seeds) > 1 else ''}; suggestions follow when it ends",
        fontsize="medium",
    )
    if len(seeds) <= 5:
        ax.legend(fontsize="small", loc="upper right")  # the curve starts at the left
    ax.grid(alpha=0.3)
    return fig


def plot_schedule(rec: Recommendation) -> Figure:
    """The recommended schedule's LR at every optimizer step, one line per param group."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    curve = list(zip(*rec.lr_curve, strict=True)) if rec.lr_curve else []
    for group, lrs in enumerate(curve):
        ax.plot(range(len(lrs)), lrs, label=f"group {group}" if len(curve) > 1 else None)
    family = rec.schedule.family if rec.schedule else "none"
    ax.set_title(f"recommended schedule: {family}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    for epoch in range(1, len(rec.lr_curve) // max(rec.steps_per_epoch, 1)):
        ax.axvline(epoch * rec.steps_per_epoch, color="0.9", lw=0.5, zorder=0)
    if len(curve) > 1:
        ax.legend(fontsize="small")
    return fig


def plot_history(history: Sequence[TrialSummary], metric: str, direction: str) -> Figure:
    """Each search trial's final value by number (pruned trials hollow), and the best so far.

    Confirmation runs (``kind`` "confirmation") are not search trials and are left out.
    """
    from matplotlib.figure import Figure

    history = [t for t in history if t.kind == "search"]

    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.add_subplot()
    complete = [t for t in history if t.state == "COMPLETE" and t.value is not None]
    pruned = [t for t in history if t.state == "PRUNED" and t.value is not None]
    ax.scatter([t.number for t in complete], [t.value for t in complete], label="complete")
    ax.scatter(
        [t.number for t in pruned],
        [t.value for t in pruned],
        facecolors="none",
        edgecolors="tab:gray",
        label="pruned (last report)",
    )
    best, running = [], None
    pick = max if direction == "maximize" else min
    for t in sorted(complete, key=lambda t: t.number):
        running = t.value if running is None else pick(running, t.value)
        best.append((t.number, running))
    if best:
        ax.step(*zip(*best, strict=True), where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    return fig
