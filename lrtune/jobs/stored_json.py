"""Upgrading stored JSON in a migration: rewrite one JSON column's rows from format k to k+1.

Stored JSON (a job's spec, a range test, a recommendation) carries a format version beside
it (``spec_format_version``, ``format_version``; the current ones are
:data:`~lrtune.jobs.records.SPEC_FORMAT_VERSION` and
:data:`~lrtune.jobs.records.RESULT_FORMAT_VERSION`). A change to a stored format bumps its
version and ships an alembic revision that upgrades the rows already stored, so that the
models only ever read the current format:

.. code-block:: python

    # lrtune/jobs/migrations/versions/000N_<slug>.py
    from lrtune.jobs.stored_json import upgrade_json_rows

    def _spec_v1_to_v2(spec: dict) -> dict:  # a pure function of one row's JSON
        search = dict(spec["search"])
        search["budget"] = search.pop("n_trials")
        return {**spec, "search": search}

    def upgrade() -> None:
        upgrade_json_rows(
            op.get_bind(), "lrtune_jobs", "spec", "spec_format_version", 1, _spec_v1_to_v2
        )

The step is a plain function kept in the migration (not an import of today's models), so the
revision replays the same way in a year. Rows are read and rewritten in batches of
``batch_size`` by primary key, so memory stays bounded however many rows there are; the
migration's transaction (alembic runs a revision in one) makes the whole upgrade all or
nothing. Rows at any other version are left alone, so an interrupted and repeated upgrade
rewrites each row once.

Example:
    >>> import sqlalchemy as sa
    >>> engine = sa.create_engine("sqlite://")
    >>> with engine.begin() as conn:
    ...     _ = conn.exec_driver_sql(
    ...         "CREATE TABLE docs (id INTEGER PRIMARY KEY, body JSON, version INTEGER)")
    ...     _ = conn.exec_driver_sql(
    ...         "INSERT INTO docs VALUES (1, '{\\"n\\": 1}', 1), (2, '{\\"n\\": 2}', 2)")
    ...     upgrade_json_rows(conn, "docs", "body", "version", 1, lambda d: {"count": d["n"]})
    ...     conn.exec_driver_sql("SELECT id, body, version FROM docs ORDER BY id").all()
    1
    [(1, '{"count": 1}', 2), (2, '{"n": 2}', 2)]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

JsonStep = Callable[[Any], Any]
"""Turns one row's JSON at format k into the same content at format k+1."""

DEFAULT_BATCH_SIZE = 500


def upgrade_json_rows(
    conn: Connection,
    table: str,
    column: str,
    version_column: str,
    from_version: int,
    step: JsonStep,
    *,
    key: str = "id",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Rewrite ``table.column`` with ``step`` where ``version_column == from_version``.

    Each rewritten row gets ``version_column = from_version + 1``. Returns how many rows it
    rewrote. ``key`` is the table's primary key column (the batches' order).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows_of = sa.table(
        table, sa.column(key), sa.column(column, sa.JSON()), sa.column(version_column)
    )
    pk, body, version = rows_of.c[key], rows_of.c[column], rows_of.c[version_column]
    rewrite = (
        sa.update(rows_of)
        .where(pk == sa.bindparam("_key"), version == from_version)
        .values({column: sa.bindparam("_body", type_=sa.JSON()), version_column: from_version + 1})
    )
    done, last = 0, None
    while True:
        batch = sa.select(pk, body).where(version == from_version).order_by(pk).limit(batch_size)
        if last is not None:
            batch = batch.where(pk > last)
        rows = conn.execute(batch).all()
        if not rows:
            return done
        conn.execute(rewrite, [{"_key": k, "_body": step(value)} for k, value in rows])
        done += len(rows)
        last = rows[-1][0]
