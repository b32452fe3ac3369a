"""Jobs count the updates of their row, so that a reader can tell at once that one changed.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

``lrtune_jobs.row_version`` grows by one with every UPDATE of the job's row (the ORM adds it to
every UPDATE: :mod:`lrtune.jobs.tables`); the API serves ``GET /v1/jobs/{id}`` from a body it
built at one version while the row is still at that version. Jobs stored before this revision
start at 1.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "lrtune_jobs",
        sa.Column("row_version", sa.BigInteger(), server_default="1", nullable=False),
    )


def downgrade() -> None:
    with op.batch_alter_table("lrtune_jobs") as batch:
        batch.drop_column("row_version")
