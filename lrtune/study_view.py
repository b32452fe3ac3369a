"""What a job's Optuna study holds, read without torch: the range test and the trials.

The HTTP API serves a job's range test (``GET /v1/jobs/{id}/finder``) and its trials
(``GET /v1/jobs/{id}/trials``) from the job's study, where the worker stored them
(:mod:`lrtune.search` writes the ``lrtune.*`` attributes named in :mod:`lrtune._optuna`).
:mod:`lrtune.search` imports torch; this module imports neither torch nor, until a
function here is called, Optuna: the API's schemas use :class:`TrialView`, and an API process
that serves these pages never loads torch.

- :func:`read_finder`: the stored :class:`~lrtune.result.LRFinderResult` and
  :class:`~lrtune.result.LRBounds`, or ``None`` for each while the range test has not finished
  (the study does not exist yet, or holds no result).
- :func:`open_reader`: the Optuna storage to read them from (:mod:`lrtune.optuna_storage`'s,
  without a heartbeat): its reads are deferred transactions on SQLite, so that a dashboard
  reading a study never takes the write lock that the workers' IMMEDIATE transactions wait for.
- :func:`find_study_id`: the storage's id of a study (optuna-dashboard's pages name studies
  by it), or ``None`` while it does not exist.
- :func:`read_trials`: every search trial and confirmation run as a :class:`TrialView`:
  family, params, state, value, per-epoch records, why it stopped, LR per step.
- :func:`read_best_so_far`: the provisional recommendation of a job that ended before its
  confirmation: its best finished search trial, unconfirmed.

Example:
    >>> import optuna
    >>> storage = optuna.storages.InMemoryStorage()
    >>> read_finder(storage, "lrtune-job-none")
    (None, None)
    >>> study = optuna.create_study(storage=storage, study_name="doc")
    >>> schedule = {"family": "cosine", "T_max": 4}
    >>> study.enqueue_trial({}, user_attrs={"schedule": schedule, "base_lr": 0.1})
    >>> [(t.number, t.state, t.family, t.base_lr) for t in read_trials(storage, "doc")]
    [(0, 'WAITING', 'cosine', 0.1)]
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from lrtune._pydantic import JsonFloat, LRSteps, ResultModel
from lrtune.result import LRBounds, LRFinderResult, TrainingRun
from lrtune.schedules import ScheduleSpec, parse_schedule

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from lrtune.recommendation import Recommendation

__all__ = [
    "TrialView",
    "find_study_id",
    "open_reader",
    "read_best_so_far",
    "read_finder",
    "read_trials",
]

NO_FAIL_REASON = "failed (no reason recorded)"


class TrialView(ResultModel):
    """One search trial or confirmation run as the dashboard shows it.

    ``epochs`` holds the per-epoch records (``epoch``, ``train_loss``, ``val_loss`` and the
    dataset's metrics) of a finished run, or, while it runs, the metric values reported so far
    (``{"epoch": k, "<metric>": v}``); ``reason`` says why it was pruned, stopped early or
    failed; ``lr_steps`` is the LR of every param group at every step (run-length encoded in
    JSON).
    """

    kind: Literal["search", "confirmation"]
    number: int
    state: str = Field(description="Optuna's trial state: COMPLETE, PRUNED, FAIL, RUNNING, ...")
    family: str | None
    params: dict[str, float | int | str | bool | None] = Field(
        description="the parameters Optuna sampled (or the queue fixed)"
    )
    schedule: ScheduleSpec | None = Field(description="the schedule spec it trained with")
    base_lr: float | None
    value: JsonFloat | None = Field(description="the final (or last reported) metric")
    status: str | None = Field(description="how the run ended: completed, pruned, diverged, ...")
    reason: str | None = Field(description="why it was pruned, stopped early or failed")
    candidate: str | None = Field(None, description="a confirmation run's candidate")
    seed: int | None = Field(None, description="a confirmation run's seed")
    epochs: list[dict[str, JsonFloat]] = Field(default_factory=list)
    lr_steps: LRSteps = Field(default_factory=list)
    started: datetime | None = None
    finished: datetime | None = None

    @classmethod
    def read(
        cls, trial: FrozenTrial, kind: Literal["search", "confirmation"], metric: str
    ) -> TrialView:
        from lrtune._optuna import (
            ATTR_BASE_LR,
            ATTR_CANDIDATE,
            ATTR_FAIL_REASON,
            ATTR_RUN,
            ATTR_SCHEDULE,
            ATTR_SEED,
            ATTR_STOP_REASON,
        )

        attrs = trial.user_attrs
        run = TrainingRun.model_validate(attrs[ATTR_RUN]) if ATTR_RUN in attrs else None
        value = trial.value
        if value is None and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        reason = attrs.get(ATTR_STOP_REASON)
        if trial.state.name == "FAIL":
            reason = attrs.get(ATTR_FAIL_REASON, NO_FAIL_REASON)
        candidate = attrs.get(ATTR_CANDIDATE)
        if candidate is not None:
            candidate = candidate.get("name") or f"finalist {candidate['rank'] + 1}"
        if run is not None:
            epochs = run.epochs
        else:
            epochs = [{"epoch": k, metric: v} for k, v in sorted(trial.intermediate_values.items())]
        schedule = attrs.get(ATTR_SCHEDULE)
        spec = parse_schedule(schedule) if schedule is not None else None
        return cls(
            kind=kind,
            number=trial.number,
            state=trial.state.name,
            family=spec.family if spec is not None else trial.params.get("family"),
            params=dict(trial.params),
            schedule=spec,
            base_lr=attrs.get(ATTR_BASE_LR),
            value=value,
            status=run.status if run is not None else None,
            reason=reason or (run.reason if run is not None else None),
            candidate=candidate,
            seed=attrs.get(ATTR_SEED),
            epochs=epochs,
            lr_steps=run.lr_steps if run is not None else [],
            started=trial.datetime_start,
            finished=trial.datetime_complete,
        )


def open_reader(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage over ``url`` for reading studies (see the module).

    Raises:
        InvalidInputError: the URL does not parse.
        StorageUnavailableError: the database cannot be reached.
    """
    from lrtune._optuna import storage_errors
    from lrtune.optuna_storage import open_storage

    with storage_errors():
        return open_storage(url, heartbeat_interval=None)


def _load(storage: optuna.storages.BaseStorage, study_name: str) -> optuna.Study | None:
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study (yet)
        return None


def find_study_id(storage: optuna.storages.BaseStorage, study_name: str) -> int | None:
    """The id of the study named ``study_name``, or ``None`` if there is none (yet).

    Raises:
        StorageUnavailableError: the storage failed.
    """
    from lrtune._optuna import storage_errors

    with storage_errors():
        try:
            return storage.get_study_id_from_name(study_name)
        except KeyError:
            return None


def read_finder(
    storage: optuna.storages.BaseStorage, study_name: str
) -> tuple[LRFinderResult | None, LRBounds | None]:
    """The study's range test and LR bounds; ``None`` for each not stored yet.

    Raises:
        StorageUnavailableError: the storage failed.
    """
    from lrtune._optuna import ATTR_BOUNDS, ATTR_RANGE_TEST, storage_errors

    with storage_errors():
        study = _load(storage, study_name)
        attrs = study.user_attrs if study is not None else {}
    result = attrs.get(ATTR_RANGE_TEST)
    bounds = attrs.get(ATTR_BOUNDS)
    return (
        LRFinderResult.model_validate(result) if result is not None else None,
        LRBounds.model_validate(bounds) if bounds is not None else None,
    )


def read_trials(
    storage: optuna.storages.BaseStorage, study_name: str, metric: str = "value"
) -> list[TrialView]:
    """Every search trial, then every confirmation run, in trial order (empty before any).

    ``metric`` names the value a running trial's reported values are (the spec's
    ``search.metric``).

    Raises:
        StorageUnavailableError: the storage failed.
    """
    from lrtune._optuna import CONFIRM_SUFFIX, storage_errors

    views = []
    for name, kind in ((study_name, "search"), (study_name + CONFIRM_SUFFIX, "confirmation")):
        with storage_errors():
            study = _load(storage, name)
            trials = study.get_trials(deepcopy=False) if study is not None else []
        views += [TrialView.read(t, kind, metric) for t in trials]  # type: ignore[arg-type]
    return views


def read_best_so_far(
    storage: optuna.storages.BaseStorage, study_name: str
) -> Recommendation | None:
    """The best finished search trial as a provisional recommendation; None without one.

    For a job that ended (cancelled, failed) before its confirmation: the search trial with
    the best value among the COMPLETE ones, on the search seed alone, marked ``provisional``.
    None when no trial completed, or the study predates the stored run shape (steps per epoch
    and group multipliers, which the snippet needs and only the worker's setup knows).

    Raises:
        StorageUnavailableError: the storage failed.
    """
    from optuna.trial import TrialState

    from lrtune._optuna import (
        ATTR_BASE_LR,
        ATTR_BOUNDS,
        ATTR_RANGE_TEST,
        ATTR_RUN,
        ATTR_RUN_SHAPE,
        ATTR_SCHEDULE,
        ATTR_SPEC,
        storage_errors,
    )
    from lrtune.recommendation import Recommendation, TrainedSchedule
    from lrtune.spec import JobSpec

    with storage_errors():
        study = _load(storage, study_name)
        if study is None or ATTR_RUN_SHAPE not in study.user_attrs:
            return None
        attrs = study.user_attrs
        trials = study.get_trials(deepcopy=False)
    spec = JobSpec.model_validate(attrs[ATTR_SPEC])
    complete = [t for t in trials if t.state == TrialState.COMPLETE and ATTR_RUN in t.user_attrs]
    if not complete:
        return None
    sign = -1.0 if spec.search.direction == "maximize" else 1.0
    best = min(complete, key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]
    finalist = TrainedSchedule(
        name=f"trial {best.number}",
        role="finalist",
        schedule=best.user_attrs[ATTR_SCHEDULE],
        base_lr=best.user_attrs[ATTR_BASE_LR],
        run=TrainingRun.model_validate(best.user_attrs[ATTR_RUN]),
        trial_number=best.number,
    )
    states = [t.state.name.lower() for t in trials]
    return Recommendation.build(
        spec=spec,
        study_name=study_name,
        range_test=LRFinderResult.model_validate(attrs[ATTR_RANGE_TEST]),
        bounds=LRBounds.model_validate(attrs[ATTR_BOUNDS]),
        finalists=[finalist],
        baselines=[],
        confirm_seeds=[],
        steps_per_epoch=attrs[ATTR_RUN_SHAPE]["steps_per_epoch"],
        group_multipliers=attrs[ATTR_RUN_SHAPE]["group_multipliers"],
        n_trials={state.name.lower(): states.count(state.name.lower()) for state in TrialState},
        n_confirmation={},
        history=[],
        provisional=True,
    )
