"""PostgreSQL tells listeners at once when a job is submitted or its status changes.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

A trigger on ``lrtune_jobs`` sends ``NOTIFY lrtune_jobs`` (the payload: the new status) when a
job is inserted, and when an UPDATE changes its status; the notification goes out when the
transaction commits. Idle workers listen (:mod:`lrtune.jobs.changes`) instead of finding the
change at their next poll. The UPDATE trigger's ``WHEN`` is checked without calling the
function, so the many updates that leave the status alone (progress, heartbeats of a lease)
cost nothing more. SQLite has no notifications: nothing changes there.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

CHANNEL = "lrtune_jobs"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION lrtune_notify_job_change() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', NEW.status);
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        "CREATE TRIGGER lrtune_job_submitted AFTER INSERT ON lrtune_jobs "
        "FOR EACH ROW EXECUTE FUNCTION lrtune_notify_job_change()"
    )
    op.execute(
        "CREATE TRIGGER lrtune_job_status_changed AFTER UPDATE OF status ON lrtune_jobs "
        "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
        "EXECUTE FUNCTION lrtune_notify_job_change()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS lrtune_job_status_changed ON lrtune_jobs")
    op.execute("DROP TRIGGER IF EXISTS lrtune_job_submitted ON lrtune_jobs")
    op.execute("DROP FUNCTION IF EXISTS lrtune_notify_job_change()")
