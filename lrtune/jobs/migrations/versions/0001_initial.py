"""The job store's first schema: jobs, range tests, recommendations, workers, job events.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Server-side defaults use :class:`lrtune.jobs.tables.utcnow`, which renders the database clock
per dialect; a later revision must keep that function (or inline its SQL) to stay replayable.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from lrtune.jobs.tables import utcnow

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "lrtune_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_format_version", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("study_name", sa.String(length=120), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=utcnow(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=utcnow(), nullable=False
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("holder_worker_id", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("fencing_token", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'finding', 'searching', 'confirming',"
            " 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_lrtune_jobs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lrtune_jobs")),
        sa.UniqueConstraint("study_name", name=op.f("uq_lrtune_jobs_study_name")),
    )
    op.create_index("ix_lrtune_jobs_created_at_id", "lrtune_jobs", ["created_at", "id"])
    op.create_index(op.f("ix_lrtune_jobs_fingerprint"), "lrtune_jobs", ["fingerprint"])
    op.create_index("ix_lrtune_jobs_status_created_at", "lrtune_jobs", ["status", "created_at"])
    op.create_table(
        "lrtune_workers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=utcnow(), nullable=False
        ),
        sa.Column(
            "last_heartbeat", sa.DateTime(timezone=True), server_default=utcnow(), nullable=False
        ),
        sa.Column("plugin_registry", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lrtune_workers")),
    )
    op.create_table(
        "lrtune_job_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=utcnow(), nullable=False
        ),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["lrtune_jobs.id"],
            name=op.f("fk_lrtune_job_events_job_id_lrtune_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lrtune_job_events")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_lrtune_job_events_job_id_id", "lrtune_job_events", ["job_id", "id"])
    op.create_table(
        "lrtune_range_tests",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("format_version", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("lrtune_version", sa.String(length=32), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("lr_min", sa.Float(), nullable=True),
        sa.Column("lr_max", sa.Float(), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("search_config", sa.JSON(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=utcnow(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["lrtune_jobs.id"],
            name=op.f("fk_lrtune_range_tests_job_id_lrtune_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lrtune_range_tests")),
        sa.UniqueConstraint("job_id", name=op.f("uq_lrtune_range_tests_job_id")),
    )
    op.create_table(
        "lrtune_recommendations",
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("format_version", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("lrtune_version", sa.String(length=32), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("lr_min", sa.Float(), nullable=True),
        sa.Column("lr_max", sa.Float(), nullable=True),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("search_config", sa.JSON(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=utcnow(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["lrtune_jobs.id"],
            name=op.f("fk_lrtune_recommendations_job_id_lrtune_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lrtune_recommendations")),
        sa.UniqueConstraint("job_id", name=op.f("uq_lrtune_recommendations_job_id")),
    )
    op.create_index(
        op.f("ix_lrtune_recommendations_fingerprint"), "lrtune_recommendations", ["fingerprint"]
    )


def downgrade() -> None:
    for table in (
        "lrtune_recommendations",
        "lrtune_range_tests",
        "lrtune_job_events",
        "lrtune_workers",
        "lrtune_jobs",
    ):
        op.drop_table(table)  # its indexes go with it
