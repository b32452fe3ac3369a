"""Jobs name the task they run, so that a worker claims only jobs whose task it loaded.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

``lrtune_jobs.task_name`` is the ``task.name`` of a job that runs the user's own code
(:mod:`lrtune.task`), NULL for a registry model's job: every job stored before this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("lrtune_jobs", sa.Column("task_name", sa.String(120), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("lrtune_jobs") as batch:
        batch.drop_column("task_name")
