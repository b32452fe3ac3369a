"""The errors lrtune raises on purpose, under one base class.

Callers tell the kinds apart by class, not by message: the CLI prints any :class:`LRTuneError`
as one line, and an HTTP layer maps the classes to status codes in one place
(:class:`InvalidInputError` 422, :class:`NotFoundError` 404, :class:`ConflictError` 409,
:class:`StorageUnavailableError` 503). Anything else that escapes lrtune is a bug.

Compatibility contract: :class:`InvalidInputError` is a :class:`ValueError` and
:class:`NotFoundError` a :class:`LookupError` and a :class:`ValueError`, so code that caught
those before this hierarchy existed keeps working. :class:`StorageUnavailableError` is
deliberately neither a ``ValueError`` nor a ``RuntimeError``: the search records those two as a
failed trial and carries on, and a database outage must stop the search instead of spending
its trial budget.

Example:
    >>> from lrtune.exceptions import InvalidInputError, LRTuneError
    >>> try:
    ...     raise InvalidInputError("batch_size must be >= 1, got 0")
    ... except ValueError as exc:
    ...     isinstance(exc, LRTuneError)
    True
"""

from __future__ import annotations


class LRTuneError(Exception):
    """Base of every error lrtune raises deliberately; its message is one line for a user."""


class InvalidInputError(LRTuneError, ValueError):
    """The caller's input is wrong (a spec, a param, a URL); the message names it and the fix.

    Retrying the same input fails the same way.
    """


class NotFoundError(InvalidInputError, LookupError):
    """A name (model, dataset, study) that nothing is registered or stored under.

    A :class:`LookupError` for callers that look things up, and an :class:`InvalidInputError`
    (so a :class:`ValueError`) because the name came from the caller's input.
    """


class ConflictError(LRTuneError):
    """The request contradicts stored state, e.g. a study prepared with another job spec.

    Not a ``ValueError``: the input may be fine on its own; it clashes with what exists.
    """


class StorageUnavailableError(LRTuneError):
    """The storage could not be reached or used (server down, file not a database, disk).

    Retrying later, or after fixing the storage, may succeed. Never a ``ValueError`` or
    ``RuntimeError``: the search must stop on it, not count it as a failed trial.
    """
