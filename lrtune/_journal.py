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
insert in one ``WITH``), a read one ``SELECT``: no BEGIN or COMMIT round trips; a storage that
runs trials sends them on the process's one held connection (no checkout and ping per
statement). An append that finds no row appended by others since this process's last read skips
the read that ``JournalStorage`` makes after every write: its own rows are all that is new.
Otherwise it reads the rows between (all committed: their appends held the head's lock before
it).

Each append waits for its commit to reach the disk, so the storage appends as few as it can: a
running trial's writes (parameters, attributes, reports) wait up to half a second for the trial's
next append and go with it (:mod:`lrtune._journal_writes`, which says why claims, fencing, resume
and pruning are as before): a trial of short epochs is a few appends, its claim, its plan, one each
half second (or nine epochs), and its finish. Reads of a trial that is finished or that this process
runs are answered from memory.

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
import copy
import json
import logging
import threading
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import optuna
from optuna.storages._heartbeat import BaseHeartbeat  # not re-exported; RDBStorage uses it
from optuna.storages.journal import BaseJournalBackend, JournalStorage
from optuna.storages.journal._storage import JournalStorageReplayResult
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import (
    Connection,
    Select,
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
from lrtune._journal_writes import FLUSH_S, Log, PendingWrites, detached
from lrtune._rdb import SQLITE_BEGIN_OPTION, HeldConnection, get_engine, held_connection, read_only

logger = logging.getLogger(__name__)

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]
T = TypeVar("T")


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

    ``hold_connection`` (PostgreSQL): read and append on the process's one held connection to
    the engine (:func:`held_connection`, shared by every such backend), not one checked out
    (and pinged) for each: one round trip a statement instead of two.
    """

    def __init__(self, bind: Engine | Connection, *, hold_connection: bool = False) -> None:
        self._bind = bind  # a Connection: every read and append joins its transaction
        self._postgresql = bind.dialect.name == "postgresql"
        self._read_until = 0  # the number after the last operation read_logs returned
        self._unread: tuple[int, list[dict[str, Any]]] | None = None  # read during an append
        self._held: HeldConnection | None = None
        if hold_connection and self._postgresql and isinstance(bind, Engine):
            self._held = held_connection(bind)

    def __getstate__(self) -> dict[str, Any]:
        url = self._bind.engine.url.render_as_string(hide_password=False)
        return {"url": url, "hold_connection": self._held is not None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        engine = get_engine(state["url"])
        self.__init__(engine, hold_connection=state.get("hold_connection", False))  # type: ignore[misc]

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        unread, self._unread = self._unread, None
        if unread is not None and unread[0] == log_number_from:
            logs = unread[1]
        else:
            logs = self._read(lambda connection: _read_from(connection, log_number_from))
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

    def record_heartbeat(self, trial_id: int) -> None:
        """Record a heartbeat of ``trial_id`` now (on PostgreSQL one statement that commits on
        its own, on the held connection if there is one)."""
        with self._connection(write=True) as connection:
            record_heartbeats(connection, [trial_id])

    def scalars(self, query: Select[Any]) -> list[Any]:
        """The first column of ``query``'s rows, read as :meth:`read_logs` reads."""
        return self._read(lambda connection: list(connection.execute(query).scalars()))

    def _read(self, query: Callable[[Connection], list[T]]) -> list[T]:
        """``query`` run as a read: on the held connection (again on a new one if that one was
        gone), else on a connection for this read."""
        if self._held is not None:
            return self._held.read(query)
        with self._connection(write=False) as connection:
            return query(connection)

    def _connection(self, *, write: bool) -> AbstractContextManager[Connection]:
        """A connection for one read or one append.

        PostgreSQL: no transaction around it (each statement commits on its own: an append is
        one statement), which saves the BEGIN and COMMIT round trips; the held connection if
        there is one. SQLite: an append is an IMMEDIATE transaction, a read a DEFERRED one.
        """
        if isinstance(self._bind, Connection):
            return contextlib.nullcontext(self._bind)
        if self._held is not None:
            return self._held.use()
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
    """Optuna's ``JournalStorage`` on :class:`SqlJournalBackend`, with Optuna's heartbeat, and
    a running trial's writes held back for its next append (:mod:`lrtune._journal_writes`).

    A running trial beats every ``heartbeat_interval`` seconds (one upsert into
    ``lrtune_optuna_heartbeats``; a storage error is logged and the next beat tries again, so a
    database restart shorter than the grace period does not fail the trial). A RUNNING trial
    whose last beat is older than ``grace_period`` seconds by the database's clock is stale:
    ``optuna.storages.fail_stale_trials`` fails it and calls
    ``heartbeat_stale_trial_callback`` (lrtune's retries). A RUNNING trial that never beat is
    not stale, as in Optuna's RDB storage. A storage with a heartbeat runs trials: on
    PostgreSQL it sends its statements on the process's held connection (one for all such
    storages: :func:`held_connection`).

    Writes to a trial this process runs wait up to ``flush_s`` seconds (and 8 reports) for the
    trial's next append (:mod:`lrtune._journal_writes` says why that keeps claims, fencing, resume
    and pruning as they were); :meth:`flush` appends them now. Reads in this process show them. A
    read of one trial that is finished, or that this process runs, is answered from memory: nothing
    but this process changes it (another process failing it as stale is learned at this process's
    next append to it, which the journal refuses).

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
        flush_s: float = FLUSH_S,
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
        self._writes = PendingWrites(flush_s)
        self._skip_read: int | None = None  # this thread's next sync reads nothing
        self._one_read = threading.local()  # this thread's one_read block: active, synced
        backend = SqlJournalBackend(engine, hold_connection=heartbeat_interval is not None)
        super().__init__(backend)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["engine"]  # the backend reopens it from the URL
        del state["_one_read"]
        state["_writes"] = PendingWrites(self._writes.flush_s, self._writes.max_reports)
        state["_skip_read"] = None
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self.engine = self._backend._bind.engine  # type: ignore[attr-defined]
        self._one_read = threading.local()

    @contextlib.contextmanager
    def one_read(self) -> Iterator[None]:
        """Reads on this thread in the block read the log once, at the first; the rest are
        answered from memory (this process's own writes included), as of that read.

        For a burst of reads that decide one thing together (a unit's progress report and
        failure check; the gate's count of running units and the pop after it), which would
        otherwise send a SELECT each, milliseconds apart. A read in the block is as fresh as
        the block's first read: enter it where a read made then is fresh enough (e.g. inside
        the lock the decision needs). A write in the block is read back as outside one (its
        read tells whether the journal accepted it), and the reads after it are as fresh as
        that read. Nested blocks are the outermost one's.
        """
        block = self._one_read
        if getattr(block, "active", False):
            yield
            return
        block.active, block.synced = True, False
        try:
            yield
        finally:
            block.active = block.synced = False

    def flush(self, trial_id: int) -> None:
        """Append ``trial_id``'s waiting writes now (one append), so other processes see them.

        Raises:
            optuna.exceptions.UpdateFinishedTrialError: another process finished the trial (it
                went stale): the journal refused the writes.
            sqlalchemy.exc.SQLAlchemyError: the database cannot be reached.
        """
        with self._thread_lock:
            logs = self._writes.take(trial_id)
            if logs:
                self._append(logs)
                self._sync_with_backend()

    def _write_log(self, op_code: int, extra_fields: dict[str, Any]) -> None:
        """Optuna's every write: held back if it may wait (then the read Optuna makes after it
        is skipped: there is nothing of this process's to read), else appended with its
        trial's waiting writes before it, in one append."""
        log = {"op_code": op_code, "worker_id": self._replay_result.worker_id, **extra_fields}
        if self._writes.defer(log):
            self._skip_read = threading.get_ident()
            return
        self._append(self._writes.due(log))

    def _append(self, logs: list[Log]) -> None:
        """Append ``logs``; the read after it (Optuna's, which tells whether they were
        accepted) reads even inside a :meth:`one_read` block."""
        self._backend.append_logs(logs)
        self._one_read.synced = False

    def _sync_with_backend(self) -> None:
        """Replay what was appended since the last read. Every operation read is applied, even
        after one of this process's is refused (one batch can hold several); the first
        refusal is raised after."""
        if self._skip_read == threading.get_ident():
            self._skip_read = None
            return
        block = self._one_read
        if getattr(block, "synced", False):
            return
        _apply_each(
            self._replay_result, self._backend.read_logs(self._replay_result.log_number_read)
        )
        if getattr(block, "active", False):
            block.synced = True

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = super().create_new_trial(study_id, template_trial)
        if template_trial is None or template_trial.state == TrialState.RUNNING:
            with self._thread_lock:
                self._writes.claimed(trial_id)
        return trial_id

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        """Optuna's, but a claim skips the read Optuna makes before it: its append reads every
        operation appended before it (a claim of a trial another process took meanwhile is
        then refused, as one appended a moment later would be)."""
        if state == TrialState.RUNNING:
            self._skip_read = threading.get_ident()
        try:
            owned = super().set_trial_state_values(trial_id, state, values)
        finally:
            self._skip_read = None
        if state == TrialState.RUNNING:
            with self._thread_lock:
                (self._writes.claimed if owned else self._writes.ended)(trial_id)
        return owned

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._thread_lock:
            if not self._settled(trial_id):
                self._sync_with_backend()
            trial = self._writes.overlaid(self._replay_result).get_trial(trial_id)
            return detached(trial) if self._writes.running_here(trial_id) else trial

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        with self._thread_lock:
            self._sync_with_backend()
            trials = self._writes.overlaid(self._replay_result).get_all_trials(study_id, states)
            return copy.deepcopy(trials) if deepcopy else trials

    def _settled(self, trial_id: int) -> bool:
        """Whether no other process can change ``trial_id`` now but by failing it as stale."""
        trial = self._replay_result._trials.get(trial_id)
        return trial is not None and (
            trial.state.is_finished() or self._writes.running_here(trial_id)
        )

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self._backend.record_heartbeat(trial_id)  # type: ignore[attr-defined]
        except SQLAlchemyError as exc:
            logger.warning("trial_id=%d event=heartbeat_failed error=%s", trial_id, exc)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """The RUNNING trials, as this process last read them, whose last beat is stale.

        From memory, not a read of the log: Optuna asks before every trial, right after the
        reads of the trial before. A trial claimed since is too young to be stale; one that
        finished since is refused when Optuna fails it (``UpdateFinishedTrialError``).
        """
        with self._thread_lock:
            running = self._replay_result.get_all_trials(study_id, (TrialState.RUNNING,))
        if not running or self.grace_period is None:
            return []
        stale = select(HEARTBEATS.c.trial_id).where(
            HEARTBEATS.c.trial_id.in_([trial._trial_id for trial in running]),
            HEARTBEATS.c.beat_s < epoch_now() - self.grace_period,
        )
        return sorted(self._backend.scalars(stale))  # type: ignore[attr-defined]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self.heartbeat_stale_trial_callback


def _apply_each(replay: JournalStorageReplayResult, logs: list[Log]) -> None:
    """Apply every one of ``logs`` to ``replay``; raise the first error after (Optuna's
    ``apply_logs`` stops at it, and would leave the rest to the next read, raising again)."""
    refused: Exception | None = None
    for log in logs:
        try:
            replay.apply_logs([log])
        except Exception as exc:  # KeyError, UpdateFinishedTrialError, ...: this process's op
            refused = refused or exc
    if refused is not None:
        raise refused


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
