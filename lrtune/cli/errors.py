"""How the ``lrtune`` command reports bad input: one ``lrtune: error:`` line and exit status 2.

Example:
    >>> describe_os_error(FileNotFoundError(2, "No such file or directory", "job.yaml"))
    'job.yaml: No such file or directory'
    >>> first_line(ValueError("first\\nsecond"))
    'first'
"""

from __future__ import annotations

import sys
from typing import NoReturn

from pydantic import ValidationError

from lrtune.exceptions import InvalidInputError, describe_validation_error

__all__ = ["CliError", "describe_invalid_job", "describe_os_error", "fail", "first_line"]


class CliError(InvalidInputError):
    """A problem with the user's command line, reported as one line."""


def fail(message: str) -> NoReturn:
    """Print ``lrtune: error: message`` on stderr and exit with status 2."""
    print(f"lrtune: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_os_error(exc: OSError) -> str:
    """``path: reason`` on one line, e.g. ``job.yaml: Permission denied``."""
    reason = exc.strerror or first_line(exc)
    if exc.filename is None:
        return reason
    return f"{exc.filename}: {reason}"


def describe_invalid_job(exc: ValidationError) -> str:
    """An invalid job spec on one line: ``invalid job: <field>: <problem>``."""
    return "invalid job: " + describe_validation_error(exc)
