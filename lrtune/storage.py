"""Optuna storage for lrtune studies: in-memory, a SQLite file, or PostgreSQL.

RDB storages run with Optuna's heartbeat: a trial whose process died goes stale after
``grace_period`` seconds, is marked FAIL, and a WAITING clone with the same parameters (and its
intermediate values) is queued by ``RetryHeartbeatStaleTrialCallback``; lrtune's trials then
resume the clone from the dead trial's last checkpoint.

Example:
    >>> storage = open_storage(None)
    >>> type(storage).__name__
    'InMemoryStorage'
"""

from __future__ import annotations

import warnings

import optuna
from sqlalchemy.exc import DBAPIError, NoSuchModuleError

from lrtune._rdb import (
    begin_immediate,
    engine_kwargs,
    first_line,
    parse_url,
)
from lrtune.exceptions import InvalidInputError, StorageUnavailableError


def open_storage(
    url: str | None,
    *,
    heartbeat_interval: int = 20,
    grace_period: int | None = None,
    max_retry: int = 3,
) -> optuna.storages.BaseStorage:
    """Open (creating tables if needed) the storage at ``url``; ``None`` means in-memory.

    SQLite files are switched to WAL mode and opened with a busy timeout, so that several
    processes on one machine can share a study without "database is locked" errors, and every
    transaction begins IMMEDIATE, so that claiming a queued trial is atomic there too.

    Raises:
        InvalidInputError: the URL cannot be used as written: it does not parse, names an
            unknown database or a driver that is not installed, or is an in-memory SQLite URL.
        StorageUnavailableError: the URL is fine but the storage cannot be opened: the server
            is unreachable or refuses the login, or a SQLite path is a directory, not a
            database, or lies under a regular file. The message hides the password.
    """
    if url is None:
        return optuna.storages.InMemoryStorage()
    parsed = parse_url(url)
    safe = parsed.render_as_string(hide_password=True)
    kwargs = engine_kwargs(parsed, safe)
    with warnings.catch_warnings():  # heartbeat and retry are "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )
        try:
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period or 3 * heartbeat_interval,
                heartbeat_stale_trial_callback=retry,
            )
        except NoSuchModuleError as exc:
            raise InvalidInputError(
                f"unknown database in storage URL {safe}: {first_line(exc)}"
            ) from exc
        except ImportError as exc:
            raise InvalidInputError(
                f"storage URL {safe} needs a database driver that is not installed"
                f" ({_missing_module(exc)})"
            ) from exc
        except DBAPIError as exc:  # OperationalError (unreachable, login) and the like
            cause = first_line(getattr(exc, "orig", None) or exc)
            raise StorageUnavailableError(f"cannot open the storage at {safe}: {cause}") from exc
    if parsed.get_backend_name() == "sqlite":
        begin_immediate(storage.engine)
    return storage


def _missing_module(exc: ImportError) -> str:
    """Name the module whose import failed (Optuna re-raises the driver's ImportError)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ImportError) and cause.name:
            return f"no module named {cause.name!r}"
        cause = cause.__cause__ or cause.__context__
    return first_line(exc)
