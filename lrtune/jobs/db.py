"""Connections to the job store: one engine per process per URL, errors as lrtune's.

:func:`get_engine` (:func:`lrtune._rdb.get_engine`, re-exported here for the store's modules)
returns the same engine (and so the same connection pool) for every caller in a process that
names the same URL: every :class:`~lrtune.jobs.store.JobStore` shares it, and so does every
Optuna study the process opens, so a process holds at most ``db_pool_size + db_max_overflow``
connections to PostgreSQL (:class:`~lrtune.jobs.settings.StoreSettings`) however many stores
it opens. On SQLite, :func:`session` with ``write=False`` begins a plain read transaction that
never waits for a writer; ``write=True`` begins IMMEDIATE.

Every database error leaves :func:`session` as an :mod:`lrtune.exceptions` class: a constraint
violation is a :class:`~lrtune.exceptions.ConflictError`; anything else (server down, login
refused, no free pooled connection, not a database) is a
:class:`~lrtune.exceptions.StorageUnavailableError` whose message hides the URL's password.
Other SQLAlchemy errors are bugs in lrtune and are not translated.

Example:
    >>> import tempfile, pathlib, sqlalchemy
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
from collections.abc import Iterator

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from lrtune._rdb import SQLITE_BEGIN_OPTION, first_line, parse_url, read_only
from lrtune._rdb import dispose_engines as dispose_engines
from lrtune._rdb import get_engine as get_engine
from lrtune.exceptions import ConflictError, StorageUnavailableError


def safe_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for messages and logs."""
    return parse_url(url).render_as_string(hide_password=True)


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
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction on a bare connection, no ORM session: for the hot writes of a few
    statements (a worker's progress report). Begins as ``session(write=True)`` does (IMMEDIATE
    on SQLite); committed if the block ends normally, rolled back if it raises; errors
    translated likewise."""
    with translate_errors(engine), engine.begin() as connection:
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
