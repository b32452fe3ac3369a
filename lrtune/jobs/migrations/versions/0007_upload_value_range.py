"""Uploads record the range of their features' values, so a submit can check token ids.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

``lrtune_uploads`` gains ``x_min`` and ``x_max`` (the smallest and largest feature value) and
``x_integral`` (every feature value is a whole number): what a ``sequential`` model whose first
layer is an ``embedding`` would be fed as token ids, checked against its ``num_embeddings`` at
submit (:func:`lrtune.registry.check_token_range`) instead of failing at a worker.

Rows stored before this revision keep NULL in the three columns, and a submit does not check
them: filling them in here would read and decode every stored upload (up to the upload cap
each) inside the migration. Uploading the same data again fills them in
(:meth:`lrtune.jobs.uploads.DatasetUploads.save`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_COLUMNS = ("x_min", "x_max", "x_integral")


def upgrade() -> None:
    op.add_column("lrtune_uploads", sa.Column("x_min", sa.Float(), nullable=True))
    op.add_column("lrtune_uploads", sa.Column("x_max", sa.Float(), nullable=True))
    op.add_column("lrtune_uploads", sa.Column("x_integral", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lrtune_uploads") as batch:
        for column in _COLUMNS:
            batch.drop_column(column)
