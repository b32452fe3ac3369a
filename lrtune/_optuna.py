"""The one place lrtune talks to Optuna's internals: attribute keys, the exact queue, heartbeats.

lrtune keeps its state on Optuna studies and trials under the ``ATTR_*`` keys below; nothing
else in the library spells those strings. It relies on these behaviours of Optuna that are not
(all) public API, each pinned by a test in ``tests/test_optuna_adapter.py``:

- ``Study._pop_waiting_trial_id`` claims the oldest WAITING trial atomically (RUNNING for one
  caller only) and returns None when none is left; :class:`QueuedStudy` turns that None into
  :class:`QueueEmpty`, so a study never creates trials beyond its queue. On lrtune's journal
  storage (:mod:`lrtune._journal`) a claim is an appended "RUNNING" operation, and the first
  claim in the log's one order wins in every process (``JournalStorage``'s replay rejects a
  second RUNNING of a trial; ``set_trial_state_values`` returns whether this thread owns it).
- ``Study.enqueue_trial(params, user_attrs=...)`` creates a WAITING trial carrying those attrs.
- ``optuna.storages.fail_stale_trials`` marks a RUNNING trial whose heartbeat is older than the
  grace period FAIL (and the storage's retry callback queues a clone with the same attrs); it
  works on any storage that is a ``BaseHeartbeat`` (``optuna.storages._heartbeat``), as
  :class:`lrtune._journal.SqlJournalStorage` is. Optuna's heartbeat thread calls
  ``record_heartbeat`` in a loop and dies at its first exception: lrtune's storage logs a storage
  error instead, so a trial keeps its heartbeat through a database restart.
- A write to a trial that another process finished (its heartbeat went stale and it was failed)
  raises ``UpdateFinishedTrialError`` (the journal's replay raises it for this process's own
  operation), so a zombie run's results are never written.
- ``RDBStorage`` keeps its engine in ``engine``, its sessions in ``scoped_session`` and its
  schema check in ``_version_manager``, and its methods read only the attributes its
  ``__init__`` sets: :class:`SharedEngineStorage` sets them itself on an engine lrtune owns. It
  only reads studies that an earlier lrtune kept in Optuna's RDB tables, to copy them into the
  journal once (:func:`lrtune._journal.start_journal`).
- ``Study._study_id`` names the study in its storage.
- ``JournalStorage`` (lrtune's journal, :class:`lrtune._journal.SqlJournalStorage`) writes every
  operation through ``_write_log`` and reads through ``_sync_with_backend``, each write
  followed by a read; ``set_trial_state_values(RUNNING)`` reads before it writes its claim; its
  replay (``JournalStorageReplayResult.apply_logs``) replaces a trial it changes by a changed
  copy in ``_trials``. The journal holds a running trial's writes back and shows them to this
  process on top of the replay (:mod:`lrtune._journal_writes`) through these.

:func:`trial_counts`, :func:`waiting_trial_ids` and :func:`best_value` read the study's trials
in memory (``get_trials(deepcopy=False)``): on the journal storage that is one read of the
operations other processes appended since this process's last read.

Example:
    >>> import optuna
    >>> study = open_queued_study(optuna.storages.InMemoryStorage(), "doc", direction="minimize")
    >>> study.enqueue_trial({}, user_attrs={ATTR_SLOT: 0})
    >>> study.optimize(lambda trial: 1.0)
    Traceback (most recent call last):
    ...
    lrtune._optuna.QueueEmpty
    >>> [t.user_attrs[ATTR_SLOT] for t in study.get_trials()]
    [0]
"""

from __future__ import annotations

import collections
import contextlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import optuna
from optuna.storages._rdb import models as rdb_models
from optuna.storages._rdb.storage import _VersionManager
from optuna.trial import TrialState
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import scoped_session, sessionmaker

from lrtune._rdb import SQLITE_BEGIN_OPTION
from lrtune.exceptions import StorageUnavailableError

# Study attributes: what prepare_study stores once per job.
ATTR_SPEC = "lrtune.spec"
ATTR_RANGE_TEST = "lrtune.range_test"
ATTR_BOUNDS = "lrtune.bounds"
ATTR_RUN_SHAPE = "lrtune.run_shape"  # steps per epoch and group multipliers, for readers

# Trial attributes, on search trials and confirmation units alike.
ATTR_SLOT = "lrtune.slot"  # the queue position a trial fills (a retry keeps it)
ATTR_ROOT = "lrtune.root_trial"  # the first trial of a slot: names its checkpoint
ATTR_SCHEDULE = "schedule"
ATTR_BASE_LR = "base_lr"
ATTR_RUN = "run"
ATTR_STOP_REASON = "stop_reason"  # why a trial ended early (pruned, diverged)
ATTR_FAIL_REASON = "lrtune.fail_reason"  # why a trial FAILED (Optuna 5 keeps none)

# Confirmation units: what candidate they train, on which seed.
ATTR_CANDIDATE = "lrtune.candidate"
ATTR_SEED = "lrtune.seed"
ATTR_SAME_AS = "lrtune.same_as"  # a finalist identical to a baseline is not trained twice
ATTR_LR_FREE = "lrtune.lr_free"  # a baseline unit's learning-rate-free optimizer, if any

# Search study and trials: the earlier jobs' winners a job was warm-started with.
ATTR_WARM_STARTS = "lrtune.warm_starts"  # on the study: the winners, chosen once
ATTR_WARM_START = "lrtune.warm_start"  # on a trial: which winner it is, and any LR clipping

CONFIRM_SUFFIX = ":confirm"  # JobSpec names cannot hold ':', so this never names a user's study

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
UNFINISHED = (TrialState.WAITING, TrialState.RUNNING)


class QueueEmpty(Exception):
    """The study's queue is empty: every queued trial has been handed out."""


class QueueRefused(QueueEmpty):
    """The study's gate handed out nothing although trials are queued (see :class:`Gate`)."""


Gate = Callable[["QueuedStudy"], AbstractContextManager[None]]
"""Wraps each pop of a :class:`QueuedStudy`: entered just before the pop, left after it.

It may raise :class:`QueueRefused` on entering (nothing is handed out), and may hold a lock
for the duration, so that what it checked still holds when the trial is popped.
"""


class QueuedStudy(optuna.Study):
    """A study whose ``ask`` only hands out queued trials instead of creating new ones.

    Optuna's ``_pop_waiting_trial_id`` claims a WAITING trial atomically in the storage, so two
    workers never get the same trial; refusing to fall back to
    ``create_new_trial`` is what keeps the trial count exact under concurrency. ``gate``, when
    set, wraps every pop (a job's ``max_parallel``, its target and its timeout).
    """

    gate: Gate | None = None

    def _pop_waiting_trial_id(self) -> int | None:
        gate = self.gate(self) if self.gate is not None else contextlib.nullcontext()
        with one_read(self), gate:  # the gate's reads, under its lock, and the pop's: one
            trial_id = self.pop_unstarted()
        if trial_id is None:
            raise QueueEmpty
        return trial_id

    def pop_unstarted(self) -> int | None:
        """Claim the oldest queued trial without the gate (to close it unrun); None if none."""
        return super()._pop_waiting_trial_id()  # Optuna's own claim


def open_queued_study(
    storage: optuna.storages.BaseStorage,
    study_name: str,
    *,
    direction: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> QueuedStudy:
    """Create the study, or load it when it exists, as a :class:`QueuedStudy`.

    An existing study is only read: on a journal storage, ``create_study(load_if_exists=True)``
    would append a "create" operation every time (which every process then replays).
    """
    try:
        storage.get_study_id_from_name(study_name)
    except KeyError:  # not yet; load_if_exists: another process may create it meanwhile
        optuna.create_study(
            storage=storage, study_name=study_name, direction=direction, load_if_exists=True
        )
    return QueuedStudy(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)


class SharedEngineStorage(optuna.storages.RDBStorage):
    """An Optuna ``RDBStorage`` on ``engine``: no engine or pool of its own; no heartbeat.

    lrtune's studies live in its journal (:mod:`lrtune._journal`); this storage reads the
    studies an earlier lrtune kept in Optuna's RDB tables, to copy them into the journal.
    ``RDBStorage(url)`` would create an engine, and so a pool, of its own (optuna#1347); this
    sets the attributes Optuna's ``__init__`` would set, with ``engine`` in place of a new one,
    and checks the tables' schema as ``RDBStorage`` does.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached.
        RuntimeError: Optuna's tables are of a schema version this Optuna cannot read.
    """

    def __init__(self, engine: Engine) -> None:  # no super().__init__(): it creates an engine
        self.engine_kwargs: dict[str, object] = {}
        self.url = engine.url.render_as_string(hide_password=False)
        self.skip_compatibility_check = False
        self.heartbeat_interval = None
        self.grace_period = None
        self.heartbeat_stale_trial_callback = None
        self.failed_trial_callback = None
        self.engine = engine
        self.scoped_session = scoped_session(sessionmaker(bind=engine))
        rdb_models.BaseModel.metadata.create_all(engine)
        # Optuna's schema check reads on one connection while a session of its own writes on
        # another: with both IMMEDIATE, SQLite's second would wait for the first forever; with
        # DEFERRED, a write after a read fails at once if another process wrote in between.
        # Statements that commit on their own are what Optuna's check was written for.
        reads = engine.execution_options(**{SQLITE_BEGIN_OPTION: "AUTOCOMMIT"})
        versions = scoped_session(sessionmaker(bind=reads))
        self._version_manager = _VersionManager(self.url, reads, versions)
        self._version_manager.check_table_schema_compatibility()


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage  # Study has no public accessor for its storage


def one_read(study: optuna.Study) -> AbstractContextManager[None]:
    """Reads of ``study``'s storage on this thread in the block share one read of what other
    processes wrote, at the first (lrtune's journal:
    :meth:`~lrtune._journal.SqlJournalStorage.one_read`); elsewhere each read is its own."""
    block = getattr(storage_of(study), "one_read", None)
    return block() if block is not None else contextlib.nullcontext()


def publish(trial: optuna.Trial) -> None:
    """Append the writes to ``trial`` that its storage holds back (lrtune's journal holds a
    running trial's for up to half a second: :mod:`lrtune._journal_writes`), so that other
    processes see them now: e.g. a unit's plan, before it trains."""
    flush = getattr(storage_of(trial.study), "flush", None)
    if flush is not None:
        flush(trial._trial_id)


def heartbeat_interval(study: optuna.Study) -> float | None:
    """The storage's heartbeat interval in seconds, None when it has no heartbeat."""
    interval = getattr(storage_of(study), "get_heartbeat_interval", lambda: None)()
    return float(interval) if interval else None


def fail_stale_trials(study: optuna.Study) -> None:
    """Mark trials whose worker stopped sending heartbeats FAIL (and let the storage retry them).

    Optuna calls this experimental; lrtune relies on it knowingly, so its warning is silenced.
    The study is read first: lrtune's journal looks for stale trials among the trials as it last
    read them (Optuna's own check before each trial follows the reads of the trial before).
    """
    study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def trial_counts(study: optuna.Study) -> collections.Counter[TrialState]:
    """How many of the study's trials are in each state now (here or in other processes)."""
    return collections.Counter(t.state for t in study.get_trials(deepcopy=False))


def waiting_trial_ids(study: optuna.Study) -> list[int]:
    """The ids of the study's queued (WAITING) trials, oldest first."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return [t._trial_id for t in waiting]


def best_value(study: optuna.Study) -> float | None:
    """The best value of the study's COMPLETE trials (single objective); None before any."""
    try:
        return study.best_value
    except ValueError:  # no trial has completed yet
        return None


def has_unfinished(study: optuna.Study) -> bool:
    """Whether any trial is still queued or running (here or in another process)."""
    counts = trial_counts(study)
    return any(counts[state] for state in UNFINISHED)


def count_running(study: optuna.Study) -> int:
    """How many of the study's trials are running now (here or in another process)."""
    return trial_counts(study)[TrialState.RUNNING]


def close_unstarted(study: QueuedStudy, reason: str) -> int:
    """Finish every queued trial PRUNED, unrun, with ``reason`` as its stop reason.

    Each is claimed first (atomically, as a worker claims one to run it), so two processes
    closing the same queue never close one trial twice; the claim records a heartbeat, so a
    process that dies in between leaves a trial that goes stale and is retried, not a stuck
    one. Returns how many this call closed.
    """
    storage = storage_of(study)
    closed = 0
    while (trial_id := study.pop_unstarted()) is not None:
        if heartbeat_interval(study):  # only storages with a heartbeat have an interval
            storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
        storage.set_trial_user_attr(trial_id, ATTR_STOP_REASON, reason)
        storage.set_trial_state_values(trial_id, TrialState.PRUNED)
        closed += 1
    return closed


def has_waiting(study: optuna.Study) -> bool:
    """Whether any trial is still queued, not yet claimed by a process."""
    return trial_counts(study)[TrialState.WAITING] > 0


# Errors of the storage, not of a trial: a run that meets one stops instead of recording a FAIL.
# UpdateFinishedTrialError: another worker failed the trial (its heartbeat went stale while the
# database was away) and queued its retry; this run's results must not be written.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    optuna.exceptions.StorageInternalError,
    optuna.exceptions.UpdateFinishedTrialError,
)


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """Turn a storage failure inside the block into :class:`StorageUnavailableError`.

    The message keeps the error's class and first line (for Optuna's StorageInternalError, its
    cause's: the driver's error), which name a server address, never a password
    (SQLAlchemy's messages do not carry the URL's credentials). Usable as a decorator.
    """
    try:
        yield
    except STORAGE_ERRORS as exc:
        cause = exc
        if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__:
            cause = exc.__cause__  # Optuna's own message guesses at "invalid data"
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise StorageUnavailableError(
            f"storage unavailable: {type(cause).__name__}: {first_line}"
        ) from exc
