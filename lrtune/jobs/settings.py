"""The job store's settings: the one place that reads the environment for it.

Each field is read from ``LRTUNE_<FIELD>`` (``LRTUNE_DATABASE_URL``, ``LRTUNE_DB_POOL_SIZE``,
...) and falls back to its default. The default database is ``sqlite:///lrtune.db``: a SQLite
file named ``lrtune.db`` in the current directory, the zero-setup single-machine store. A fleet
of workers on several machines shares a PostgreSQL database instead, e.g.
``LRTUNE_DATABASE_URL=postgresql+psycopg://lrtune:secret@db-host/lrtune``.

Pool sizes bound the connections one process opens to PostgreSQL: at most
``db_pool_size + db_max_overflow`` (default 4 + 4 = 8), shared by everything in the process
that uses the database: its job stores and every Optuna study it opens (one engine per
process and URL). A worker on PostgreSQL holds one more, outside the pool, on which it listens
for job changes while idle (:mod:`lrtune.jobs.changes`). Four workers and the API then hold at
most 44 of PostgreSQL's default 100.

A worker that meets an unavailable database retries after ``retry_initial_s``, doubling the
wait up to ``retry_max_s``, each wait drawn at random between its half and its whole (so a
fleet that lost its database does not come back in lockstep). Trials send Optuna heartbeats
every ``trial_heartbeat_s``; a trial silent for ``trial_grace_s`` is failed and retried.

Checkpoints: every worker writes a job's trial checkpoints under ``artifact_dir`` (default
``lrtune-artifacts``, relative to the current directory, like the default database), one
folder per job named after its study (``<artifact_dir>/lrtune-job-<id>/``). The store removes
that folder when the job is deleted, and the worker that writes a job's success removes it
then, so every process using one store must agree on it: set ``LRTUNE_ARTIFACT_DIR`` to an
absolute path, and, for workers on several machines, to a shared filesystem (NFS, a cluster
filesystem) mounted at the same path everywhere, since any worker may resume an interrupted
trial from its checkpoint.

Workers' heartbeats: a worker writes its row of ``lrtune_workers`` every
``worker_heartbeat_s`` seconds (production default 10 s; tests shorten it), and counts as live
while its last heartbeat is younger than ``LIVE_HEARTBEATS`` (3) of its own intervals. Its
trials beat Optuna's heartbeat every ``trial_heartbeat_s`` seconds (default 20 s) and go stale,
to be retried by another worker, after three missed beats.

A unit (a search trial or confirmation run) looks every ``unit_check_s`` seconds (default 5:
:data:`lrtune.spec.UNIT_CHECK_S`, which :func:`lrtune.training.train` defaults to too),
also within an epoch, whether its worker was told to stop (SIGTERM) or its job ended: an epoch
of an hour does not hold up a stop or a cancel.

Admission (:mod:`lrtune.jobs.admission`): a submit that finds ``max_queued_jobs`` jobs queued
(default 1000) is refused, to be retried later. Job size: a submit whose estimated peak memory
is above ``max_job_gb`` (default 8 GB) or whose training compute is above ``max_job_tflops``
(default 10,000 TFLOPs) is refused (:mod:`lrtune.footprint`); a worker checks the estimate
again against its device's free memory (``worker_free_memory_gb`` stands in for the
measurement) before a unit of the job starts.

Example:
    >>> import os
    >>> StoreSettings().database_url  # nothing set: the embedded default
    'sqlite:///lrtune.db'
    >>> os.environ["LRTUNE_DB_POOL_SIZE"] = "2"
    >>> StoreSettings.from_env().db_pool_size
    2
    >>> os.environ["LRTUNE_DB_POOL_SIZE"] = "0"
    >>> StoreSettings.from_env()
    Traceback (most recent call last):
    ...
    lrtune.exceptions.InvalidInputError: invalid settings: LRTUNE_DB_POOL_SIZE='0': Input \
should be greater than or equal to 1
    >>> del os.environ["LRTUNE_DB_POOL_SIZE"]
    >>> StoreSettings(artifact_dir="/shared/lrtune").checkpoint_dir("lrtune-job-1").as_posix()
    '/shared/lrtune/lrtune-job-1'
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from lrtune._rdb import DEFAULT_DATABASE_URL as DEFAULT_DATABASE_URL
from lrtune._rdb import ENV_PREFIX as ENV_PREFIX
from lrtune._rdb import EngineSettings
from lrtune.spec import UNIT_CHECK_S

DEFAULT_ARTIFACT_DIR = "lrtune-artifacts"
LIVE_HEARTBEATS = 3
"""A worker is live while its last heartbeat is younger than this many of its intervals."""


class StoreSettings(EngineSettings):
    """Where the job store lives and how many connections a process may hold to it (the
    fields of :class:`~lrtune._rdb.EngineSettings`, which every engine reads), and how its
    workers behave."""

    max_attempts: int = Field(
        3,
        ge=1,
        description="claims of a job's exclusive phase before a job whose lease keeps "
        "expiring (its worker died) is failed instead of claimed again",
    )

    artifact_dir: Path = Field(
        Path(DEFAULT_ARTIFACT_DIR),
        description="where workers checkpoint trials, one folder per job; shared by every "
        "worker that may resume a trial and by the store that deletes the job",
    )
    worker_heartbeat_s: float = Field(
        10.0,
        gt=0,
        description="seconds between a worker's heartbeats in lrtune_workers (lrtune workers)",
    )
    retry_initial_s: float = Field(
        0.5, gt=0, description="first wait before retrying an unavailable database"
    )
    retry_max_s: float = Field(
        15.0, gt=0, description="longest wait between retries of an unavailable database"
    )
    trial_heartbeat_s: int = Field(
        20, ge=1, description="seconds between the heartbeats of a running trial (Optuna's)"
    )
    trial_grace_s: int = Field(
        60,
        ge=1,
        description="seconds without a heartbeat after which a running trial counts as dead: "
        "failed, and queued again to resume from its checkpoint",
    )
    unit_check_s: float = Field(
        UNIT_CHECK_S,
        gt=0,
        description="most seconds a worker's unit trains between looks at whether to stop (a "
        "signal, its job cancelled), also within an epoch; a unit stopped by a signal resumes "
        "from its last epoch's checkpoint",
    )

    max_queued_jobs: int = Field(
        1000,
        ge=1,
        description="queued jobs above which a submit is refused (HTTP 429): the queue's cap",
    )
    max_job_gb: float = Field(
        8.0,
        gt=0,
        description="a job whose estimated peak memory (lrtune.footprint: parameters, "
        "gradients, optimizer state and activations, times the range test's seeds) is above "
        "this many GB is refused at submit",
    )
    max_job_tflops: float = Field(
        10_000.0,
        gt=0,
        description="a job whose estimated training compute is above this many TFLOPs is "
        "refused at submit",
    )
    worker_free_memory_gb: float | None = Field(
        None,
        gt=0,
        description="the free memory a worker assumes on its device instead of measuring it "
        "(CUDA's free memory, else the host's available RAM): a job whose estimate is above it "
        "fails before its unit starts",
    )

    def checkpoint_dir(self, study_name: str) -> Path:
        """The folder of one job's checkpoints (its study's name: ``lrtune-job-<id>``)."""
        return self.artifact_dir / study_name
