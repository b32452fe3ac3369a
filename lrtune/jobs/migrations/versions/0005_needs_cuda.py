"""Jobs say whether they need CUDA, so that a CPU-only worker never claims one.

Revision ID: 0005
Revises: 0001
Create Date: 2026-12-01

``lrtune_jobs.needs_cuda`` is true for a spec whose ``device`` is ``cuda`` or ``cuda:N`` (see
:attr:`lrtune.spec.JobSpec.needs_cuda`); jobs stored before this revision are backfilled from
their spec JSON.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BATCH = 500


def upgrade() -> None:
    op.add_column(
        "lrtune_jobs",
        sa.Column("needs_cuda", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    jobs = sa.table(
        "lrtune_jobs",
        sa.column("id", sa.String(36)),
        sa.column("spec", sa.JSON()),
        sa.column("needs_cuda", sa.Boolean()),
    )
    conn = op.get_bind()
    cuda = [
        row.id
        for row in conn.execute(sa.select(jobs.c.id, jobs.c.spec))
        if str((row.spec or {}).get("device", "auto")).startswith("cuda")
    ]
    for start in range(0, len(cuda), _BATCH):
        ids = cuda[start : start + _BATCH]
        conn.execute(sa.update(jobs).where(jobs.c.id.in_(ids)).values(needs_cuda=True))


def downgrade() -> None:
    with op.batch_alter_table("lrtune_jobs") as batch:
        batch.drop_column("needs_cuda")
