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

import contextlib
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from lrtune.exceptions import InvalidInputError, StorageUnavailableError

SQLITE_BUSY_TIMEOUT_S = 60


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
    parsed = _parse_url(url)
    safe = parsed.render_as_string(hide_password=True)
    engine_kwargs: dict[str, object] = {}
    if parsed.get_backend_name() == "sqlite":
        _enable_wal(parsed.database, safe)
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        engine_kwargs["pool_pre_ping"] = True
    with warnings.catch_warnings():  # heartbeat and retry are "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )
        try:
            storage = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period or 3 * heartbeat_interval,
                heartbeat_stale_trial_callback=retry,
            )
        except NoSuchModuleError as exc:
            raise InvalidInputError(
                f"unknown database in storage URL {safe}: {_first_line(exc)}"
            ) from exc
        except ImportError as exc:
            raise InvalidInputError(
                f"storage URL {safe} needs a database driver that is not installed"
                f" ({_missing_module(exc)})"
            ) from exc
        except DBAPIError as exc:  # OperationalError (unreachable, login) and the like
            cause = _first_line(getattr(exc, "orig", None) or exc)
            raise StorageUnavailableError(f"cannot open the storage at {safe}: {cause}") from exc
    if parsed.get_backend_name() == "sqlite":
        _begin_immediate(storage.engine)
    return storage


def _parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise InvalidInputError(
            f"invalid storage URL {url!r}: use sqlite:///path.db or "
            "postgresql+psycopg://user@host/db"
        ) from exc


def _missing_module(exc: ImportError) -> str:
    """Name the module whose import failed (Optuna re-raises the driver's ImportError)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ImportError) and cause.name:
            return f"no module named {cause.name!r}"
        cause = cause.__cause__ or cause.__context__
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _begin_immediate(engine: Engine) -> None:
    """Make every transaction on ``engine`` take SQLite's write lock when it begins.

    Optuna claims a WAITING trial with ``SELECT ... FOR UPDATE`` and an UPDATE. SQLite ignores
    FOR UPDATE and pysqlite begins its transaction only at the first write, so two processes
    can both read WAITING and both claim the trial. BEGIN IMMEDIATE (SQLAlchemy's recipe for
    pysqlite) makes the read and the write one atomic step; PostgreSQL needs none of this.
    """

    @event.listens_for(engine, "connect")
    def _no_pysqlite_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # pooled connections were opened before the hooks: reopen them


def _enable_wal(database: str | None, safe_url: str) -> None:
    if not database or database == ":memory:":
        raise InvalidInputError(
            "an in-memory SQLite URL cannot be shared: use storage=None instead"
        )
    path = Path(database)
    if path.is_dir():
        raise StorageUnavailableError(f"cannot open the storage at {safe_url}: is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StorageUnavailableError(
            f"cannot open the storage at {safe_url}: a regular file is in the way"
        ) from None
    except OSError as exc:
        raise StorageUnavailableError(
            f"cannot open the storage at {safe_url}: {exc.strerror or _first_line(exc)}"
        ) from exc
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
    except sqlite3.Error as exc:  # "file is not a database", "unable to open database file"
        raise StorageUnavailableError(
            f"cannot open the storage at {safe_url}: {_first_line(exc)}"
        ) from exc
