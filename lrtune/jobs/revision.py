"""The job store's schema revision: apply lrtune's migrations, or refuse an outdated database.

The migrations are alembic scripts inside the package (``lrtune/jobs/migrations``), so an
installed wheel can upgrade a database; the alembic configuration is built here, in code, and
no ``alembic.ini`` is needed. lrtune's revision lives in its own table,
``lrtune_alembic_version``, beside Optuna's ``alembic_version``.

Who upgrades:

- ``lrtune db upgrade [--database URL]`` (:func:`upgrade`) on any database; safe to repeat, and
  concurrent upgrades of one database wait for each other.
- The embedded SQLite store upgrades itself when a :class:`~lrtune.jobs.store.JobStore` opens
  it (:func:`ensure_current`): one machine, nobody else to coordinate with.
- A shared database (PostgreSQL) is never upgraded behind its users' backs: a process that
  finds it at another revision refuses to start with a
  :class:`~lrtune.exceptions.StorageUnavailableError` that says to run ``lrtune db upgrade``.

Example:
    >>> import tempfile, pathlib
    >>> url = f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}"
    >>> current_revision(url) is None
    True
    >>> upgrade(url) == head_revision() == current_revision(url)
    True
    >>> check_current(url)
"""

from __future__ import annotations

from functools import cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from lrtune.exceptions import StorageUnavailableError
from lrtune.jobs.db import get_engine, translate_errors
from lrtune.jobs.tables import VERSION_TABLE

SCRIPT_LOCATION = "lrtune.jobs:migrations"
_UPGRADE_LOCK_ID = 0x6C7274756E65  # "lrtune": one PostgreSQL advisory lock for all upgraders


def head_revision() -> str:
    """The revision this lrtune's tables are defined at."""
    head = _scripts().get_current_head()
    assert head is not None, "lrtune ships at least one migration"
    return head


def current_revision(url: str) -> str | None:
    """The database's revision; ``None`` before lrtune's first migration ran there."""
    engine = get_engine(url)
    with translate_errors(engine), engine.connect() as conn:
        return _revision_of(conn)


def upgrade(url: str, revision: str = "head") -> str:
    """Apply every migration the database at ``url`` lacks; return its revision (the head).

    ``revision`` stops at an older revision instead (tests build a database as an older
    lrtune left it, with rows, to check that the later migrations upgrade them).

    Raises:
        StorageUnavailableError: the database cannot be reached, or is at a revision this
            lrtune does not know (a newer lrtune upgraded it).
    """
    engine = get_engine(url)
    with translate_errors(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK_ID})")
        _refuse_unknown(_revision_of(conn), engine)
        config = _config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    return head_revision() if revision == "head" else revision


def check_current(url: str) -> None:
    """Return if the database is at :func:`head_revision`; raise if not.

    Raises:
        StorageUnavailableError: the database is older or newer than this lrtune; the message
            says which and what to run.
    """
    engine = get_engine(url)
    with translate_errors(engine), engine.connect() as conn:
        revision = _revision_of(conn)
    _refuse_unknown(revision, engine)
    if revision != head_revision():
        raise StorageUnavailableError(
            f"the job store at {_where(engine)} has database schema at revision "
            f"{revision or 'none (empty)'}, this lrtune needs {head_revision()}: "
            f"run `lrtune db upgrade --database URL`"
        )


def ensure_current(url: str) -> None:
    """Upgrade an embedded SQLite store; check any other database (see the module)."""
    if get_engine(url).dialect.name == "sqlite":
        if current_revision(url) != head_revision():
            upgrade(url)
    else:
        check_current(url)


def _refuse_unknown(revision: str | None, engine: Engine) -> None:
    if revision is not None and revision not in _known_revisions():
        raise StorageUnavailableError(
            f"the job store at {_where(engine)} has database schema at revision {revision}, "
            f"which this lrtune does not know (it needs {head_revision()}): a newer lrtune "
            "upgraded it; upgrade lrtune"
        )


def _revision_of(conn: Connection) -> str | None:
    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


@cache
def _known_revisions() -> frozenset[str]:
    return frozenset(script.revision for script in _scripts().walk_revisions())


@cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())
