"""The answer to a job (:class:`Recommendation`): the recommended schedule, the evidence it was
chosen on, the verdict in words, the comparison table and the paste-ready code."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, SerializationInfo, computed_field, field_serializer

from lrtune._pydantic import JsonFloat, LRSteps, ResultModel
from lrtune.lr_free import code as lr_free_code
from lrtune.recommendation._candidates import (
    ComparisonRow,
    PairedComparison,
    TrainedSchedule,
    TrialSummary,
)
from lrtune.recommendation._pick import (
    comparable,
    compare,
    contenders,
    negligible_difference,
    pick_recommended,
)
from lrtune.result import LRBounds, LRFinderResult
from lrtune.schedules import ScheduleSpec, preview
from lrtune.snippet import job_code
from lrtune.spec import JobSpec


class Recommendation(ResultModel):
    """The recommended schedule and its evidence: what ``lrtune tune --json`` prints.

    ``finalists`` are the search's best distinct schedules in search order, ``baselines`` the
    runs of ``search.baselines`` (constant at the suggestion, the default LR, the
    learning-rate-free optimizers), and ``recommended`` the index of the one recommended
    (:attr:`best`) in ``finalists + baselines``: a baseline may be the answer (see the module
    doc). ``suggested_lr`` is the range test's suggestion
    and ``spread_decades`` how far its seeds disagree (lower is better). ``confirm_seeds`` are
    the seeds the candidates were retrained on, ``search_seed`` the one that chose the
    finalists. ``n_trials`` counts the search's trials by state, ``n_confirmation`` the
    confirmation runs'; ``history`` lists both, each with its ``kind``. Every LR is the LR of a
    parameter whose multiplier is 1; ``group_multipliers`` are the param groups' multipliers in
    the optimizer's order.

    The JSON also carries what is derived from these (``schedule``, ``base_lr``, ``value``,
    ``confirmed``, ``comparison``, ``paired_comparisons``, ``verdict`` and the paste-ready
    ``code``); they are recomputed, not read, when the JSON is validated back.
    """

    study_name: str
    fingerprint: str
    spec: JobSpec
    metric: str
    direction: Literal["minimize", "maximize"]
    finalists: list[TrainedSchedule]
    recommended: int | None = Field(
        description="index of the recommended candidate in finalists + baselines"
    )
    baselines: list[TrainedSchedule]
    suggested_lr: float | None
    spread_decades: float | None
    bounds: LRBounds
    group_multipliers: list[float]
    steps_per_epoch: int
    search_seed: int
    confirm_seeds: list[int]
    lr_curve: LRSteps = Field(
        default_factory=list, description="the recommended schedule's LR of every group per step"
    )
    n_trials: dict[str, int]
    n_confirmation: dict[str, int]
    range_test: LRFinderResult
    history: list[TrialSummary]
    provisional: bool = Field(
        False,
        description="the job ended (cancelled, failed) before its confirmation: this is the "
        "best finished search trial on the search seed alone, unconfirmed",
    )

    @classmethod
    def build(
        cls,
        *,
        spec: JobSpec,
        study_name: str,
        range_test: LRFinderResult,
        bounds: LRBounds,
        finalists: list[TrainedSchedule],
        baselines: list[TrainedSchedule],
        confirm_seeds: list[int],
        steps_per_epoch: int,
        group_multipliers: list[float],
        n_trials: dict[str, int],
        n_confirmation: dict[str, int],
        history: list[TrialSummary],
        provisional: bool = False,
    ) -> Recommendation:
        """Pick the recommended candidate (:func:`pick_recommended`) and preview its LRs.

        ``provisional``: the best so far of a job that ended early (see the field); its LR
        curve is the one its search trial trained with, not a preview (no torch needed).
        """
        direction = spec.search.direction or "minimize"
        everyone = [*finalists, *baselines]
        confirmed = any(c.seed_values for c in everyone)
        distinct = comparable(finalists, baselines, confirmed=confirmed)
        pick = pick_recommended(
            [everyone[k] for k in distinct],
            direction,
            metric=None if confirmed else spec.search.metric,
        )
        rec = cls(
            study_name=study_name,
            fingerprint=spec.fingerprint(),
            spec=spec,
            metric=spec.search.metric,
            direction=direction,
            finalists=finalists,
            recommended=None if pick is None else distinct[pick],
            baselines=baselines,
            suggested_lr=bounds.suggestion,
            spread_decades=range_test.spread_decades,
            bounds=bounds,
            group_multipliers=group_multipliers,
            steps_per_epoch=steps_per_epoch,
            search_seed=spec.seed,
            confirm_seeds=confirm_seeds,
            n_trials=n_trials,
            n_confirmation=n_confirmation,
            range_test=range_test,
            history=history,
            provisional=provisional,
        )
        if provisional:
            rec.lr_curve = rec.best.run.lr_steps if rec.best is not None else []
        else:
            rec.lr_curve = rec._preview_best()
        return rec

    @property
    def best(self) -> TrainedSchedule | None:
        """The recommended candidate, or None when no trial finished."""
        everyone = self.finalists + self.baselines
        return None if self.recommended is None else everyone[self.recommended]

    def _compared(self) -> list[TrainedSchedule]:
        """The candidates the recommendation was chosen among (:func:`comparable`)."""
        everyone = self.finalists + self.baselines
        return [everyone[k] for k in comparable(self.finalists, self.baselines, self.confirmed)]

    @property
    def undecided(self) -> list[TrainedSchedule]:
        """The contenders to retrain on one more seed (adaptive confirmation); [] when decided.

        While the leader and another candidate are inside each other's seed noise and the
        leader has fewer than ``search.confirm_seeds_cap`` seeds, every contender (see
        :func:`contenders`) that has fewer seeds than the cap gets one more.
        """
        if not self.confirmed:
            return []
        candidates = self._compared()
        group = [candidates[i] for i in contenders(candidates, self.direction)]
        cap = self.spec.search.confirm_seeds_cap
        if len(group) < 2 or len(group[0].seed_values) >= cap:
            return []
        return [c for c in group if len(c.seed_values) < cap]

    @computed_field
    @property
    def decided_on_seeds(self) -> int | None:
        """How many confirmation seeds the recommendation was compared on (more than
        ``search.confirm_seeds`` when adaptive confirmation added some); None unconfirmed."""
        return len(self.best.seed_values) if self.best is not None and self.confirmed else None

    @computed_field
    @property
    def schedule(self) -> ScheduleSpec | None:
        """The recommended schedule."""
        return None if self.best is None else self.best.schedule

    @computed_field
    @property
    def base_lr(self) -> float | None:
        """The recommended LR, for a parameter whose multiplier is 1."""
        return None if self.best is None else self.best.base_lr

    @computed_field
    @property
    def value(self) -> JsonFloat | None:
        """The recommended schedule's metric: its confirmed mean, else its search-seed value."""
        if self.best is None:
            return None
        return self.best.mean if self.confirmed else self.best.value(self.metric)

    @computed_field
    @property
    def confirmed(self) -> bool:
        """Whether the recommendation was chosen on confirmation seeds (not the search seed)."""
        return self.best is not None and bool(self.best.seed_values)

    def _preview_best(self) -> list[list[float]]:
        best = self.best
        if best is None:
            return []
        base_lrs = [best.base_lr * m for m in self.group_multipliers]
        if best.schedule.family != "plateau":  # the full planned run
            epochs, metrics = self.spec.search.epochs, None
        else:  # plateau depends on the metric: preview the epochs the run measured
            metrics = [e["val_loss"] for e in best.run.epochs]
            epochs = len(metrics)
            if not metrics:
                return []
        lrs = preview(
            best.schedule,
            base_lrs,
            self.steps_per_epoch,
            epochs,
            metrics=metrics,
            group_multipliers=self.group_multipliers,
        )
        return lrs.tolist()

    def candidates(self) -> list[TrainedSchedule]:
        """Every trained schedule, the recommended first, then other finalists, then baselines."""
        best = self.best
        others = [c for c in self.finalists + self.baselines if c is not best]
        return ([best] if best is not None else []) + others

    @computed_field
    @property
    def paired_comparisons(self) -> list[PairedComparison]:
        """The recommendation against every other candidate it was chosen among (baselines
        and finalists; ``baseline`` names the other one), on the confirmation seeds."""
        best = self.best
        if best is None or not self.confirmed:
            return []
        compared = self._compared()
        negligible = negligible_difference(compared)
        return [
            compare(best, other, self.direction, negligible)
            for other in compared
            if other is not best and not other.same_run(best)
        ]

    @computed_field
    @property
    def comparison(self) -> list[ComparisonRow]:
        """One row per trained schedule (see :meth:`candidates`)."""
        best = self.best
        return [
            ComparisonRow(
                name=c.name,
                role="recommended" if c is best else c.role,
                family=c.schedule.family,
                base_lr=c.base_lr,
                lr_free=c.lr_free,
                trial_number=c.trial_number,
                search_value=c.value(self.metric),
                search_val_loss=c.value("val_loss"),
                epochs=len(c.run.epochs),
                status=c.run.status,
                mean=c.mean,
                std=c.std,
                seed_values=c.confirmed_values(),
            )
            for c in self.candidates()
        ]

    @computed_field
    @property
    def verdict(self) -> str:
        """Why this candidate, and how it compares with the others (the module doc's rule)."""
        if self.best is None:
            return "no trial finished: there is no recommendation"
        if self.provisional:
            return (
                f"provisional: the job ended before its confirmation, so this is the best "
                f"finished search trial so far, {self.best.describe}, {self.metric} "
                f"{self.best.value(self.metric):.4g} on the search seed {self.search_seed} alone: "
                "unconfirmed, and not compared with any baseline"
            )
        if not self.confirmed:
            return self._unconfirmed_verdict()
        seeds = ", ".join(str(s.seed) for s in self.best.seed_values)
        lines = [p.describe(self.metric) for p in self.paired_comparisons]
        text = f"{self._why_this_one()} on confirmation seeds {seeds}"
        first = self.spec.search.confirm_seeds
        if self.decided_on_seeds and self.decided_on_seeds > first:
            text += (
                f" (decided on {self.decided_on_seeds} seeds: after {first}, the best were "
                "inside each other's seed noise, so seeds were added"
            )
            if self.decided_on_seeds >= self.spec.search.confirm_seeds_cap:
                text += ", up to search.max_confirm_seeds"
            text += ")"
        return text + (": " + "; ".join(lines) if lines else ": nothing else to compare with")

    def _why_this_one(self) -> str:
        best = self.best
        assert best is not None
        candidates = self._compared()
        leader = candidates[contenders(candidates, self.direction)[0]]
        if best is not leader:
            head = (
                f"{leader.describe} had the best mean {self.metric}, inside the seed noise of "
                f"the simpler {best.describe}, which is recommended"
            )
        elif best.lr_free is not None:
            head = (
                f"tuning did not beat {best.describe}: it needs no LR, and is recommended "
                f"(best mean {self.metric})"
            )
        elif best.role == "baseline":
            head = (
                f"no schedule beat a constant LR of {best.base_lr:.4g} ({best.name}): it is "
                f"recommended (best mean {self.metric})"
            )
        else:
            head = f"the recommended schedule, {best.describe}, has the best mean {self.metric}"
        return head

    def _unconfirmed_verdict(self) -> str:
        best = self.best
        assert best is not None
        ours = best.value(self.metric)
        lines = []
        for other in self._compared():
            if other is best or other.same_run(best):
                continue
            theirs = other.value(self.metric)
            if not math.isfinite(theirs):
                lines.append(f"beats {other.name} (which diverged)")
                continue
            better = ours > theirs if self.direction == "maximize" else ours < theirs
            word = "beats" if better else ("ties" if ours == theirs else "does NOT beat")
            lines.append(f"{word} {other.name} ({ours:.4g} vs {theirs:.4g} {self.metric})")
        text = f"the recommendation, {best.describe}, " + "; ".join(lines) if lines else ""
        return (
            f"{text or 'nothing else to compare with'} (unconfirmed: chosen and compared on the "
            f"search seed {self.search_seed} alone, so seed noise is not measured)"
        )

    @computed_field
    @property
    def code(self) -> str | None:
        """Paste-ready PyTorch for the recommendation (:meth:`to_code`), None without one.

        Written for the tuned run length; ``GET /v1/jobs/{id}/recommendation?epochs=E`` (and
        ``&steps_per_epoch=S``) and ``lrtune recommend JOB --epochs E`` write it for another.
        In Python: ``to_code(epochs=E)``, or serialize with ``context={"code_for": {"epochs":
        E, "steps_per_epoch": S}}`` (either may be None).
        """
        return None if self.best is None else self.to_code()

    @field_serializer("code")
    def _code_for_run(self, code: str | None, info: SerializationInfo) -> str | None:
        run = info.context.get("code_for") if isinstance(info.context, dict) else None
        return code if code is None or run is None else self.to_code(**run)

    def to_code(
        self,
        model_name: str = "model",
        *,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
    ) -> str:
        """Paste-ready PyTorch: the optimizer at the recommended LR and the scheduler.

        It declares ``epochs`` (and ``steps_per_epoch = len(train_loader)`` for a schedule
        stepped per batch) at the tuned values, saying so, and rescales every schedule length
        from them, so a user who trains longer changes one number. Exec'd on a fresh
        ``model_name`` it reproduces the best trial's LR of every parameter at every step, to
        the 4 significant digits its LRs are written with (see
        :func:`lrtune.snippet.job_code`). ``epochs`` and ``steps_per_epoch`` write it for a
        run of another length: those values, the comment still saying what it was tuned for.

        Raises:
            ValueError: no trial finished; ``epochs`` or ``steps_per_epoch`` outside 1 to
                :data:`~lrtune.schedules.MAX_RUN_EPOCHS` or
                :data:`~lrtune.schedules.MAX_RUN_STEPS_PER_EPOCH`.
        """
        if self.best is None:
            raise ValueError("no trial finished: there is no schedule to write")
        if self.best.lr_free is not None:
            return lr_free_code(self.best.lr_free, self.spec, model_name=model_name, epochs=epochs)
        return job_code(
            self.spec,
            self.best.schedule,
            self.best.base_lr,
            steps_per_epoch=self.steps_per_epoch,
            model_name=model_name,
            run_epochs=epochs,
            run_steps_per_epoch=steps_per_epoch,
        )

    def table(self) -> str:
        """Every trained schedule as an aligned text table, with the verdict underneath.

        The metric column is the search seed's (marked ``*``); mean, std and each seed's value
        are over the confirmation seeds only.
        """
        search_col = f"{self.metric}*"
        names = [f"{c.name} (recommended)" if c is self.best else c.name for c in self.candidates()]
        width = max([32, *map(len, names)])  # "constant at suggestion (recommended)" is 36
        header = f"{'schedule':<{width}} {'family':<24} {'lr':>9} {search_col:>10}"
        if self.confirm_seeds:
            header += f" {'mean':>10} {'std':>9}" + "".join(
                f" {'seed ' + str(s):>10}" for s in self.confirm_seeds
            )
        rows = [header, "-" * len(header)]
        for name, c in zip(names, self.candidates(), strict=True):
            family = c.schedule.family
            if c.lr_free is not None:  # "prodigy (cosine)", "schedule-free (constant)"
                family = f"{c.lr_free.replace('_', '-')} ({family})"
            line = f"{name:<{width}} {family:<24} {c.base_lr:>9.4g} {c.value(self.metric):>10.4g}"
            if self.confirm_seeds:
                by_seed = c.confirmed_values()
                line += f" {_fmt(c.mean):>10} {_fmt(c.std):>9}" + "".join(
                    f" {_fmt(by_seed.get(s)):>10}" for s in self.confirm_seeds
                )
            rows.append(line)
        note = f"* on the search seed ({self.search_seed}), which chose the finalists"
        if self.confirm_seeds:
            note += "; mean and std over the confirmation seeds only"
        return "\n".join([*rows, note, "", self.verdict])


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"
