"""Alembic environment for the job store: runs on the connection lrtune.jobs.revision passes in.

There is no alembic.ini: :mod:`lrtune.jobs.revision` builds the configuration in code and puts an
open connection in ``config.attributes["connection"]``. lrtune's revision is kept in its own
version table, so Optuna's ``alembic_version`` in the same database is never touched.
Alembic runs this script; importing it elsewhere fails (pytest's doctest collection skips it).
"""

from __future__ import annotations

from alembic import context

from lrtune.jobs.tables import VERSION_TABLE, Base, is_lrtune_table

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    version_table=VERSION_TABLE,
    include_name=is_lrtune_table,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
)
with context.begin_transaction():
    context.run_migrations()
