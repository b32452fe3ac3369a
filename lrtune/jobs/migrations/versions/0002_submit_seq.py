"""Jobs get ``submit_seq``: the order they were submitted in, for claims and listings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Existing jobs are numbered in the order ``(created_at, id)`` gave them, in batches. PostgreSQL
numbers new jobs from a sequence owned by the column (it goes when the table goes); SQLite has
none, and the store gives a new job the next number inside the submit's IMMEDIATE transaction.
SQLite cannot make an added column NOT NULL without copying the table (which, with foreign
keys on, would cascade-delete every job's events), so there the column is added NOT NULL with
a placeholder default of 0 that the backfill overwrites and the store never relies on.

No stored JSON format changes here; a revision that changes one rewrites the stored rows with
:func:`lrtune.jobs.stored_json.upgrade_json_rows`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SEQUENCE = "lrtune_jobs_submit_seq"
BATCH = 1000


def upgrade() -> None:
    conn = op.get_bind()
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        op.execute(f"CREATE SEQUENCE {SEQUENCE} OWNED BY NONE")
        op.add_column("lrtune_jobs", sa.Column("submit_seq", sa.BigInteger(), nullable=True))
    else:
        op.add_column(
            "lrtune_jobs",
            sa.Column("submit_seq", sa.BigInteger(), nullable=False, server_default="0"),
        )
    count = _number_existing_jobs(conn)
    if postgres:
        op.execute(f"ALTER SEQUENCE {SEQUENCE} OWNED BY lrtune_jobs.submit_seq")
        if count:
            op.execute(f"SELECT setval('{SEQUENCE}', {count})")
        op.alter_column(
            "lrtune_jobs",
            "submit_seq",
            nullable=False,
            server_default=sa.text(f"nextval('{SEQUENCE}')"),
        )
    op.create_index("ix_lrtune_jobs_submit_seq", "lrtune_jobs", ["submit_seq"], unique=True)
    op.create_index("ix_lrtune_jobs_status_submit_seq", "lrtune_jobs", ["status", "submit_seq"])


def _number_existing_jobs(conn: sa.Connection) -> int:
    """Give the jobs already stored 1, 2, ... in ``(created_at, id)`` order; return how many."""
    jobs = sa.table(
        "lrtune_jobs", sa.column("id"), sa.column("created_at"), sa.column("submit_seq")
    )
    ids = conn.execute(sa.select(jobs.c.id).order_by(jobs.c.created_at, jobs.c.id)).scalars().all()
    number = (
        sa.update(jobs)
        .where(jobs.c.id == sa.bindparam("_id"))
        .values(submit_seq=sa.bindparam("_n"))
    )
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        conn.execute(number, [{"_id": i, "_n": start + k + 1} for k, i in enumerate(batch)])
    return len(ids)


def downgrade() -> None:
    op.drop_index("ix_lrtune_jobs_status_submit_seq", table_name="lrtune_jobs")
    op.drop_index("ix_lrtune_jobs_submit_seq", table_name="lrtune_jobs")
    op.drop_column("lrtune_jobs", "submit_seq")  # PostgreSQL drops the sequence it owns
