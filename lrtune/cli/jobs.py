"""The commands on queued jobs: ``submit``, ``status``, ``recommend``, ``cancel`` and
``workers``, on the job store (``--database``) or through the HTTP API (``--url``, else
``$LRTUNE_URL``), printing the same either way; and the store's ``db upgrade`` and
``db prune``.

Only ``submit`` (and ``db upgrade``) create a job store that is not there. Nothing here
imports torch or Optuna.

Example:
    >>> parse_duration("12h"), parse_duration("1.5d")
    (datetime.timedelta(seconds=43200), datetime.timedelta(days=1, seconds=43200))
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

from lrtune.cli.errors import CliError, first_line
from lrtune.cli.render import (
    CodeFor,
    code_context,
    describe_job,
    describe_range_test,
    jobs_table,
    print_recommendation,
    workers_table,
)
from lrtune.exceptions import NotFoundError
from lrtune.spec import JobSpec

if TYPE_CHECKING:
    from lrtune.client import Client
    from lrtune.jobs import JobStore
    from lrtune.result import LRBounds, LRFinderResult

__all__ = [
    "DURATION_UNITS",
    "MAX_AGE_DAYS",
    "api_client",
    "cancel",
    "db_prune",
    "db_upgrade",
    "job_service",
    "open_store",
    "parse_duration",
    "recommend",
    "status",
    "submit",
    "workers",
]


def db_upgrade(args: argparse.Namespace) -> int:
    """``lrtune db upgrade``: apply the job store's migrations, creating it if need be."""
    from lrtune.jobs import StoreSettings, upgrade
    from lrtune.jobs.db import safe_url

    url = args.database or StoreSettings.from_env().database_url
    print(f"job store at {safe_url(url)} is at revision {upgrade(url)}")
    return 0


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_AGE_DAYS = 100 * 366
"""The oldest age ``db prune --older-than`` takes (a century); a larger one would overflow
the dates it is compared with."""


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (a number and a unit) as a timedelta, at most
    :data:`MAX_AGE_DAYS`.

    Example:
        >>> parse_duration("12h"), parse_duration("1.5d")
        (datetime.timedelta(seconds=43200), datetime.timedelta(days=1, seconds=43200))
        >>> parse_duration("99999999999w")
        Traceback (most recent call last):
        ...
        lrtune.cli.errors.CliError: --older-than '99999999999w' is more than 36600 days: name \
a shorter age
    """
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if unit not in DURATION_UNITS or not math.isfinite(value) or value < 0:
        raise CliError(
            f"--older-than {text!r} is not an age: use a number and a unit, e.g. 30d, 12h, "
            f"90m ({', '.join(DURATION_UNITS)})"
        )
    seconds = value * DURATION_UNITS[unit]
    if seconds > MAX_AGE_DAYS * DURATION_UNITS["d"]:
        raise CliError(
            f"--older-than {text!r} is more than {MAX_AGE_DAYS} days: name a shorter age"
        )
    return timedelta(seconds=seconds)


def db_prune(args: argparse.Namespace) -> int:
    """``lrtune db prune``: delete the jobs that finished longer ago than ``--older-than``."""
    from lrtune.jobs.store import FINISHED_STATUSES

    older_than = parse_duration(args.older_than)
    store = open_store(args.database, create=False)
    deleted = store.prune(older_than, args.status or FINISHED_STATUSES)
    statuses = "/".join(args.status) if args.status else "finished"
    print(f"deleted {len(deleted)} {statuses} jobs that ended more than {args.older_than} ago")
    return 0


def open_store(database: str | None, *, create: bool) -> JobStore:
    """The job store at ``database`` (else ``$LRTUNE_DATABASE_URL``, else the default).

    Only ``create`` (``submit``) may start a new one: a command that reads or cancels fails
    with one line naming the database it looked for. When neither the option nor the
    variable named it, a line on stderr says which database the default is.
    """
    from lrtune.jobs import JobStore, StoreSettings
    from lrtune.jobs.db import safe_url

    settings = StoreSettings.from_env()
    store = JobStore(database, settings=settings, create=create)
    if database is None and "database_url" not in settings.model_fields_set:
        print(
            f"lrtune: job store {safe_url(store.url)}, the default (--database URL or "
            "LRTUNE_DATABASE_URL names another)",
            file=sys.stderr,
        )
    return store


def _source(jobs: JobStore | Client) -> str:
    """Where ``jobs`` reads, for a message: the job store's URL or the API's."""
    from lrtune.client import Client
    from lrtune.jobs.db import safe_url

    if isinstance(jobs, Client):
        return f"the lrtune API at {jobs.url}"
    return f"the job store at {safe_url(jobs.url)}"


@contextlib.contextmanager
def job_service(args: argparse.Namespace, *, create: bool = False) -> Iterator[JobStore | Client]:
    """Where ``submit``, ``status``, ``recommend``, ``cancel`` and ``workers`` go.

    The HTTP API at ``--url`` (else ``$LRTUNE_URL``) with ``--token`` (else
    ``$LRTUNE_API_TOKEN``), through :class:`~lrtune.client.Client`; else the job store at
    ``--database`` (else ``$LRTUNE_DATABASE_URL``), which only ``create`` (``submit``) may
    start (:func:`open_store`). ``--database`` wins over ``$LRTUNE_URL``. Both answer the
    commands' calls with the same models, so every command prints the same for the same job
    either way.
    """
    api = api_client(args)
    if api is None:
        yield open_store(args.database, create=create)
        return
    with api:
        yield api


def api_client(args: argparse.Namespace) -> Client | None:
    """The HTTP API at ``--url`` (else ``$LRTUNE_URL``, unless ``--database`` is given) with
    ``--token`` (else ``$LRTUNE_API_TOKEN``); None when neither names a URL."""
    from lrtune.client import Client, ClientSettings

    database = getattr(args, "database", None)  # lrtune list has no store to read
    if args.url is not None and database is not None:
        raise CliError("give --url (the HTTP API) or --database (the job store), not both")
    remote = ClientSettings()
    url = args.url or (None if database is not None else remote.url)
    if url is None:
        if args.token is not None:
            raise CliError("--token is for the HTTP API: give --url or set LRTUNE_URL")
        return None
    token = args.token
    if token is None and remote.api_token is not None:
        token = remote.api_token.get_secret_value()
    return Client(url, token)


def submit(args: argparse.Namespace) -> int:
    """``lrtune submit``: queue a job file; with ``--wait``, follow it to its recommendation."""
    from lrtune.jobs import JobStatus
    from lrtune.jobs.waiting import wait_for

    if args.timeout is not None and not args.wait:
        raise CliError("--timeout is how long --wait waits: give --wait too")
    if args.timeout is not None and not args.timeout > 0:
        raise CliError(f"--timeout must be > 0 seconds, got {args.timeout}")
    spec = JobSpec.from_file(args.job)
    with job_service(args, create=True) as jobs:
        job = jobs.submit(spec, name=args.name, reuse=args.reuse)
        if job.reused_from is not None and not args.json:
            print(
                f"reused job {job.reused_from} (succeeded, same fingerprint and search "
                "configuration): lrtune recommend prints its answer; --no-reuse queues a new job",
                file=sys.stderr,
            )
        if not args.wait:
            print(job.model_dump_json() if args.json else job.id)
            return 0
        print(
            f"job {job.id} {job.status.value}; waiting for it (Ctrl-C stops waiting, not the job)",
            file=sys.stderr,
        )
        try:
            finished = wait_for(job.id, jobs.get, timeout_s=args.timeout)
        except TimeoutError as exc:
            print(f"lrtune: error: {exc} (it goes on: lrtune status {job.id})", file=sys.stderr)
            return 1
        if finished.status is not JobStatus.SUCCEEDED:
            reason = f": {first_line(finished.error)}" if finished.error else ""
            print(f"lrtune: error: job {job.id} {finished.status.value}{reason}", file=sys.stderr)
            return 1
        print_recommendation(jobs.recommendation(job.id), as_json=args.json)
    return 0


def recommend(args: argparse.Namespace) -> int:
    """``lrtune recommend``: a job's recommendation, or the stored one for a model and dataset."""
    query = {"model": args.model, "dataset": args.dataset}
    query |= {"optimizer": args.optimizer, "batch_size": args.batch_size}
    by_names = any(value is not None for value in query.values())
    if args.job_id is not None and by_names:
        raise CliError("give a job id or --model and --dataset, not both")
    if args.job_id is None and (args.model is None or args.dataset is None):
        raise CliError("give a job id, or --model and --dataset (see lrtune status for ids)")
    code_for = _code_for(args)
    with job_service(args) as jobs:
        if args.job_id is not None:
            stored = jobs.recommendation(args.job_id)
            print_recommendation(stored, as_json=args.json, code_for=code_for)
            return 0
        found = jobs.find_recommendation(**query)
    if args.json:
        print(found.model_dump_json(context=code_context(code_for)))
        return 0
    if found.match == "fingerprint":
        print(f"stored for exactly this query (fingerprint {found.stored.fingerprint[:12]})")
    else:
        print(
            f"nothing stored for exactly this query; the newest job for {args.model} on "
            f"{args.dataset} differs in: {', '.join(found.differs)}"
        )
    print_recommendation(found.stored, as_json=False, code_for=code_for)
    return 0


def _code_for(args: argparse.Namespace) -> CodeFor | None:
    """``recommend --epochs/--steps-per-epoch``, or None for the run it was tuned for."""
    if args.epochs is None and args.steps_per_epoch is None:
        return None
    return {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch}


def cancel(args: argparse.Namespace) -> int:
    """``lrtune cancel``: its running units stop after their epoch; a finished job is a
    one-line error."""
    with job_service(args) as jobs:
        job = jobs.cancel(args.job_id)
    print(job.model_dump_json() if args.json else f"job {job.id} cancelled")
    return 0


def status(args: argparse.Namespace) -> int:
    """``lrtune status``: one job with its range test, or the most recent jobs."""
    with job_service(args) as jobs:
        if args.job_id is None:
            page = jobs.list_jobs(limit=args.limit)
            if args.json:
                print(page.model_dump_json())
            else:
                print(jobs_table(page.data) if page.data else f"no jobs in {_source(jobs)}")
            if page.unreadable:  # stored before lrtune refused what they hold
                print(
                    f"lrtune: {len(page.unreadable)} job(s) cannot be read back: "
                    f"{', '.join(page.unreadable)} (lrtune status <id> says why)",
                    file=sys.stderr,
                )
            return 0
        job = jobs.get(args.job_id)
        if args.json:
            print(job.model_dump_json())
            return 0
        print(describe_job(job))
        range_test = _completed_range_test(jobs, job.id)
    if range_test is not None:
        print(describe_range_test(*range_test))
    return 0


def _completed_range_test(
    jobs: JobStore | Client, job_id: str
) -> tuple[LRFinderResult, LRBounds, str] | None:
    """The job's range test, its LR bounds and the rule that chose its suggestion; None while
    the range test has not completed. The API serves it as the dashboard's finder view."""
    from lrtune.client import Client

    if isinstance(jobs, Client):
        view = jobs.finder(job_id)
        if view.range_test is None or view.bounds is None:
            return None
        return view.range_test, view.bounds, view.chosen_rule
    try:
        stored = jobs.range_test(job_id)
    except NotFoundError:
        return None
    return stored.range_test, stored.bounds, stored.provenance.rule


def workers(args: argparse.Namespace) -> int:
    """``lrtune workers``: the live workers (``--all``: every one) and what each holds."""
    with job_service(args) as jobs:
        found = jobs.list_workers(live_only=not args.all)
    if args.json:
        print(found.model_dump_json())
    elif not found.data:
        print(f"no {'live ' if not args.all else ''}workers in {_source(jobs)}")
    else:
        print(workers_table(found.data))
    return 0
