"""Figures for a finished job: the recommended LR schedule and the trial history.

Both return a matplotlib ``Figure`` built without pyplot (safe off the main thread and
headless); the loss-vs-LR curve is :meth:`lrtune.LRFinderResult.plot`.

Example:
    >>> from lrtune.recommendation import TrialSummary
    >>> trial = TrialSummary(kind="search", number=0, state="COMPLETE", value=0.5,
    ...                      family="cosine", base_lr=0.1, stop_reason=None)
    >>> fig = plot_history([trial], metric="val_loss", direction="minimize")
    >>> fig.axes[0].get_xlabel()
    'trial'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lrtune.recommendation import Recommendation, TrialSummary


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
