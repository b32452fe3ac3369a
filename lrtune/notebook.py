"""The notebook's entry points, on a model, a job spec or your own :class:`~lrtune.task.Task`.

- :func:`find_lr`: the LR range test. Given a model and its batches, exactly
  :func:`lrtune.finder.find_lr`; given a task, the job's multi-seed range test on it (what a
  worker runs first), with the task's loss, batches per seed and optimizer.
- :func:`tune`: range test, schedule search, confirmation on fresh seeds and the verdict,
  for a job spec or a task, in this process, with no store and no server.

Example (the task of :mod:`lrtune.task`'s example):
    >>> from lrtune.task import TaskBase
    >>> import torch
    >>> from torch import nn
    >>> class Blobs(TaskBase):
    ...     metric, direction = "accuracy", "maximize"
    ...     x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    ...     y = (x[:, 0] > 0).long()
    ...     def build_model(self, seed, device):
    ...         torch.manual_seed(seed)
    ...         return nn.Linear(4, 2).to(device)
    ...     def build_optimizer(self, model):
    ...         return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ...     def train_batches(self, seed, epoch):
    ...         g = torch.Generator().manual_seed(seed * 1000 + epoch)
    ...         return [(self.x[i], self.y[i]) for i in torch.randperm(256, generator=g).split(32)]
    ...     def val_batches(self):
    ...         return [(self.x, self.y)]
    >>> result = find_lr(Blobs(), range_test={"seeds": 2, "num_iter": 30}, progress=False)
    >>> len(result.seeds), result.suggestion > 0
    (2, True)
    >>> rec = tune(Blobs(), search={"n_trials": 3, "epochs": 2, "families": ["constant", "cosine"]},
    ...            range_test={"seeds": 2, "num_iter": 30}, progress=False)
    >>> rec.metric, rec.confirmed
    ('accuracy', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lrtune.exceptions import InvalidInputError
from lrtune.task import Task, is_task, task_job


def find_lr(
    model_or_task: Any,
    *args: Any,
    range_test: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    **kwargs: Any,
) -> Any:
    """The LR range test on a model (:func:`lrtune.finder.find_lr`, whose arguments follow)
    or on a task: its multi-seed range test (``range_test`` as a job's, e.g.
    ``{"seeds": 4, "num_iter": 100}``), from ``seed``, on ``device``.

    The result reports the LR of group 0 of the task's optimizer; its other groups keep their
    ratios to it.
    """
    if not is_task(model_or_task):
        from lrtune.finder import find_lr as find_model_lr

        if range_test is not None:
            raise InvalidInputError("range_test= is for a task: pass find_lr's own keywords")
        return find_model_lr(model_or_task, *args, device=device, progress=progress, **kwargs)
    if args or kwargs:
        raise InvalidInputError(
            f"find_lr(task) takes range_test, seed, device and progress, not {sorted(kwargs)}"
        )
    from lrtune.search.prepare import range_test as job_range_test
    from lrtune.training import TrainingSetup

    spec = task_job(model_or_task, range_test=range_test, seed=seed, device=device)
    setup = TrainingSetup.from_spec(spec, task=model_or_task)
    return job_range_test(setup, progress=progress)


def tune(
    job: Any,
    storage: Any = None,
    *,
    search: Mapping[str, Any] | None = None,
    range_test: Mapping[str, Any] | None = None,
    seed: int = 0,
    name: str | None = None,
    device: str = "auto",
    artifact_dir: str | Path | None = None,
    progress: bool = True,
    population: int = 1,
) -> Any:
    """Find the LR schedule for a job spec or a task: range test, search, confirmation,
    recommendation (:func:`lrtune.search.tune`, whose ``storage``, ``artifact_dir``,
    ``progress`` and ``population`` these are).

    For a task, ``search`` and ``range_test`` are a job's (e.g. ``{"n_trials": 20,
    "epochs": 5}``); the task's metric and direction are searched unless ``search`` names
    others. With a storage URL, a task's job resumes after a crash as a spec's does: the same
    task, name and seed find the same study.
    """
    from lrtune.search import tune as tune_spec

    if not progress:  # as the CLI: no line per trial from Optuna
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not is_task(job):
        if search is not None or range_test is not None or name is not None:
            raise InvalidInputError(
                "search=, range_test= and name= are for a task: a job spec holds its own"
            )
        return tune_spec(
            job, storage, artifact_dir=artifact_dir, progress=progress, population=population
        )
    task: Task = job
    spec = task_job(task, search=search, range_test=range_test, seed=seed, name=name, device=device)
    return tune_spec(
        spec,
        storage,
        artifact_dir=artifact_dir,
        progress=progress,
        task=task,
        population=population,
    )
