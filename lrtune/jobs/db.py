"""Connections to the job store: one engine per process per URL, errors as lrtune's.

:func:`get_engine` returns the same engine (and so the same connection pool) for every caller
in a process that names the same URL: every :class:`~lrtune.jobs.store.JobStore` shares it,
so a process holds at most ``db_pool_size + db_max_overflow`` connections to PostgreSQL
however many stores it opens. A forked child gets its own engine (pooled connections must not
cross a fork).

- SQLite: WAL mode, a busy timeout, foreign keys on for every connection, and write
  transactions that begin IMMEDIATE (the helpers :mod:`lrtune.storage` uses for Optuna), while
  :func:`session` with ``write=False`` begins a plain read transaction that never waits for a
  writer.
- PostgreSQL through psycopg 3: ``pool_pre_ping`` (a connection dropped by a server restart is
  replaced, not handed out) and the pool sizes of :class:`~lrtune.jobs.settings.StoreSettings`.

Every database error leaves :func:`session` as an :mod:`lrtune.exceptions` class: a constraint
violation is a :class:`~lrtune.exceptions.ConflictError`; anything else (server down, login
refused, no free pooled connection, not a database) is a
:class:`~lrtune.exceptions.StorageUnavailableError` whose message hides the URL's password.
Other SQLAlchemy errors are bugs in lrtune and are not translated.

Example:
    >>> import tempfile, pathlib
    >>> url = f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}"
    >>> get_engine(url) is get_engine(url)
    True
    >>> with session(get_engine(url), write=False) as s:
    ...     s.execute(sqlalchemy.text("PRAGMA foreign_keys")).scalar()
    1
    >>> safe_url("postgresql+psycopg://lrtune:secret@db/lrtune")
    'postgresql+psycopg://lrtune:***@db/lrtune'
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    NoSuchModuleError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from lrtune._rdb import (
    SQLITE_BEGIN_OPTION,
    begin_immediate,
    engine_kwargs,
    first_line,
    parse_url,
    read_only,
)
from lrtune.exceptions import ConflictError, InvalidInputError, StorageUnavailableError
from lrtune.jobs.settings import StoreSettings

POSTGRES_CONNECT_TIMEOUT_S = 10

_engines: dict[tuple[int, str], Engine] = {}
_engines_lock = threading.Lock()


def get_engine(url: str, settings: StoreSettings | None = None) -> Engine:
    """The process's engine for ``url``, created on first use with ``settings``' pool sizes.

    Raises:
        InvalidInputError: the URL does not parse, or names an unknown database or a driver
            that is not installed (PostgreSQL needs ``postgresql+psycopg://``).
        StorageUnavailableError: a SQLite path that cannot be a database.
    """
    key = (os.getpid(), url)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _create_engine(url, settings or StoreSettings.from_env())
        return engine


def dispose_engines() -> None:
    """Close every pooled connection of this process's engines and forget the engines."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def safe_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    return parse_url(url).render_as_string(hide_password=True)


def _create_engine(url: str, settings: StoreSettings) -> Engine:
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


@contextlib.contextmanager
def session(engine: Engine, *, write: bool) -> Iterator[Session]:
    """One transaction: committed if the block ends normally, rolled back if it raises.

    ``write=True`` begins IMMEDIATE on SQLite (the transaction holds the write lock from its
    first statement, so a read-then-update in it is atomic across processes); ``write=False``
    is for blocks that only read. Database errors are translated as the module says.
    """
    bind = engine if write else engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
    with translate_errors(engine), Session(bind, expire_on_commit=False) as s, s.begin():
        yield s


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction on a bare connection, no ORM session: for the hot reads of one
    statement (an API request's), which a :class:`Session` would cost twice as much. Begins
    as ``session(write=False)`` does; rolled back at the end; errors translated likewise."""
    with translate_errors(engine), read_only(engine) as connection:
        yield connection


@contextlib.contextmanager
def translate_errors(engine: Engine) -> Iterator[None]:
    """Turn SQLAlchemy's errors into :mod:`lrtune.exceptions` classes (see the module)."""
    try:
        yield
    except IntegrityError as exc:
        raise ConflictError(f"the job store refused a write: {_cause(exc, engine)}") from exc
    except (DBAPIError, DisconnectionError, PoolTimeoutError) as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise StorageUnavailableError(
            f"job store unavailable at {where}: {_cause(exc, engine)}"
        ) from exc


def _cause(exc: SQLAlchemyError, engine: Engine) -> str:
    """The driver's first line, with the password blanked should the driver repeat it."""
    text = first_line(getattr(exc, "orig", None) or exc)
    password = engine.url.password
    return text.replace(str(password), "***") if password else text
