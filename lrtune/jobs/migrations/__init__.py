"""Alembic migrations of the job store's tables, shipped in the package (applied by
lrtune.jobs.revision)."""
