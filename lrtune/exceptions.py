"""The errors lrtune raises on purpose, under one base class.

Callers tell the kinds apart by class, not by message: the CLI prints any :class:`LRTuneError`
as one line, and an HTTP layer maps the classes to status codes in one place
(:class:`InvalidInputError` 422, :class:`NotFoundError` 404, :class:`ConflictError` 409, its
:class:`UnreadableRecordError` too, :class:`QueueFullError` 429, :class:`StorageUnavailableError`
503). Anything else that escapes lrtune is a bug.
:class:`NotFoundError` is a subclass of :class:`InvalidInputError` (the unknown name came from
the caller's input), so a mapping must test it first.

Compatibility contract: :class:`InvalidInputError` is a :class:`ValueError` and
:class:`NotFoundError` a :class:`LookupError` and a :class:`ValueError`, so code that caught
those before this hierarchy existed keeps working. :class:`StorageUnavailableError` is
deliberately not a ``ValueError`` or ``RuntimeError``, and the search never records it as a
failed trial: a trial that raises anything else is recorded as failed and the search goes on,
but a database outage must stop the search instead of spending its trial budget.

Example:
    >>> from lrtune.exceptions import InvalidInputError, LRTuneError
    >>> try:
    ...     raise InvalidInputError("batch_size must be >= 1, got 0")
    ... except ValueError as exc:
    ...     isinstance(exc, LRTuneError)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class LRTuneError(Exception):
    """Base of every error lrtune raises deliberately; its message is one line for a user."""


class InvalidInputError(LRTuneError, ValueError):
    """The caller's input is wrong (a spec, a param, a URL); the message names it and the fix.

    Retrying the same input fails the same way. Where the input is a document (a job spec),
    ``loc`` may name the field to change, as pydantic writes paths (``("model", "params",
    "layers", 2)``; empty: the input as a whole), and ``kind`` the kind of problem for a
    machine (``"unknown_name"``); an HTTP layer reports both.
    """

    loc: tuple[str | int, ...] = ()
    kind: str = "value_error"

    def __init__(
        self, *args: object, loc: tuple[str | int, ...] | None = None, kind: str | None = None
    ) -> None:
        super().__init__(*args)
        if loc is not None:
            self.loc = tuple(loc)
        if kind is not None:
            self.kind = kind


class NotFoundError(InvalidInputError, LookupError):
    """A name (model, dataset, study) that nothing is registered or stored under.

    A :class:`LookupError` for callers that look things up, and an :class:`InvalidInputError`
    (so a :class:`ValueError`) because the name came from the caller's input.
    """


class ConflictError(LRTuneError):
    """The request contradicts stored state, e.g. a study prepared with another job spec.

    Not a ``ValueError``: the input may be fine on its own; it clashes with what exists.
    """


class LeaseLost(ConflictError):
    """A worker wrote under a job lease it no longer holds: it expired and another worker
    claimed the job, the job was cancelled, or the lease was released.

    The write did not land. The worker must stop working on the job (its results may already be
    superseded by the new holder's) and never retry the write with the same lease.
    """


class UnreadableRecordError(ConflictError):
    """A stored record that no longer reads back: it was written before lrtune refused what it
    holds (e.g. a job spec whose params hold a lone surrogate). The message names the record,
    the field and what to do (cancel and delete the job).

    A :class:`ConflictError`: the request is fine, the stored state is what it cannot serve.
    Lists leave such records out and name them, so one bad row never hides the others.
    """


class QueueFullError(LRTuneError):
    """The job store holds as many queued jobs as it admits (``LRTUNE_MAX_QUEUED_JOBS``).

    Retrying after ``retry_after_s`` seconds, once workers have taken some, may succeed.
    """

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        return type(self), (str(self), self.retry_after_s)


class StorageUnavailableError(LRTuneError):
    """The storage could not be reached or used (server down, file not a database, disk).

    Retrying later, or after fixing the storage, may succeed. Never a ``ValueError`` or
    ``RuntimeError``: the search must stop on it, not count it as a failed trial.
    """


_REPR_LIMIT = 40


def describe_validation_error(exc: ValidationError) -> str:
    """Pydantic's errors on one line: ``field.path=<input>: message; ...``.

    The input is shown (cut to 40 characters) so the user sees what was wrong; an unknown key
    reads ``field.path: unknown field``. The one formatter for specs, params and CLI errors.

    Example:
        >>> from pydantic import BaseModel, ConfigDict, ValidationError
        >>> class Job(BaseModel):
        ...     model_config = ConfigDict(extra="forbid")
        ...     epochs: int
        >>> try:
        ...     Job.model_validate({"epochs": "ten", "epoch": 3})
        ... except ValidationError as exc:
        ...     print(describe_validation_error(exc))
        epochs='ten': Input should be a valid integer, unable to parse string as an integer; \
epoch: unknown field
    """
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "input"
        if error["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown field")
            continue
        got = repr(error["input"])
        if len(got) > _REPR_LIMIT:
            got = got[: _REPR_LIMIT - 3] + "..."
        problems.append(f"{where}={got}: {error['msg']}")
    return "; ".join(problems)
