"""SQLAlchemy helpers shared by the Optuna storage and the job store; no torch, no Optuna.

One place knows how lrtune opens a SQL database:

- :func:`get_engine` returns the process's one engine per URL (and so one connection pool),
  sized by :class:`EngineSettings` (``LRTUNE_DATABASE_URL``, ``LRTUNE_DB_POOL_SIZE``, ...):
  the job store and every Optuna study a process opens share it. It lives here, not in the
  job store's package, so that :mod:`lrtune.optuna_storage` (a notebook's ``tune``) loads neither
  the job store nor alembic;
- a URL is parsed once, and an unusable one is an :class:`~lrtune.exceptions.InvalidInputError`
  that shows how a good one looks;
- a SQLite file is switched to WAL (readers never wait for the writer) and opened with a busy
  timeout, so several processes on one machine share it without "database is locked";
- on SQLite every transaction begins IMMEDIATE (takes the write lock at once), except on a
  connection given the execution option ``lrtune_sqlite_begin="DEFERRED"``: a reader that never
  writes need not queue behind a writer; or ``"AUTOCOMMIT"``: no transaction, each statement
  commits on its own (for code that reads on one connection while writing on another);
- on PostgreSQL, a process's hot statements of one round trip (the journal's reads and
  appends, a worker's check of its job's status) go on its one held AUTOCOMMIT connection
  (:func:`held_connection`), not one checked out of the pool (and pinged) for each.

Example:
    >>> parse_url("sqlite:///lrtune.db").get_backend_name()
    'sqlite'
    >>> parse_url("not a url")
    Traceback (most recent call last):
    ...
    lrtune.exceptions.InvalidInputError: invalid storage URL 'not a url': use \
sqlite:///path.db or postgresql+psycopg://user@host/db
"""

from __future__ import annotations

import contextlib
import os
import select as sockets
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from lrtune.exceptions import InvalidInputError, StorageUnavailableError, describe_validation_error

ENV_PREFIX = "LRTUNE_"
DEFAULT_DATABASE_URL = "sqlite:///lrtune.db"
POSTGRES_CONNECT_TIMEOUT_S = 10

SQLITE_BUSY_TIMEOUT_S = 60
SQLITE_BEGIN_OPTION = "lrtune_sqlite_begin"
"""Execution option naming how a SQLite transaction begins: "IMMEDIATE" (default), "DEFERRED",
or "AUTOCOMMIT" (it does not: each statement commits on its own)."""


def parse_url(url: str) -> URL:
    """``url`` parsed; :class:`InvalidInputError` with an example of a good URL if it is not one."""
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise InvalidInputError(
            f"invalid storage URL {url!r}: use sqlite:///path.db or "
            "postgresql+psycopg://user@host/db"
        ) from exc


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its class name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def begin_immediate(engine: Engine) -> None:
    """Make every transaction on the SQLite ``engine`` take the write lock when it begins.

    Optuna claims a WAITING trial with ``SELECT ... FOR UPDATE`` and an UPDATE. SQLite ignores
    FOR UPDATE and pysqlite begins its transaction only at the first write, so two processes
    can both read WAITING and both claim the trial. BEGIN IMMEDIATE (SQLAlchemy's recipe for
    pysqlite) makes the read and the write one atomic step; PostgreSQL needs none of this.
    A connection with the execution option ``lrtune_sqlite_begin="DEFERRED"`` begins a plain
    read transaction instead (under WAL it neither waits for nor blocks the writer); with
    ``"AUTOCOMMIT"`` it begins none, and each statement commits on its own.
    """

    @event.listens_for(engine, "connect")
    def _no_pysqlite_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
        if mode == "AUTOCOMMIT":
            return
        connection.exec_driver_sql(f"BEGIN {'DEFERRED' if mode == 'DEFERRED' else 'IMMEDIATE'}")

    engine.dispose()  # pooled connections were opened before the hooks: reopen them


@contextlib.contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A connection on ``engine`` for reads, no ORM session: its transaction begins DEFERRED on
    SQLite (it never takes or waits for the write lock) and is rolled back at the end."""
    with engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"}).connect() as connection:
        yield connection
        connection.rollback()


def enable_wal(database: str | None, safe_url: str) -> None:
    """Create the SQLite file's folder and switch the file to WAL mode (stored in the file).

    Raises:
        InvalidInputError: an in-memory database, which other processes cannot share.
        StorageUnavailableError: the path is a directory, lies under a regular file, or is
            not a database.
    """
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
            f"cannot open the storage at {safe_url}: {exc.strerror or first_line(exc)}"
        ) from exc
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
    except sqlite3.Error as exc:  # "file is not a database", "unable to open database file"
        raise StorageUnavailableError(
            f"cannot open the storage at {safe_url}: {first_line(exc)}"
        ) from exc


def engine_kwargs(parsed: URL, safe_url: str) -> dict[str, Any]:
    """The ``create_engine`` keywords every lrtune engine needs, whoever owns it.

    SQLite: the file switched to WAL mode and a busy timeout, so several processes share it
    without "database is locked". Servers: ``pool_pre_ping``, so a restarted database costs a
    reconnect, not an error. Callers add their pool sizes.
    """
    if parsed.get_backend_name() == "sqlite":
        enable_wal(parsed.database, safe_url)
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    return {"pool_pre_ping": True}


_Settings = TypeVar("_Settings", bound="EngineSettings")
_Row = TypeVar("_Row")


class EngineSettings(BaseSettings):
    """Which database, and how many connections a process may hold to it: what
    :func:`get_engine` reads. The job store's :class:`~lrtune.jobs.StoreSettings` extends it
    (see :mod:`lrtune.jobs.settings` for the variables)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the job store (and the jobs' Optuna studies)",
    )
    db_pool_size: int = Field(4, ge=1, description="connections kept open per process")
    db_max_overflow: int = Field(4, ge=0, description="extra connections under load")
    db_pool_timeout_s: float = Field(
        30.0, gt=0, description="seconds to wait for a free connection before giving up"
    )

    @classmethod
    def from_env(cls: type[_Settings]) -> _Settings:
        """The settings from the environment (``LRTUNE_<FIELD>`` per field).

        Raises:
            InvalidInputError: a variable holds a value its field refuses; the message names
                the variable.
        """
        try:
            return cls()
        except ValidationError as exc:
            message = describe_validation_error(exc)
            for field in cls.model_fields:
                message = message.replace(f"{field}=", f"{ENV_PREFIX}{field.upper()}=")
            raise InvalidInputError(f"invalid settings: {message}") from None


_engines: dict[tuple[int, str], Engine] = {}
_engines_lock = threading.Lock()


def get_engine(url: str, settings: EngineSettings | None = None) -> Engine:
    """The process's engine for ``url``, created on first use with ``settings``' pool sizes
    (default: :meth:`EngineSettings.from_env`).

    One engine per process and URL: every job store and Optuna storage on ``url`` shares its
    pool, so a process holds at most ``db_pool_size + db_max_overflow`` connections to
    PostgreSQL; a forked child gets its own engine (pooled connections must not cross a fork).
    SQLite: WAL mode, a busy timeout, foreign keys on for every connection, and transactions
    that begin IMMEDIATE (:func:`begin_immediate`). PostgreSQL through psycopg 3:
    ``pool_pre_ping`` and a connect timeout.

    Raises:
        InvalidInputError: the URL does not parse, or names an unknown database or a driver
            that is not installed (PostgreSQL needs ``postgresql+psycopg://``).
        StorageUnavailableError: a SQLite path that cannot be a database.
    """
    key = (os.getpid(), url)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _create_engine(url, settings or EngineSettings.from_env())
        return engine


def dispose_engines() -> None:
    """Close every pooled connection of this process's engines and forget the engines."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _create_engine(url: str, settings: EngineSettings) -> Engine:
    parsed = parse_url(url)
    safe = parsed.render_as_string(hide_password=True)
    kwargs = engine_kwargs(parsed, safe)
    if parsed.get_backend_name() != "sqlite":
        kwargs.update(
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout_s,
        )
        if parsed.get_backend_name() == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    try:
        engine = sqlalchemy.create_engine(parsed, **kwargs)
    except NoSuchModuleError as exc:
        raise InvalidInputError(f"unknown database in URL {safe}: {first_line(exc)}") from exc
    except ImportError as exc:
        raise InvalidInputError(
            f"database URL {safe} needs a driver that is not installed ({first_line(exc)})"
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        _sqlite_foreign_keys(engine)
        begin_immediate(engine)
    return engine


def _sqlite_foreign_keys(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _foreign_keys_on(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA foreign_keys=ON")


def held_connection(engine: Engine) -> HeldConnection:
    """The process's one held connection to ``engine``'s database (PostgreSQL's), for every
    caller that holds one: one connection of the pool, however many storages and job stores the
    process opens."""
    key = (os.getpid(), engine.url.render_as_string(hide_password=False))
    with _held_lock:
        held = _held_connections.get(key)
        if held is None or held.engine is not engine:  # that engine was replaced (disposed)
            if held is not None:
                held.close()
            held = _held_connections[key] = HeldConnection(engine)
        return held


class HeldConnection:
    """One AUTOCOMMIT connection of ``engine``'s pool, held until closed (or the process ends).

    The ping's job is done without a round trip: a connection on which the server said
    something while it was idle (a restart's goodbye), or that it closed, is replaced before
    use; a read that finds its connection gone is read again on a new one.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._connection: Connection | None = None

    @contextlib.contextmanager
    def use(self) -> Iterator[Connection]:
        """The held connection (a new one if it was dropped or the server closed it); an
        error drops it, and is raised."""
        with self._lock:
            if self._connection is not None and _closed_by_server(self._connection):
                self._connection.invalidate()  # not back to the pool
                self._drop()
            if self._connection is None:
                self._reconnect()
            assert self._connection is not None
            try:
                yield self._connection
            except SQLAlchemyError:
                self._drop()
                raise

    def read(self, query: Callable[[Connection], list[_Row]]) -> list[_Row]:
        """``query`` run on the held connection, once more on a new one if that one was gone."""
        try:
            with self.use() as connection:
                return query(connection)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        with self.use() as connection:
            return query(connection)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _reconnect(self) -> None:
        autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._connection = connection = autocommit.connect()
        self._finalizer = weakref.finalize(self, connection.close)

    def _drop(self) -> None:
        if self._connection is not None:
            self._finalizer()  # closes it: back to the pool, or discarded if it is broken
            self._connection = None


_held_connections: dict[tuple[int, str], HeldConnection] = {}
_held_lock = threading.Lock()


def _closed_by_server(connection: Connection) -> bool:
    """Whether the server closed the idle ``connection`` or sent on it unasked (it sends
    nothing to an idle client but a notice that it terminates the session): a check without a
    round trip."""
    dbapi = connection.connection.dbapi_connection
    if dbapi is None or dbapi.closed:
        return True
    readable, _, _ = sockets.select([dbapi.fileno()], [], [], 0)
    return bool(readable)
