"""Workers: what each is doing, its concurrency, threads and heartbeat interval, when it stopped.

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-01

``lrtune_workers`` gains ``concurrency`` and ``threads`` (units at once, torch threads per
unit), ``heartbeat_s`` (its own interval: liveness is judged against it), ``activity`` (JSON:
the jobs and phases it held at its last heartbeat) and ``stopped_at`` (a clean exit). Rows of
workers that ran before this revision read as concurrency 1, 1 thread, a 10 s heartbeat.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lrtune_workers") as batch:
        batch.add_column(sa.Column("concurrency", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("threads", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("heartbeat_s", sa.Float(), server_default="10", nullable=False))
        batch.add_column(sa.Column("activity", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lrtune_workers") as batch:
        for column in ("stopped_at", "activity", "heartbeat_s", "threads", "concurrency"):
            batch.drop_column(column)
