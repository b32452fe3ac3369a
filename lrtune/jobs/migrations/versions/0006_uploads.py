"""Uploaded datasets, content-addressed, with their bytes in the database.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

``lrtune_uploads`` holds one row per distinct upload: its id (the SHA-256 hex of the canonical
data, so the same data uploaded twice is one row), ``kind`` (``dataset``), the user's ``name``,
what a submit checks without reading the data (``task``, ``x_shape``, ``n_classes``), the
stored size and the data itself (``data``: an ``.npz``; ``BLOB`` on SQLite, ``bytea`` on
PostgreSQL), so a worker on any machine reads it with the database URL alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lrtune.jobs.tables import utcnow

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lrtune_uploads",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), server_default="dataset", nullable=False),
        sa.Column("name", sa.String(120), nullable=True),
        sa.Column("task", sa.String(16), nullable=True),
        sa.Column("x_shape", sa.JSON(), nullable=False),
        sa.Column("n_classes", sa.Integer(), nullable=True),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=utcnow(), nullable=False
        ),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("kind IN ('dataset')", name=op.f("ck_lrtune_uploads_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lrtune_uploads")),
    )
    op.create_index("ix_lrtune_uploads_created_at_id", "lrtune_uploads", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_lrtune_uploads_created_at_id", table_name="lrtune_uploads")
    op.drop_table("lrtune_uploads")
