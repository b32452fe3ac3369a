"""The schedule search: range test, then an Optuna study over LR schedules, then a recommendation.

A job runs in three steps, which a single process (:func:`tune`) or a fleet can share:

1. :func:`prepare_study`, once per job: run the multi-seed range test, store its result and the
   LR bounds on the study, and enqueue the trial budget: ``n_trials`` WAITING trials, the first
   few fixed to the obvious answers (one-cycle, cosine, constant at the suggestion), the rest
   left to the sampler. Enqueuing happens here only, never in workers.
2. :func:`run_trials`, in any number of processes sharing the storage: each pops WAITING trials
   until none is left. Workers never create trials beyond the queue, so the study ends with
   exactly ``n_trials`` finished trials however many workers share it. A crashed worker's trial
   goes stale (Optuna's heartbeat), is re-queued with the same parameters, and resumes from the
   last epoch checkpoint.
3. :func:`recommend`: the best schedule, compared with a constant LR at the suggestion and with
   the optimizer's common default LR, trained for the same epochs and seed.

Example:
    >>> from lrtune.spec import JobSpec
    >>> spec = JobSpec.model_validate({
    ...     "model": {"name": "logreg"}, "dataset": {"name": "wine"},
    ...     "range_test": {"seeds": 2, "num_iter": 40},
    ...     "search": {"n_trials": 3, "epochs": 2, "families": ["constant", "cosine"]}})
    >>> rec = tune(spec, progress=False)
    >>> rec.n_trials["complete"] + rec.n_trials["pruned"]
    3
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from tqdm.auto import tqdm

from lrtune.finder import StepCallback, find_lr
from lrtune.recommendation import Baseline, Recommendation
from lrtune.result import LRFinderResult
from lrtune.schedules import parse_schedule
from lrtune.space import LRBounds, search_bounds, suggest_schedule, warm_starts
from lrtune.spec import JobSpec
from lrtune.storage import open_storage
from lrtune.training import StopTraining, TrainingRun, TrainingSetup, train

logger = logging.getLogger(__name__)

ATTR_SPEC = "lrtune.spec"
ATTR_RANGE_TEST = "lrtune.range_test"
ATTR_BOUNDS = "lrtune.bounds"
ATTR_BASELINES = "lrtune.baselines"
ATTR_SLOT = "lrtune.slot"
ATTR_ROOT = "lrtune.root_trial"

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialBudgetSpent(Exception):
    """The study's queue is empty: every trial of the budget has been handed out."""


class _QueuedStudy(optuna.Study):
    """A study whose ``ask`` only hands out queued trials instead of creating new ones.

    Optuna's ``_pop_waiting_trial_id`` claims a WAITING trial atomically in the storage (one
    conditional UPDATE), so two workers never get the same trial; refusing to fall back to
    ``create_new_trial`` is what keeps the trial count exact under concurrency.
    """

    def _pop_waiting_trial_id(self) -> int | None:
        trial_id = super()._pop_waiting_trial_id()
        if trial_id is None:
            raise TrialBudgetSpent
        return trial_id


def make_sampler(spec: JobSpec) -> optuna.samplers.BaseSampler:
    """TPE with explicit settings for a conditional space (Optuna's defaults changed in 5.0)."""
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            multivariate=True,
            group=True,
            constant_liar=True,
            seed=spec.seed,
            n_startup_trials=max(3, min(10, spec.search.n_trials // 3)),
        )


def make_pruner(spec: JobSpec) -> optuna.pruners.BasePruner:
    if spec.search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=spec.search.epochs, reduction_factor=3
        )
    if spec.search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def range_test(
    setup: TrainingSetup, *, progress: bool = True, callback: StepCallback | None = None
) -> LRFinderResult:
    """The job's multi-seed range test on its model, data, optimizer and param groups."""
    spec, options = setup.spec, setup.spec.range_test
    model = setup.build_model()
    optimizer = setup.build_optimizer(model, options.start_lr)
    return find_lr(
        model,
        setup.train_loader(torch.Generator().manual_seed(spec.seed)),
        optimizer,
        setup.bundle.loss_fn(),
        **options.model_dump(),  # RangeTestSpec's fields are find_lr's keyword names
        seed=spec.seed,
        device=setup.device,
        progress=progress,
        callback=callback,
    )


def open_study(spec: JobSpec, storage: str | optuna.storages.BaseStorage | None) -> optuna.Study:
    """Create the job's study, or load it when it exists (a resumed or shared job)."""
    if storage is None or isinstance(storage, str):
        storage = open_storage(storage)
    study = optuna.create_study(
        storage=storage,
        study_name=spec.study_name(),
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        direction=spec.search.direction,
        load_if_exists=True,
    )
    return _QueuedStudy(
        study_name=study.study_name, storage=storage, sampler=study.sampler, pruner=study.pruner
    )


def prepare_study(
    spec: JobSpec,
    storage: str | optuna.storages.BaseStorage | None = None,
    *,
    setup: TrainingSetup | None = None,
    progress: bool = True,
) -> optuna.Study:
    """Run the range test and enqueue the trial budget, unless an earlier run already did.

    Safe to call again after a crash: the range test is kept on the study, and only the budget
    slots that are not yet in the study are enqueued.
    """
    study = open_study(spec, storage)
    stored = study.user_attrs.get(ATTR_SPEC)
    if stored is not None and JobSpec.model_validate(stored) != spec:
        raise ValueError(f"study {spec.study_name()!r} exists with a different job spec")
    if ATTR_BOUNDS not in study.user_attrs:
        setup = setup or TrainingSetup.from_spec(spec)
        result = range_test(setup, progress=progress)
        bounds = search_bounds(result, lr_scale=1 / setup.group_multipliers[0])
        study.set_user_attr(ATTR_SPEC, spec.model_dump(mode="json"))
        study.set_user_attr(ATTR_RANGE_TEST, result.to_dict())
        study.set_user_attr(ATTR_BOUNDS, bounds.to_dict())
    _enqueue_budget(study, spec, stored_bounds(study))
    return study


def stored_bounds(study: optuna.Study) -> LRBounds:
    return LRBounds.from_dict(study.user_attrs[ATTR_BOUNDS])


def stored_range_test(study: optuna.Study) -> LRFinderResult:
    return LRFinderResult.from_dict(study.user_attrs[ATTR_RANGE_TEST])


def _enqueue_budget(study: optuna.Study, spec: JobSpec, bounds: LRBounds) -> None:
    """Enqueue every budget slot that has no live trial.

    A slot whose trials all FAILED (an interrupted run: Ctrl-C, an error) is enqueued again with
    the same parameters and root trial, so the retry resumes from that trial's checkpoint.
    """
    search = spec.search
    trials = study.get_trials(deepcopy=False)
    live = {t.user_attrs.get(ATTR_SLOT) for t in trials if t.state != TrialState.FAIL}
    failed = {t.user_attrs.get(ATTR_SLOT): t for t in trials if t.state == TrialState.FAIL}
    starts = warm_starts(search.families, bounds, search.epochs, search.warmup)
    for slot in range(search.n_trials):
        if slot in live:
            continue
        if slot in failed:
            study.enqueue_trial(failed[slot].params, user_attrs=failed[slot].user_attrs)
        else:
            params = starts[slot] if slot < len(starts) else {}
            study.enqueue_trial(params, user_attrs={ATTR_SLOT: slot})


class TrialObjective:
    """Train one sampled schedule; report each epoch's metric; prune, stop or finish."""

    def __init__(
        self, setup: TrainingSetup, bounds: LRBounds, artifact_dir: Path | None = None
    ) -> None:
        self.setup = setup
        self.bounds = bounds
        self.artifact_dir = artifact_dir

    def __call__(self, trial: optuna.Trial) -> float:
        search = self.setup.spec.search
        schedule, lr = suggest_schedule(
            trial,
            search.families,
            self.bounds,
            search.epochs,
            self.setup.steps_per_epoch,
            search.warmup,
        )
        if ATTR_ROOT not in trial.user_attrs:  # a retried clone keeps the original's
            trial.set_user_attr(ATTR_ROOT, trial.number)
        trial.set_user_attr("schedule", schedule.model_dump(mode="json"))
        trial.set_user_attr("base_lr", lr)
        checkpoint = self._checkpoint_path(trial)
        metric = self.setup.metric

        def report(epoch: int, record: dict[str, float]) -> None:
            trial.report(record[metric], epoch)
            if trial.should_prune():
                raise StopTraining(f"pruned after epoch {epoch} ({record[metric]:.4g} {metric})")

        run = train(
            self.setup,
            schedule,
            lr,
            search.epochs,
            lr_threshold=search.lr_threshold,
            on_epoch=report,
            checkpoint=checkpoint,
        )
        trial.set_user_attr("run", run.to_dict())
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        if run.status in ("pruned", "diverged"):
            trial.set_user_attr("stop_reason", run.reason)
            raise optuna.TrialPruned(run.reason)
        return run.final(metric)

    def _checkpoint_path(self, trial: optuna.Trial) -> Path | None:
        if self.artifact_dir is None:
            return None
        root = trial.user_attrs[ATTR_ROOT]
        return self.artifact_dir / trial.study.study_name / f"trial-{root}.pt"


def run_trials(
    study: optuna.Study,
    setup: TrainingSetup,
    *,
    artifact_dir: Path | None = None,
    timeout_s: float | None = None,
    wait_for_others: bool = True,
    progress: bool = True,
) -> None:
    """Run queued trials of a prepared study until the queue is empty (or time is up).

    With ``wait_for_others``, keep waiting while trials run elsewhere, so that a trial whose
    worker died (stale heartbeat) is re-queued and run here. Without a heartbeat on the storage
    a dead worker's trial would never go stale, so then nothing is waited for.
    """
    objective = TrialObjective(setup, stored_bounds(study), artifact_dir)
    total = len(
        study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.WAITING, TrialState.RUNNING))
    )
    bar = tqdm(total=total, desc="trials", disable=None if progress else True, unit="trial")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def update_bar(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.n = len(study.get_trials(deepcopy=False, states=FINISHED))
        best = _best_value(study)
        bar.set_postfix(best=f"{best:.4g}" if best is not None else "-")
        bar.refresh()

    with bar:
        while deadline is None or time.monotonic() < deadline:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                study.optimize(
                    objective,
                    timeout=remaining,
                    callbacks=[update_bar],
                    catch=(RuntimeError, ValueError),
                    gc_after_trial=False,
                )
                break  # timed out: stop starting trials
            except TrialBudgetSpent:
                pass
            heartbeat = _heartbeat_interval(study)
            if not (wait_for_others and heartbeat and _running_elsewhere(study)):
                break
            time.sleep(heartbeat / 2)
            with warnings.catch_warnings():  # experimental since Optuna 2.9; chosen knowingly
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)


def _running_elsewhere(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)))


def _heartbeat_interval(study: optuna.Study) -> float | None:
    storage = study._storage  # Study has no public accessor for its storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    return float(interval) if interval else None


def _best_value(study: optuna.Study) -> float | None:
    best = _best_trial(study)
    return None if best is None else best.value


def recommend(
    study: optuna.Study, setup: TrainingSetup, *, progress: bool = True
) -> Recommendation:
    """The best schedule of the study, compared with a constant LR and the default LR."""
    spec = setup.spec
    result = stored_range_test(study)
    bounds = stored_bounds(study)
    best = _best_trial(study)
    if ATTR_BASELINES not in study.user_attrs and spec.search.baselines:
        baselines = _train_baselines(setup, bounds, progress)
        study.set_user_attr(ATTR_BASELINES, [b.to_dict() for b in baselines])
    baselines = [Baseline.from_dict(b) for b in study.user_attrs.get(ATTR_BASELINES, [])]
    counts = {state.name.lower(): 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] += 1
    return Recommendation.build(
        spec=spec,
        study_name=study.study_name,
        range_test=result,
        bounds=bounds,
        best=None
        if best is None
        else Baseline(
            name="best schedule",
            schedule=best.user_attrs["schedule"],
            base_lr=best.user_attrs["base_lr"],
            run=TrainingRun.from_dict(best.user_attrs["run"]),
            trial_number=best.number,
        ),
        baselines=baselines,
        steps_per_epoch=setup.steps_per_epoch,
        lr_multipliers=setup.group_multipliers,
        n_trials=counts,
        history=[_trial_summary(t) for t in study.get_trials(deepcopy=False)],
    )


def _trial_summary(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """Number, state, final (or last reported) value, family and LR of one trial."""
    value = trial.value
    if value is None and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    schedule = trial.user_attrs.get("schedule") or {}
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": value,
        "family": schedule.get("family", trial.params.get("family")),
        "base_lr": trial.user_attrs.get("base_lr"),
        "stop_reason": trial.user_attrs.get("stop_reason") or trial.system_attrs.get("fail_reason"),
    }


def _best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:
        return None


def _train_baselines(setup: TrainingSetup, bounds: LRBounds, progress: bool) -> list[Baseline]:
    spec = setup.spec
    constant = parse_schedule({"family": "constant"})
    candidates = [
        ("constant at suggestion", bounds.suggestion),
        (f"{spec.optimizer.name} default lr", spec.optimizer.default_lr),
    ]
    baselines = []
    for name, lr in tqdm(candidates, desc="baselines", disable=None if progress else True):
        run = train(setup, constant, lr, spec.search.epochs)
        baselines.append(
            Baseline(name=name, schedule=constant.model_dump(mode="json"), base_lr=lr, run=run)
        )
    return baselines


def work(
    study_name: str,
    storage: str | optuna.storages.BaseStorage,
    *,
    artifact_dir: str | Path | None = None,
    wait_for_others: bool = False,
    progress: bool = False,
) -> None:
    """Join a prepared study as one more worker and run its queued trials.

    The job spec is read from the study, so a worker needs only the study's name and storage.
    """
    if isinstance(storage, str):
        storage = open_storage(storage)
    loaded = optuna.load_study(study_name=study_name, storage=storage)
    if ATTR_BOUNDS not in loaded.user_attrs:
        raise ValueError(f"study {study_name!r} has not been prepared (no range test stored)")
    spec = JobSpec.model_validate(loaded.user_attrs[ATTR_SPEC])
    study = open_study(spec, storage)
    run_trials(
        study,
        TrainingSetup.from_spec(spec),
        artifact_dir=Path(artifact_dir) if artifact_dir else None,
        timeout_s=spec.search.timeout_s,
        wait_for_others=wait_for_others,
        progress=progress,
    )


def tune(
    spec: JobSpec,
    storage: str | optuna.storages.BaseStorage | None = None,
    *,
    artifact_dir: str | Path | None = None,
    progress: bool = True,
) -> Recommendation:
    """Find the LR schedule for a job: range test, schedule search, recommendation.

    Args:
        spec: the job.
        storage: an Optuna storage or URL (``sqlite:///lrtune.db``, ``postgresql+psycopg://...``);
            None keeps the study in memory. With a URL, a crashed run resumes where it stopped.
        artifact_dir: where trials checkpoint each epoch (needed to resume a trial mid-run).
        progress: progress bars on stderr.
    """
    setup = TrainingSetup.from_spec(spec)
    study = prepare_study(spec, storage, setup=setup, progress=progress)
    run_trials(
        study,
        setup,
        artifact_dir=Path(artifact_dir) if artifact_dir else None,
        timeout_s=spec.search.timeout_s,
        progress=progress,
    )
    return recommend(study, setup, progress=progress)
