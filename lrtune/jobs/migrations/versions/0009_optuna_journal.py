"""Optuna's studies move to a journal: an append-only log table, read incrementally.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

``lrtune_optuna_log`` (operations numbered 0, 1, ... as JSON text), ``lrtune_optuna_log_head``
(one row: the next number; appends lock it) and ``lrtune_optuna_heartbeats`` (each trial's last
heartbeat by the database's clock): see :mod:`lrtune._journal`. Studies already in Optuna's RDB
tables are copied into the journal with their trials (numbers, states, values, params,
attributes, intermediate values and times; trial ids are renumbered, so run the upgrade with no
worker or agent running); the RDB tables are left in place, unwritten. Downgrading drops the
journal: studies created after the upgrade are lost.
"""

from __future__ import annotations

from alembic import op

from lrtune._journal_tables import METADATA, create_tables, has_optuna_studies

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    connection = op.get_bind()
    create_tables(connection)
    if has_optuna_studies(connection):
        from lrtune._journal import start_journal  # imports Optuna: only where there is a study

        start_journal(connection)


def downgrade() -> None:
    METADATA.drop_all(op.get_bind())
