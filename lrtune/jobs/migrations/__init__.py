"""Alembic migrations of the job store's tables, shipped in the package (see lrtune.jobs.schema)."""
