"""The tasks a worker runs: the user's own training code, loaded by the operator.

An operator names tasks on the worker's command line (``lrtune worker --task
package.module:task``, :func:`load_named`), or installs packages that declare them in the
entry-point group ``lrtune.tasks`` (:func:`load_installed`). Each is imported once, here, by
the worker; its name and what a job naming it searches (:class:`~lrtune.jobs.TaskInfo`) go
into the registry the worker publishes, so that the API admits jobs naming it and the store
hands them only to workers that loaded it. Nothing a job says is ever imported.

Example:
    >>> load_named(["lrtune.task:TaskBase"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lrtune.exceptions.InvalidInputError: TaskBase is not an lrtune Task: it lacks build_model, ...
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from lrtune.exceptions import InvalidInputError, LRTuneError
from lrtune.jobs import TaskInfo
from lrtune.task import Task, import_target, is_task, make_task, task_job

logger = logging.getLogger("lrtune.workers")

ENTRY_POINT_GROUP = "lrtune.tasks"


@dataclass(frozen=True)
class LoadedTask:
    """A task as the worker loaded it: where from, the object, what it publishes."""

    path: str
    target: Any
    name: str
    info: TaskInfo

    def make(self, params: Mapping[str, Any]) -> Task:
        """The task a job runs: the object itself, or the factory called with the job's params.

        Raises:
            InvalidInputError: params the factory refuses.
            TaskError: the factory raised.
        """
        return make_task(self.target, params, self.path)


def load_named(paths: Iterable[str]) -> dict[str, LoadedTask]:
    """The tasks at ``paths`` (``package.module:attribute``), by name.

    Raises:
        InvalidInputError: a path that does not import or names no task (one line, for the
            operator), or two tasks with one name.
    """
    loaded: dict[str, LoadedTask] = {}
    for path in paths:
        task = load(path)
        if task.name in loaded:
            first = loaded[task.name].path
            raise InvalidInputError(f"tasks {first!r} and {path!r} are both named {task.name!r}")
        loaded[task.name] = task
    return loaded


def load_installed() -> dict[str, LoadedTask]:
    """The tasks installed packages declare in the ``lrtune.tasks`` entry-point group, by
    name; one that fails to load is left out with a logged line (the worker serves the rest)."""
    loaded: dict[str, LoadedTask] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            task = load(entry.value)
        except LRTuneError as exc:
            logger.warning("task entry point %s left out: %s", entry.name, exc)
            continue
        loaded[task.name] = task
    return loaded


def load(path: str) -> LoadedTask:
    """The task at ``path``, with what it publishes (one build of its model and optimizer on
    the CPU, for its LR as written; a factory is called without params for it)."""
    return loaded(import_target(path), path)


def loaded(target: Any, path: str) -> LoadedTask:
    """``target`` (a task, or a factory of one) as :func:`load` gives it; ``path`` names it
    in messages."""
    try:
        example = make_task(target, {}, path)
    except InvalidInputError as exc:
        if isinstance(exc.__cause__, TypeError):  # the factory refused to be called bare
            raise InvalidInputError(
                f"task {path!r}: its factory must work without params too (give each a "
                "default), so that the worker can say what the task searches"
            ) from None
        raise
    spec = task_job(example)
    info = TaskInfo(
        metric=example.metric,
        direction=example.direction,
        version=str(getattr(example, "version", "1")),
        params_schema=params_schema(target),
        lrs=spec.task.lrs,
        optimizer=spec.optimizer,
    )
    return LoadedTask(path, target, str(example.name), info)


def params_schema(target: Any) -> dict[str, Any] | None:
    """The JSON schema of a factory's keyword params (from its signature), or None for a task
    object, which takes none."""
    if not callable(target) or is_task(target):
        return None
    from pydantic import create_model

    fields: dict[str, Any] = {}
    for name, parameter in inspect.signature(target).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = Any if parameter.annotation is parameter.empty else parameter.annotation
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[name] = (annotation, default)
    if not fields:
        return None
    try:
        return create_model("TaskParams", **fields).model_json_schema()
    except Exception:  # an annotation pydantic cannot describe: the factory checks its params
        return None
