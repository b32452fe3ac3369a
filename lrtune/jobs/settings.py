"""The job store's settings: the one place that reads the environment for it.

Each field is read from ``LRTUNE_<FIELD>`` (``LRTUNE_DATABASE_URL``, ``LRTUNE_DB_POOL_SIZE``,
...) and falls back to its default. The default database is ``sqlite:///lrtune.db``: a SQLite
file named ``lrtune.db`` in the current directory, the zero-setup single-machine store. A fleet
of workers on several machines shares a PostgreSQL database instead, e.g.
``LRTUNE_DATABASE_URL=postgresql+psycopg://lrtune:secret@db-host/lrtune``.

Pool sizes bound the connections one process opens to PostgreSQL: at most
``db_pool_size + db_max_overflow`` (default 4 + 4 = 8), shared by everything in the process
that uses the store. Four workers and the API then hold at most 40 of PostgreSQL's default 100.

(pydantic-settings is not installed in this project's environment, so this is a plain pydantic
model with a :meth:`Settings.from_env` constructor; it reads the same variables
``BaseSettings(env_prefix="LRTUNE_")`` would.)

Example:
    >>> Settings.from_env({}).database_url
    'sqlite:///lrtune.db'
    >>> Settings.from_env({"LRTUNE_DB_POOL_SIZE": "2"}).db_pool_size
    2
    >>> Settings.from_env({"LRTUNE_DB_POOL_SIZE": "0"})
    Traceback (most recent call last):
    ...
    lrtune.exceptions.InvalidInputError: invalid settings: LRTUNE_DB_POOL_SIZE='0': Input \
should be greater than or equal to 1
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lrtune.exceptions import InvalidInputError, describe_validation_error

ENV_PREFIX = "LRTUNE_"
DEFAULT_DATABASE_URL = "sqlite:///lrtune.db"


class Settings(BaseModel):
    """Where the job store lives and how many connections a process may hold to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL of the job store (and the jobs' Optuna studies)",
    )
    db_pool_size: int = Field(4, ge=1, description="connections kept open per process")
    db_max_overflow: int = Field(4, ge=0, description="extra connections under load")
    db_pool_timeout_s: float = Field(
        30.0, gt=0, description="seconds to wait for a free connection before giving up"
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``environ`` (default ``os.environ``): ``LRTUNE_<FIELD>`` per field.

        Raises:
            InvalidInputError: a variable holds a value its field refuses; the message names
                the variable.
        """
        env = os.environ if environ is None else environ
        values = {
            field: env[_env_name(field)] for field in cls.model_fields if _env_name(field) in env
        }
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            message = describe_validation_error(exc)
            for field in cls.model_fields:
                message = message.replace(f"{field}=", f"{_env_name(field)}=")
            raise InvalidInputError(f"invalid settings: {message}") from None


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()
