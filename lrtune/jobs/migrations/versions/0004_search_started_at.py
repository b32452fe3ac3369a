"""Jobs record when they entered ``searching``, so ``search.timeout_s`` counts by the database.

Revision ID: 0004
Revises: 0001
Create Date: 2026-12-01

Jobs already past ``searching`` keep NULL: their timeout is not enforced.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("lrtune_jobs") as batch:
        batch.add_column(sa.Column("search_started_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lrtune_jobs") as batch:
        batch.drop_column("search_started_at")
