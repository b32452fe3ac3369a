"""The tables of lrtune's Optuna journal (:mod:`lrtune._journal`); SQLAlchemy only, no Optuna.

The job store's models (:mod:`lrtune.jobs.tables`) define them too, so that its migrations
and its model check cover them, without the job store importing Optuna.

Example:
    >>> sorted(METADATA.tables)
    ['lrtune_optuna_heartbeats', 'lrtune_optuna_log', 'lrtune_optuna_log_head']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Double,
    Integer,
    MetaData,
    Table,
    Text,
    func,
    insert,
    inspect,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

LOG_TABLE = "lrtune_optuna_log"
HEAD_TABLE = "lrtune_optuna_log_head"
HEARTBEAT_TABLE = "lrtune_optuna_heartbeats"


def define_tables(metadata: MetaData) -> tuple[Table, Table, Table]:
    """The journal's three tables on ``metadata`` (the job store's models define them too)."""
    log = Table(
        LOG_TABLE,
        metadata,
        Column("number", BigInteger, primary_key=True, autoincrement=False),
        Column("body", Text, nullable=False),
    )
    head = Table(
        HEAD_TABLE,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("next_number", BigInteger, nullable=False),
    )
    heartbeats = Table(
        HEARTBEAT_TABLE,
        metadata,
        Column("trial_id", BigInteger, primary_key=True, autoincrement=False),
        Column("beat_s", Double, nullable=False),
    )
    return log, head, heartbeats


METADATA = MetaData()
LOG, HEAD, HEARTBEATS = define_tables(METADATA)


class epoch_now(FunctionElement[float]):
    """The database's clock in seconds since the Unix epoch (to the millisecond on SQLite)."""

    type = Double()
    inherit_cache = True


@compiles(epoch_now, "postgresql")
def _epoch_now_postgresql(_element: epoch_now, _compiler: Any, **_kw: Any) -> str:
    return "extract(epoch from clock_timestamp())"


@compiles(epoch_now, "sqlite")
def _epoch_now_sqlite(_element: epoch_now, _compiler: Any, **_kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


def create_tables(bind: Engine | Connection) -> None:
    """Create the journal's tables and its head row where they do not exist yet."""
    if isinstance(bind, Engine):
        with bind.begin() as connection:
            create_tables(connection)
        return
    METADATA.create_all(bind, checkfirst=True)
    if bind.execute(select(HEAD.c.id)).first() is None:
        logged = bind.execute(select(func.count()).select_from(LOG)).scalar_one()
        bind.execute(insert(HEAD).values(id=1, next_number=logged))


def record_heartbeats(connection: Connection, trial_ids: Iterable[int]) -> None:
    """Record a heartbeat for each trial now, by the database's clock."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    for trial_id in trial_ids:
        beat = dialect.insert(HEARTBEATS).values(trial_id=trial_id, beat_s=epoch_now())
        connection.execute(
            beat.on_conflict_do_update(
                index_elements=[HEARTBEATS.c.trial_id], set_={"beat_s": epoch_now()}
            )
        )


def has_optuna_studies(connection: Connection) -> bool:
    """Whether the database holds Optuna's RDB tables with a study in them."""
    if not inspect(connection).has_table("studies"):
        return False
    return connection.exec_driver_sql("SELECT 1 FROM studies LIMIT 1").first() is not None
