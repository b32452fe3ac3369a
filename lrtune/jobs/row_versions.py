"""Which version of a job's row is current: one indexed read, for readers that keep what they
built from the row (the API's body of ``GET /v1/jobs/{id}``).

Every UPDATE of a job's row adds one to its ``row_version`` (:mod:`lrtune.jobs.tables`: the
column's ``onupdate``, which SQLAlchemy adds to every UPDATE of the table, whichever process
or machine sends it), and a job's id is never given to another job. So a reader that built
something from the row while it was at version ``v`` may keep using it for as long as
:meth:`RowVersions.read` still answers ``v``: a write committed before that read has moved the
version on, so the reader is never staler than one read. Build from a record read *after* the
version was read (:meth:`RowVersions.read`, then :meth:`~lrtune.jobs.JobStore.get`): the record
is then at least that new, and if it is newer, the next read sees another version and the
reader builds again; it never keeps an old record under a newer version.

:class:`RowVersions` reads on a connection of its own, in autocommit (each read sees every
committed write), with one statement compiled once: on SQLite a read is a few microseconds
where a pooled SQLAlchemy connection and its transaction take ~90, so :meth:`RowVersions.read_async`
reads it in place on the event loop (a read of a WAL-mode file never waits for a writer). On
PostgreSQL each read is a round trip: :meth:`~RowVersions.read_async` makes it on an async
psycopg connection of the event loop's own, so no thread of the API's pool waits on it;
:meth:`~RowVersions.read`, for threads, on a blocking one. The connections are outside the
engine's pool (one or two more than ``db_pool_size`` per process that reads), opened on the
first read, and dropped when a read fails (the next one opens another).

Example:
    >>> import tempfile, pathlib
    >>> from lrtune.jobs import JobStore
    >>> from lrtune.spec import JobSpec
    >>> store = JobStore(f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}")
    >>> spec = JobSpec.model_validate({"model": {"name": "mlp"}, "dataset": {"name": "digits"}})
    >>> job = store.submit(spec)
    >>> versions = store.row_versions
    >>> versions.read(job.id)
    1
    >>> _ = store.cancel(job.id)
    >>> versions.read(job.id), versions.read(job.id[:8]), versions.read("no-such-job")
    (2, None, None)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine

from lrtune._rdb import POSTGRES_CONNECT_TIMEOUT_S
from lrtune.exceptions import StorageUnavailableError
from lrtune.jobs import tables
from lrtune.jobs.db import translate_errors

__all__ = ["RowVersions"]


class RowVersions:
    """The ``row_version`` of jobs in ``engine``'s database, read by whole id (see the module).

    Safe to call from several threads: reads take turns on the one connection.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.waits_on_network = self._engine.dialect.name != "sqlite"
        """True where each read is a round trip to a server: the caller runs it off its loop."""
        query = select(tables.Job.row_version).where(tables.Job.id == bindparam("job_id"))
        compiled = query.compile(dialect=self._engine.dialect)
        self._sql = str(compiled)
        self._positional = compiled.positiontup is not None and bool(compiled.positiontup)
        self._connection: Any = None
        self._lock = threading.Lock()
        self._batched: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _BatchedReads] = (
            weakref.WeakKeyDictionary()
        )

    def read(self, job_id: str) -> int | None:
        """The row version of the job whose id is ``job_id``; None if no job's id is exactly
        that (a prefix of one, or a deleted job: ask the store, which says which).

        Raises:
            StorageUnavailableError: the database cannot be reached.
        """
        parameters = (job_id,) if self._positional else {"job_id": job_id}
        with self._lock, translate_errors(self._engine):
            try:
                cursor = self._connected().cursor()
                try:
                    cursor.execute(self._sql, parameters)
                    row = cursor.fetchone()
                finally:
                    cursor.close()
            except self._engine.dialect.loaded_dbapi.Error as exc:
                self._drop()
                raise self._unavailable(exc) from exc
        return None if row is None else int(row[0])

    async def read_async(self, job_id: str) -> int | None:
        """:meth:`read` for an event loop: in place on SQLite; on PostgreSQL awaited on the
        loop's own async connection, one read for every job id asked meanwhile (see
        :class:`_BatchedReads`).

        Raises:
            StorageUnavailableError: the database cannot be reached.
        """
        if not self.waits_on_network:
            return self.read(job_id)
        loop = asyncio.get_running_loop()
        with self._lock:
            reads = self._batched.get(loop)
            if reads is None:
                reads = self._batched[loop] = _BatchedReads(self._connect_async, self._unavailable)
        return await reads.read(job_id)

    async def _connect_async(self) -> Any:
        import psycopg

        _, parameters = self._engine.dialect.create_connect_args(self._engine.url)
        parameters.pop("context", None)  # the blocking dialect's adapters
        return await psycopg.AsyncConnection.connect(
            **parameters, autocommit=True, connect_timeout=POSTGRES_CONNECT_TIMEOUT_S
        )

    def _unavailable(self, exc: Exception) -> StorageUnavailableError:
        where = self._engine.url.render_as_string(hide_password=True)
        return StorageUnavailableError(f"job store unavailable at {where}: {exc}")

    def close(self) -> None:
        """Close the connection (a later read opens another)."""
        with self._lock:
            self._drop()

    def _connected(self) -> Any:
        if self._connection is None:
            pooled = self._engine.raw_connection()  # with the engine's connect hooks
            connection = pooled.driver_connection
            pooled.detach()  # its own, never returned to the pool in autocommit
            if self.waits_on_network:
                connection.autocommit = True  # psycopg; SQLite's hooks already autocommit
            self._connection = connection
        return self._connection

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                connection.close()


_VERSIONS_OF_IDS = "SELECT id, row_version FROM lrtune_jobs WHERE id = ANY(%(job_ids)s)"
"""PostgreSQL: the row versions of a list of job ids, through the primary key's index."""


class _BatchedReads:
    """One event loop's reads on PostgreSQL, on one async connection: each read asks for every
    job id asked since the previous read began, so 32 pollers cost one round trip at a time,
    not 32 queued ones.

    A request waits for a read that begins after it asked, never for one already under way (a
    write committed just before the request might not be in that one): "never staler than one
    read" holds for every caller.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        unavailable: Callable[[Exception], StorageUnavailableError],
    ) -> None:
        self._connect = connect
        self._unavailable = unavailable
        self._connection: Any = None
        self._asked: dict[str, list[asyncio.Future[int | None]]] = {}
        self._reading: asyncio.Task[None] | None = None

    async def read(self, job_id: str) -> int | None:
        answer: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._asked.setdefault(job_id, []).append(answer)
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read_while_asked())
        return await answer

    async def _read_while_asked(self) -> None:
        while self._asked:
            asked, self._asked = self._asked, {}
            versions: dict[str, int] = {}
            failure: Exception | None = None
            try:
                versions = await self._versions(list(asked))
            except Exception as exc:  # every caller of this read gets it
                failure = exc
            for job_id, answers in asked.items():
                for answer in answers:
                    if answer.done():  # its caller went away
                        continue
                    if failure is not None:
                        answer.set_exception(failure)
                    else:
                        answer.set_result(versions.get(job_id))

    async def _versions(self, job_ids: list[str]) -> dict[str, int]:
        import psycopg

        try:
            if self._connection is None or self._connection.closed:
                self._connection = await self._connect()
            cursor = await self._connection.execute(_VERSIONS_OF_IDS, {"job_ids": job_ids})
            return {job_id: int(version) for job_id, version in await cursor.fetchall()}
        except psycopg.Error as exc:
            connection, self._connection = self._connection, None
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
            raise self._unavailable(exc) from exc
