"""What a job spec must pass to be queued: the one admission path for every way in.

:meth:`JobStore.submit <lrtune.jobs.JobStore.submit>` calls these checks, so ``POST /v1/jobs``,
``lrtune submit --database`` and a notebook's ``store.submit(spec)`` queue the same specs and
refuse the same ones, with the same messages. What the spec's schema checks on its own (types,
ranges, free-form JSON) is done before; these are the checks that need the registry or the
store:

- :func:`check_text`: no NUL character in any string (PostgreSQL cannot keep one in text);
- :func:`check_registry`: the model and dataset are known (to this process's registry or a
  live worker's) and their params fit, a ``sequential`` model's layers against the dataset's
  shapes, its embedding against an upload's token ids, an upload's split against its classes;
- :func:`check_queue_room`: fewer than ``LRTUNE_MAX_QUEUED_JOBS`` jobs are queued.

A refusal is an :class:`~lrtune.exceptions.InvalidInputError` whose ``loc`` is the path of the
spec field to change (``("model", "params", "layers", 2)``) and ``kind`` a short machine
name (``unknown_name``, ``invalid_params``, ``unknown_upload``, ``string_nul``), or a
:class:`~lrtune.exceptions.QueueFullError`; the HTTP layer maps both (422 at ``body.<loc>``,
429 with ``Retry-After``) and the CLI prints the message on one line, exit 2.

Example:
    >>> from lrtune.spec import JobSpec
    >>> spec = JobSpec.model_validate({"model": {"name": "resnet"}, "dataset": {"name": "digits"}})
    >>> try:
    ...     check_registry(spec, workers_registry=None, upload=None)
    ... except InvalidInputError as exc:
    ...     print(exc.loc, exc.kind)
    ('model', 'name') unknown_name
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lrtune.exceptions import InvalidInputError, QueueFullError
from lrtune.jobs.uploads import UPLOADED
from lrtune.params import UploadedParams
from lrtune.registry import (
    UnknownNameError,
    check_token_range,
    dataset_shapes,
    validate_dataset_params,
    validate_model_params,
)

if TYPE_CHECKING:
    from lrtune.jobs.records import DatasetUpload, PluginRegistry
    from lrtune.spec import JobSpec

QUEUE_FULL_RETRY_S = 30
"""What a refused submit is told to wait before it tries again."""


def check_text(spec: JobSpec) -> None:
    """Refuse a spec with a NUL character in any of its strings (params' keys included).

    The store keeps the spec, and workers its parts (names, params) in Optuna's tables, as
    text, which PostgreSQL refuses to hold a NUL in; a stored job reads back as it was, so the
    check is made on what is submitted.

    Raises:
        InvalidInputError: ``loc`` the string's path, e.g. ``("model", "params", "act")``.
    """
    where = nul_path(spec.model_dump(mode="json"))
    if where is not None:
        field = ".".join(map(str, where))
        raise InvalidInputError(
            f"{field} holds a NUL character (\\u0000), which the job store cannot keep: remove it",
            loc=where,
            kind="string_nul",
        )


def nul_path(value: Any) -> tuple[str | int, ...] | None:
    """The path to the first string in JSON ``value`` that holds a NUL, or None.

    >>> nul_path({"model": {"params": {"hidden": [4, "8" + chr(0)]}}}), nul_path(["ok"])
    (('model', 'params', 'hidden', 1), None)
    """
    if isinstance(value, str):
        return () if "\x00" in value else None
    items: list[tuple[str | int, Any]] = []
    if isinstance(value, dict):
        items = [(k, k) for k in value if "\x00" in k] + list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    for key, item in items:
        inner = nul_path(item)
        if inner is not None:
            return (key, *inner)
    return None


def admitted_task(spec: JobSpec, workers_registry: Callable[[], PluginRegistry] | None) -> JobSpec:
    """``spec`` completed from what the live workers published of the task it names, or a
    refusal: no live worker or agent runs that task.

    The task's metric and direction become the search's unless the spec set a metric; its LR
    as written (``task.lrs``, for a job without params) and its optimizer's ``torch.optim``
    family (the learning-rate-free baselines' recipes) are filled in. The params are the
    task's factory's to check, on the machine that runs it.

    Raises:
        InvalidInputError: ``loc`` ``("task", "name")``, kind ``unknown_name``.
    """
    known = workers_registry() if workers_registry is not None else None
    info = known.tasks.get(spec.task.name) if known is not None else None
    if info is None:
        published = ", ".join(sorted(known.tasks)) if known is not None else ""
        raise InvalidInputError(
            f"no live worker or agent runs task {spec.task.name!r}"
            + (f" (they run: {published})" if published else "")
            + ": start one with lrtune worker --task package.module:task",
            loc=("task", "name"),
            kind="unknown_name",
        )
    data = spec.model_dump(mode="json")
    if "metric" not in spec.search.model_fields_set:
        data["search"].update(metric=info.metric, direction=info.direction)
    if spec.task.lrs is None and not spec.task.params:
        data["task"]["lrs"] = info.lrs
    if "optimizer" not in spec.model_fields_set and info.optimizer is not None:
        data["optimizer"] = info.optimizer.model_dump(mode="json")
    return type(spec).model_validate(data)


def check_registry(
    spec: JobSpec,
    *,
    workers_registry: Callable[[], PluginRegistry] | None,
    upload: DatasetUpload | None,
) -> None:
    """Refuse a spec whose model or dataset no one can build, or whose params misfit.

    A name is known when this process's registry has it (built-ins and plugins installed
    here) or the registry ``workers_registry()`` returns has it (what the live workers
    registered: a plugin installed only on the workers, whose params the worker checks when it
    runs the job; read only for a name this process does not know). A
    built-in model whose layers depend on the data (``sequential``) is checked against a
    built-in dataset's shapes, with the path of the layer that does not fit, or against the
    ``upload``'s stored shapes (the spec's ``uploaded`` dataset, read by the caller).

    Raises:
        InvalidInputError: ``loc`` ``("model", "name")``/``("dataset", "name")`` for an unknown
            name (kind ``unknown_name``), ``("model", "params", ...)`` or ``("dataset",
            "params", ...)`` for params a built-in refuses (``invalid_params``: a ``cnn`` on
            inputs that are not 8x8 images, an embedding whose ``num_embeddings`` is not above
            the upload's largest token id), ``("dataset", "params", "val_fraction")`` for an
            upload's split that cannot be stratified (a part with fewer samples than classes).
    """
    shapes = None
    with contextlib.suppress(InvalidInputError):  # the dataset's own check below says why
        shapes = dataset_shapes(spec.dataset.name, spec.dataset.params)
    if upload is not None:
        shapes = upload.input_shape, upload.output_dim
    checks = (
        ("model", spec.model.name, spec.model.params, validate_model_params, (shapes,)),
        ("dataset", spec.dataset.name, spec.dataset.params, validate_dataset_params, ()),
    )
    for kind, name, params, validate, extra in checks:
        try:
            validate(name, params, *extra)
        except UnknownNameError as exc:
            if name not in _worker_names(workers_registry, kind):
                raise InvalidInputError(str(exc), loc=(kind, "name"), kind="unknown_name") from None
        except InvalidInputError as exc:
            loc = (kind, "params", *getattr(exc, "loc", ()))
            raise InvalidInputError(str(exc), loc=loc, kind="invalid_params") from None
    if upload is not None:
        _check_upload_fits(spec, upload)


def _check_upload_fits(spec: JobSpec, upload: DatasetUpload) -> None:
    """Refuse token ids the model's embedding cannot take, and a split that cannot be
    stratified (each part needs a sample of each class)."""
    try:
        check_token_range(
            spec.model.name, spec.model.params, upload.x_max, upload.x_min, upload.x_integral
        )
    except InvalidInputError as exc:
        loc = ("model", "params", *exc.loc)
        raise InvalidInputError(str(exc), loc=loc, kind="invalid_params") from None
    split = UploadedParams.model_validate(spec.dataset.params)
    try:
        split.check_split(upload.x_shape[0], upload.n_classes)
    except InvalidInputError as exc:
        loc = ("dataset", "params", "val_fraction")
        raise InvalidInputError(str(exc), loc=loc, kind="invalid_params") from None


def upload_id_of(spec: JobSpec) -> str | None:
    """The id of the uploaded dataset the spec trains on, or None (a built-in or a plugin's,
    or a task's own data)."""
    if spec.dataset is None:
        return None
    upload_id = spec.dataset.params.get("id") if spec.dataset.name == UPLOADED else None
    return upload_id if isinstance(upload_id, str) else None


def unknown_upload(exc: Exception) -> InvalidInputError:
    """The refusal of a spec whose upload is not (or no longer) in the store."""
    return InvalidInputError(
        f"{exc}: upload it first (POST /v1/datasets or Client.upload_dataset) and use the id "
        "it returns",
        loc=("dataset", "params", "id"),
        kind="unknown_upload",
    )


def check_queue_room(queued: int, cap: int) -> None:
    """Return if fewer than ``cap`` jobs are ``queued``; else refuse.

    The cap is soft: two submits at once may both pass it by one.

    Raises:
        QueueFullError: saying the count and the cap, to retry after ``retry_after_s``.
    """
    if queued >= cap:
        raise QueueFullError(
            f"{queued} jobs are queued, the limit (LRTUNE_MAX_QUEUED_JOBS={cap}): retry later",
            retry_after_s=QUEUE_FULL_RETRY_S,
        )


def _worker_names(workers_registry: Callable[[], PluginRegistry] | None, kind: str) -> set[str]:
    """The model or dataset names the live workers' registries hold."""
    if workers_registry is None:
        return set()
    known = workers_registry()
    return set(known.models if kind == "model" else known.datasets)
