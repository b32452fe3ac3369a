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

import sqlite3
import warnings
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

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
    """
    if url is None:
        return optuna.storages.InMemoryStorage()
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(
            f"invalid storage URL {url!r}: use sqlite:///path.db or "
            "postgresql+psycopg://user@host/db"
        ) from exc
    engine_kwargs: dict[str, object] = {}
    if parsed.get_backend_name() == "sqlite":
        _enable_wal(parsed.database)
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
        except (OperationalError, NoSuchModuleError) as exc:
            cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            safe = parsed.render_as_string(hide_password=True)
            raise ValueError(f"cannot open the storage at {safe}: {cause}") from exc
    if parsed.get_backend_name() == "sqlite":
        _begin_immediate(storage.engine)
    return storage


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


def _enable_wal(database: str | None) -> None:
    if not database or database == ":memory:":
        raise ValueError("an in-memory SQLite URL cannot be shared: use storage=None instead")
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
        conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
