"""Optuna's ``JournalStorage`` in lrtune's SQL database: an append-only log, read incrementally.

Optuna's RDB storage sends dozens of statements a trial (every ``get_trial`` reads the trial's
params, values, attributes and intermediate values from six tables). A journal storage keeps
every study in memory, replayed from a log of operations; here that log is a table:

- ``lrtune_optuna_log``: one row per operation, ``number`` 0, 1, 2, ... with no gap, and
  ``body`` the operation as JSON text (text, not a JSON column: Optuna's values may be NaN or
  infinite, which PostgreSQL's JSON rejects). A read is one ``SELECT`` of the rows numbered
  from the first this process has not replayed; a read with nothing new returns no row.
- ``lrtune_optuna_log_head``: one row, the next number to hand out. An append updates it
  (which locks it until the append commits) and inserts its rows after it, so appends are
  serialized and their numbers become visible in order: a reader that reads "from n on" can
  never see n + 1 before n, on PostgreSQL too, where two transactions with serial ids may
  commit out of id order. SQLite's IMMEDIATE transactions serialize writers already.
- ``lrtune_optuna_heartbeats``: the last heartbeat of each trial, in seconds since the epoch by
  the database's clock (one upsert a beat; heartbeats never enter the log).

On PostgreSQL an append is one statement that commits on its own (the head's update and the
insert in one ``WITH``), a read one ``SELECT``: no BEGIN or COMMIT round trips. An append that
finds no row appended by others since this process's last read skips the read that
``JournalStorage`` makes after every write: its own rows are all that is new. Otherwise it
reads the rows between (all committed: their appends held the head's lock before it).

Exactly-once hand-out of a queued trial is Optuna's: a claim appends "RUNNING" for the trial,
and in the log's one order the first claim wins; every process replays the same order, so two
processes never both own the trial.

Limit: the log is never compacted. A process that opens the storage replays every operation of
every study in the database (deleted studies' too) and keeps the studies in memory; Optuna's
snapshots (``BaseJournalSnapshot``) would bound the replay, and are not used yet.

Example:
    >>> import sqlalchemy
    >>> engine = sqlalchemy.create_engine("sqlite://")
    >>> create_tables(engine)
    >>> backend = SqlJournalBackend(engine)
    >>> backend.append_logs([{"op_code": 0, "value": float("nan")}])
    >>> backend.read_logs(0)
    [{'op_code': 0, 'value': nan}]
    >>> backend.read_logs(1)
    []
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat  # not re-exported; RDBStorage uses it
from optuna.storages.journal import BaseJournalBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import (
    Connection,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from lrtune._journal_tables import (
    HEAD,
    HEARTBEATS,
    LOG,
    create_tables,
    epoch_now,
    has_optuna_studies,
    record_heartbeats,
)
from lrtune._rdb import SQLITE_BEGIN_OPTION, get_engine, read_only

logger = logging.getLogger(__name__)

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


def _decoded(bodies: Iterable[str]) -> list[dict[str, Any]]:
    return [json.loads(body) for body in bodies]


class SqlJournalBackend(BaseJournalBackend):
    """Optuna's journal in the tables above, on ``engine`` (the process's one engine).

    ``read_logs(n)``: the operations numbered ``n`` and on, in order. ``append_logs``: appends
    in one transaction, numbered after every operation committed before it. Both raise
    ``sqlalchemy.exc.SQLAlchemyError`` when the database cannot be reached; an append that
    raised may still have been committed (the commit's answer was lost): a later read returns
    it, which is what Optuna's replay expects of a journal. A pickled copy reopens the engine
    from the URL.
    """

    def __init__(self, bind: Engine | Connection) -> None:
        self._bind = bind  # a Connection: every read and append joins its transaction
        self._postgresql = bind.dialect.name == "postgresql"
        self._read_until = 0  # the number after the last operation read_logs returned
        self._unread: tuple[int, list[dict[str, Any]]] | None = None  # read during an append

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._bind.engine.url.render_as_string(hide_password=False)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(get_engine(state["url"]))  # type: ignore[misc]

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        unread, self._unread = self._unread, None
        if unread is not None and unread[0] == log_number_from:
            logs = unread[1]
        else:
            with self._connection(write=False) as connection:
                logs = _read_from(connection, log_number_from)
        self._read_until = log_number_from + len(logs)
        return logs

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        bodies = [json.dumps(log) for log in logs]
        with self._connection(write=True) as connection:
            if self._postgresql:
                first = _append_postgresql(connection, bodies)
            else:
                first = _append(connection, bodies)
            others: list[dict[str, Any]] = []
            if first > self._read_until:  # others appended since this process last read
                others = _read_from(connection, self._read_until, before=first)
        self._unread = (self._read_until, others + _decoded(bodies))

    def _connection(self, *, write: bool) -> AbstractContextManager[Connection]:
        """A connection for one read or one append.

        PostgreSQL: no transaction around it (each statement commits on its own: an append is
        one statement), which saves the BEGIN and COMMIT round trips. SQLite: an append is an
        IMMEDIATE transaction, a read a DEFERRED one.
        """
        if isinstance(self._bind, Connection):
            return contextlib.nullcontext(self._bind)
        if self._postgresql:
            return self._bind.execution_options(isolation_level="AUTOCOMMIT").connect()
        return self._bind.begin() if write else read_only(self._bind)


def _read_from(
    connection: Connection, first: int, *, before: int | None = None
) -> list[dict[str, Any]]:
    """The operations numbered ``first`` and on (up to ``before``), decoded, in order."""
    query = select(LOG.c.body).where(LOG.c.number >= first)
    if before is not None:
        query = query.where(LOG.c.number < before)
    return _decoded(connection.execute(query.order_by(LOG.c.number)).scalars())


def _append(connection: Connection, bodies: list[str]) -> int:
    """Number and insert ``bodies`` after the head (whose row this locks); the first number."""
    claim = update(HEAD).values(next_number=HEAD.c.next_number + len(bodies))
    first = connection.execute(claim.returning(HEAD.c.next_number)).scalar_one() - len(bodies)
    rows = [{"number": first + i, "body": body} for i, body in enumerate(bodies)]
    connection.execute(insert(LOG), rows)
    return first


_APPEND_POSTGRESQL = text(
    f"""
    WITH head AS (
        UPDATE {HEAD.name} SET next_number = next_number + :count RETURNING next_number
    )
    INSERT INTO {LOG.name} (number, body)
    SELECT head.next_number - :count + new.position - 1, new.body
    FROM head, unnest(CAST(:bodies AS text[])) WITH ORDINALITY AS new (body, position)
    RETURNING number
    """
)


def _append_postgresql(connection: Connection, bodies: list[str]) -> int:
    """:func:`_append` as one statement: the head's row stays locked until it commits."""
    numbers = connection.execute(_APPEND_POSTGRESQL, {"count": len(bodies), "bodies": bodies})
    return min(numbers.scalars())


class SqlJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's ``JournalStorage`` on :class:`SqlJournalBackend`, with Optuna's heartbeat.

    A running trial beats every ``heartbeat_interval`` seconds (one upsert into
    ``lrtune_optuna_heartbeats``; a storage error is logged and the next beat tries again, so a
    database restart shorter than the grace period does not fail the trial). A RUNNING trial
    whose last beat is older than ``grace_period`` seconds by the database's clock is stale:
    ``optuna.storages.fail_stale_trials`` fails it and calls
    ``heartbeat_stale_trial_callback`` (lrtune's retries). A RUNNING trial that never beat is
    not stale, as in Optuna's RDB storage.

    Raises:
        ValueError: ``heartbeat_interval`` or ``grace_period`` is not positive.
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        heartbeat_stale_trial_callback: StaleCallback | None = None,
    ) -> None:
        for name, value in (("heartbeat_interval", heartbeat_interval), ("grace", grace_period)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        self.heartbeat_interval = heartbeat_interval
        if grace_period is None and heartbeat_interval is not None:
            grace_period = 2 * heartbeat_interval  # Optuna's RDB storage's default
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback
        self.engine = engine
        super().__init__(SqlJournalBackend(engine))

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["engine"]  # the backend reopens it from the URL
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self.engine = self._backend._bind.engine  # type: ignore[attr-defined]

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            with self.engine.begin() as connection:
                record_heartbeats(connection, [trial_id])
        except SQLAlchemyError as exc:
            logger.warning("trial_id=%d event=heartbeat_failed error=%s", trial_id, exc)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        if not running or self.grace_period is None:
            return []
        stale = select(HEARTBEATS.c.trial_id).where(
            HEARTBEATS.c.trial_id.in_([trial._trial_id for trial in running]),
            HEARTBEATS.c.beat_s < epoch_now() - self.grace_period,
        )
        with read_only(self.engine) as connection:
            return sorted(connection.execute(stale).scalars())

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self.heartbeat_stale_trial_callback


def start_journal(connection: Connection) -> list[str]:
    """Create the journal's tables if needed; copy Optuna's RDB studies into a new journal.

    Runs in the caller's transaction. The copy happens once per database: only while the
    journal holds no operation, under the head row's lock (two processes never both copy).
    Copied trials keep their number, state, values, params, attributes, intermediate values and
    times, not their ids (a journal numbers its trials itself); a copied RUNNING trial gets a
    heartbeat now, so it goes stale and is retried if no worker runs it. Returns the names of
    the studies copied.
    """
    create_tables(connection)
    locked = update(HEAD).values(next_number=HEAD.c.next_number).returning(HEAD.c.next_number)
    if connection.execute(locked).scalar_one() or not has_optuna_studies(connection):
        return []
    from lrtune._optuna import SharedEngineStorage  # the RDB storage, read on its own connection

    reads = connection.engine.execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})
    target = JournalStorage(SqlJournalBackend(connection))
    copied = copy_studies(SharedEngineStorage(reads), target)
    record_heartbeats(connection, _running_trial_ids(target))
    return copied


def copy_studies(source: optuna.storages.BaseStorage, target: JournalStorage) -> list[str]:
    """Copy every study of ``source`` that ``target`` lacks into it; the names copied."""
    existing = {study.study_name for study in target.get_all_studies()}
    copied: list[str] = []
    for study in source.get_all_studies():
        if study.study_name in existing:
            continue
        study_id = target.create_new_study(study.directions, study.study_name)
        for key, value in study.user_attrs.items():
            target.set_study_user_attr(study_id, key, value)
        for key, value in study.system_attrs.items():
            target.set_study_system_attr(study_id, key, value)
        for trial in source.get_all_trials(study._study_id, deepcopy=False):
            target.create_new_trial(study_id, template_trial=trial)
        copied.append(study.study_name)
    return copied


def _running_trial_ids(storage: JournalStorage) -> list[int]:
    return [
        trial._trial_id
        for study in storage.get_all_studies()
        for trial in storage.get_all_trials(study._study_id, False, (TrialState.RUNNING,))
    ]
