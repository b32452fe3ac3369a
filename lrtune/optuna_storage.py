"""Optuna storage for lrtune studies: in-memory, a SQLite file, or PostgreSQL.

A database URL opens Optuna's ``JournalStorage`` on a log table in that database
(:mod:`lrtune._journal`): every process keeps the studies in memory and reads only the operations
other processes appended since its last read (one ``SELECT``), instead of Optuna's RDB storage's
dozens of statements a trial. A running trial's writes wait up to half a second and go in one append
with its next (:mod:`lrtune._journal_writes`): a trial of short epochs is a few commits: its claim,
its plan, one each half second or nine epochs, its finish. It runs on the process's one engine for
its URL (:func:`lrtune._rdb.get_engine`, with the pool sizes of
:class:`lrtune._rdb.EngineSettings`), the engine the job store uses too: a worker holds one pool
however many studies it opens.

Studies that an earlier lrtune kept in Optuna's RDB tables (``studies``, ``trials``, ...) are
copied into the journal once, when the journal is created (the job store's migration 0009, or
the first ``open_storage`` of a database without the job store); the RDB tables are left as they
were and no longer written. ``optuna.load_study(storage=url)`` reads those old tables: open
studies through :func:`open_storage` instead.

The storage runs with Optuna's heartbeat: a trial whose process died goes stale after
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
from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError

from lrtune._journal import SqlJournalStorage, start_journal
from lrtune._journal_tables import LOG_TABLE
from lrtune._rdb import first_line, get_engine, parse_url
from lrtune.exceptions import StorageUnavailableError


def open_storage(
    url: str | None,
    *,
    heartbeat_interval: int | None = 20,
    grace_period: int | None = None,
    max_retry: int = 3,
) -> optuna.storages.BaseStorage:
    """Open (creating tables if needed) the storage at ``url``; ``None`` means in-memory.

    ``heartbeat_interval=None``: no heartbeat (a reader's storage: it runs no trial).

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
    safe = parse_url(url).render_as_string(hide_password=True)
    engine = get_engine(url)  # InvalidInputError for an unusable URL
    with warnings.catch_warnings():  # heartbeat and retry are "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=max_retry, inherit_intermediate_values=True
        )
        try:
            if not inspect(engine).has_table(LOG_TABLE):  # a database the job store did not make
                with engine.begin() as connection:
                    start_journal(connection)
            return SqlJournalStorage(
                engine,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period or 3 * (heartbeat_interval or 0) or None,
                heartbeat_stale_trial_callback=retry,
            )
        except DBAPIError as exc:  # OperationalError (unreachable, login) and the like
            cause = first_line(getattr(exc, "orig", None) or exc)
            raise StorageUnavailableError(f"cannot open the storage at {safe}: {cause}") from exc
