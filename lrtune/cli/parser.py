"""The ``lrtune`` command line: the parser, its commands and their options.

Each command's parser sets ``run``, the function that runs it (:mod:`lrtune.cli.local`,
:mod:`lrtune.cli.jobs`, :mod:`lrtune.cli.service`). A usage error is one ``lrtune: error:``
line and exit status 2.

Example:
    >>> args = build_parser().parse_args(["status", "--limit", "5", "--database", "sqlite://"])
    >>> args.run.__name__, args.limit, args.database
    ('status', 5, 'sqlite://')
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from lrtune.cli import jobs, local, service
from lrtune.cli.errors import fail
from lrtune.optimizer_signatures import OPTIMIZERS
from lrtune.registry import dataset_names, model_names
from lrtune.schedules import MAX_RUN_EPOCHS, MAX_RUN_STEPS_PER_EPOCH

__all__ = ["DESCRIPTION", "build_parser"]

DESCRIPTION = (
    "Find the learning rate and LR schedule of a PyTorch training job: run a range test "
    "(find), search schedules (tune), or queue jobs for workers and follow them (submit, "
    "status, recommend), alone or through the HTTP service (serve). Answers go to stdout, "
    "progress to stderr; 'lrtune COMMAND --help' describes each command."
)
"""What ``lrtune --help`` says lrtune is."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``lrtune: error:`` line and a pointer to --help."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The ``lrtune`` command's parser; each command's ``run`` is the function that runs it."""
    parser = _Parser(prog="lrtune", description=DESCRIPTION)
    _threads_option(parser, default=None)
    sub = parser.add_subparsers(required=True, metavar="command", parser_class=_Parser)

    find = sub.add_parser("find", help="run the LR range test and suggest an LR")
    find.add_argument("--job", type=Path, help="read model/dataset/optimizer from a job file")
    find.add_argument("--model", help=f"registry model ({', '.join(model_names())})")
    find.add_argument("--dataset", help=f"registry dataset ({', '.join(dataset_names())})")
    find.add_argument(
        "--model-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model parameter, e.g. hidden=[256,128] (repeatable)",
    )
    find.add_argument(
        "--dataset-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset parameter, e.g. val_fraction=0.25 (repeatable)",
    )
    find.add_argument(
        "--optimizer", type=str.lower, choices=OPTIMIZERS, help="a torch.optim optimizer's name"
    )
    find.add_argument("--momentum", type=float)
    find.add_argument("--weight-decay", type=float)
    find.add_argument("--batch-size", type=int)
    find.add_argument("--start-lr", type=float)
    find.add_argument("--end-lr", type=float)
    find.add_argument("--num-iter", type=int)
    find.add_argument("--seeds", type=int, help="independent sweeps (default 4)")
    find.add_argument("--seed", type=int)
    find.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    find.add_argument("--plot", type=Path, metavar="PNG", help="write the loss-vs-LR curve")
    _common(find)
    find.set_defaults(run=local.find)

    tune = sub.add_parser("tune", help="search LR schedules for a job file")
    tune.add_argument("job", type=Path, help="job spec, YAML or JSON")
    tune.add_argument("--storage", help="Optuna storage URL, e.g. sqlite:///lrtune.db")
    tune.add_argument("--artifacts", type=Path, help="trial checkpoints (resume after a crash)")
    tune.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help="write loss_vs_lr.png, schedule.png and history.png here",
    )
    _common(tune)
    tune.set_defaults(run=local.tune)

    listing = sub.add_parser(
        "list", help="list the models and datasets a job may name, here or at an API's --url"
    )
    listing.add_argument("--json", action="store_true")
    _api_options(listing, instead_of="this installation's registry")
    _threads_option(listing, default=argparse.SUPPRESS)  # accepted everywhere; nothing trains
    listing.set_defaults(run=local.list_registry)

    db = sub.add_parser("db", help="manage the job store's database")
    db_sub = db.add_subparsers(required=True, metavar="action", parser_class=_Parser)
    db_upgrade = db_sub.add_parser("upgrade", help="apply the job store's schema migrations")
    _database_option(db_upgrade)
    db_upgrade.set_defaults(run=jobs.db_upgrade)
    db_prune = db_sub.add_parser(
        "prune", help="delete finished jobs older than an age, with their studies and checkpoints"
    )
    db_prune.add_argument(
        "--older-than",
        required=True,
        metavar="AGE",
        help="finished longer ago than this: a number and a unit, e.g. 30d, 12h, 90m, 2w",
    )
    db_prune.add_argument(
        "--status",
        action="append",
        choices=["succeeded", "failed", "cancelled"],
        help="only jobs that ended so (repeatable; default: every finished job)",
    )
    _database_option(db_prune)
    db_prune.set_defaults(run=jobs.db_prune)

    submit = sub.add_parser("submit", help="queue a job file in the job store; print its id")
    submit.add_argument("job", type=Path, help="job spec, YAML or JSON")
    submit.add_argument("--name", help="the job's name (default: the spec's name)")
    _job_service_options(submit)
    submit.add_argument("--json", action="store_true", help="print the job record as JSON")
    submit.add_argument(
        "--no-reuse",
        dest="reuse",
        action="store_false",
        help="queue a new job even if an earlier succeeded job has the same fingerprint and "
        "search configuration (default: answer from that job at once)",
    )
    submit.add_argument(
        "--wait",
        action="store_true",
        help="show a progress bar until the job has finished, then print its recommendation "
        "as lrtune recommend does (exit 1 if the job failed or was cancelled)",
    )
    submit.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="with --wait: stop waiting after S seconds, exit 1 (the job goes on)",
    )
    submit.set_defaults(run=jobs.submit)

    status = sub.add_parser("status", help="show one job, or the most recent jobs")
    status.add_argument(
        "job_id", nargs="?", help="a job id, or its first characters (default: list recent jobs)"
    )
    status.add_argument("--limit", type=int, default=20, help="jobs listed (default 20)")
    _job_service_options(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=jobs.status)

    recommend = sub.add_parser(
        "recommend",
        help="print the recommendation a job wrote, or the stored one for a model and dataset",
    )
    recommend.add_argument(
        "job_id", nargs="?", help="a job id, or its first characters (see lrtune status)"
    )
    recommend.add_argument("--model", help="instead of a job id: the model's registry name")
    recommend.add_argument("--dataset", help="with --model: the dataset's registry name")
    recommend.add_argument(
        "--optimizer", type=str.lower, choices=OPTIMIZERS, help="with --model (default sgd)"
    )
    recommend.add_argument("--batch-size", type=int, help="with --model (default 64)")
    recommend.add_argument(
        "--epochs",
        type=_count_option(MAX_RUN_EPOCHS),
        metavar="E",
        help="write the snippet for your run of E epochs (it says what it was tuned for)",
    )
    recommend.add_argument(
        "--steps-per-epoch",
        type=_count_option(MAX_RUN_STEPS_PER_EPOCH),
        metavar="S",
        help="write the snippet for S steps per epoch (default: len(train_loader) in it)",
    )
    _job_service_options(recommend)
    recommend.add_argument("--json", action="store_true", help="machine-readable output")
    recommend.set_defaults(run=jobs.recommend)

    cancel = sub.add_parser("cancel", help="cancel a job that has not finished")
    cancel.add_argument("job_id", help="a job id, or its first characters (see lrtune status)")
    _job_service_options(cancel)
    cancel.add_argument("--json", action="store_true", help="print the job record as JSON")
    cancel.set_defaults(run=jobs.cancel)

    worker = sub.add_parser("worker", help="take jobs from the job store and run them")
    _database_option(worker, trains=True)
    worker.add_argument("--device", default="auto", help="auto, cpu or cuda:N (default auto)")
    worker.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="MODULE:NAME",
        help="also run the jobs of your own training code: an lrtune.Task (or a factory of "
        "one) at this import path, e.g. mypkg.train:task; repeatable. Tasks installed in the "
        "lrtune.tasks entry-point group are loaded too",
    )
    worker.add_argument(
        "--max-jobs", type=int, metavar="N", help="work on at most N jobs, then exit"
    )
    worker.add_argument(
        "--once", action="store_true", help="exit as soon as no job has work to take"
    )
    worker.add_argument(
        "--lease-s",
        type=float,
        default=None,
        metavar="S",
        help="seconds a job's exclusive phase is held without renewal (default 60)",
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="units (trials, confirmation runs) at once on the device, in N child processes "
        "(default 1: in this process)",
    )
    worker.add_argument(
        "--population",
        type=int,
        default=1,
        metavar="K",
        help="train up to K search trials of a job at once as one population (stacked "
        "models, one forward and backward for all; fewer when the device's memory holds "
        "fewer; one at a time for a task that cannot be stacked; default 1)",
    )
    worker.add_argument(
        "--artifact-dir",
        type=Path,
        help="where trials checkpoint each epoch, so an interrupted one resumes (default: "
        "$LRTUNE_ARTIFACT_DIR, else ./lrtune-artifacts; shared by the workers that may resume "
        "it and the store that deletes a job)",
    )
    worker.add_argument(
        "--wait-for-db",
        type=float,
        default=120.0,
        metavar="S",
        help="at start, wait up to S seconds for an unavailable database, retrying with "
        "backoff (default 120; 0: fail at once)",
    )
    worker.set_defaults(run=service.worker)

    agent = sub.add_parser(
        "agent",
        help="serve a service's jobs of your own task from this machine, over HTTP",
        description="Take the jobs of your task from an lrtune service by its URL (no database "
        "access needed): range tests, search trials and confirmation runs, trained here.",
    )
    agent.add_argument(
        "--url", help="the service (default: $LRTUNE_URL, else http://127.0.0.1:8000)"
    )
    agent.add_argument("--token", help="the service's API token (default: $LRTUNE_API_TOKEN)")
    agent.add_argument(
        "--task",
        action="append",
        required=True,
        metavar="MODULE:NAME",
        help="your lrtune.Task (or a factory of one) at this import path; repeatable",
    )
    agent.add_argument("--device", default="auto", help="auto, cpu or cuda:N (default auto)")
    agent.add_argument("--job", metavar="JOB_ID", help="work on this job only")
    agent.add_argument(
        "--max-units", type=int, metavar="N", help="stop after N units (a range test counts)"
    )
    agent.add_argument(
        "--once", action="store_true", help="stop as soon as there is no work for this agent"
    )
    agent.set_defaults(run=service.agent)

    workers = sub.add_parser("workers", help="list the live workers and what each holds")
    _job_service_options(workers)
    workers.add_argument("--json", action="store_true", help="machine-readable output")
    workers.add_argument(
        "--all", action="store_true", help="stopped and silent workers too, not only live ones"
    )
    workers.set_defaults(run=jobs.workers)

    _serve_parser(sub)
    return parser


def _serve_parser(sub: Any) -> None:
    serve = sub.add_parser(
        "serve", help="serve the HTTP API and dashboard, with an embedded worker"
    )
    serve.add_argument("--host", help="address to bind (default: $LRTUNE_HOST, else 127.0.0.1)")
    serve.add_argument(
        "--port", type=int, help="port (default: $LRTUNE_PORT, else 8000; 0: any free port)"
    )
    _database_option(serve, trains=True)
    serve.add_argument(
        "--no-worker", action="store_true", help="no embedded worker (the fleet layout)"
    )
    serve.add_argument(
        "--workers", type=int, default=1, metavar="N", help="embedded workers (default 1)"
    )
    serve.add_argument("--device", default="auto", help="the workers' device (default auto)")
    serve.add_argument(
        "--population",
        type=int,
        default=1,
        metavar="K",
        help="the embedded workers train up to K search trials at once (lrtune worker "
        "--population; default 1)",
    )
    serve.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="MODULE:NAME",
        help="the embedded workers also run the jobs of this task of yours (lrtune worker "
        "--task); repeatable",
    )
    serve.add_argument(
        "--submit",
        type=Path,
        metavar="JOB",
        help="once serving, submit this job file over HTTP, follow it, print its recommendation",
    )
    serve.add_argument(
        "--exit-when-done",
        action="store_true",
        help="with --submit: stop once the job has finished (exit 1 if it did not succeed)",
    )
    serve.add_argument("--access-log", action="store_true", help="log every HTTP request")
    serve.set_defaults(run=service.serve)


def _database_option(parser: argparse.ArgumentParser, *, trains: bool = False) -> None:
    parser.add_argument(
        "--database",
        metavar="URL",
        help="job store URL (default: $LRTUNE_DATABASE_URL, else sqlite:///lrtune.db)",
    )
    if trains:  # the worker: the cores shared among its units unless told
        worker_threads = (
            "torch CPU threads per unit (default: $LRTUNE_TORCH_THREADS, else the cores / "
            "--concurrency; several workers on one machine: set it)"
        )
        _threads_option(parser, argparse.SUPPRESS, worker_threads)
    else:
        _threads_option(parser, default=argparse.SUPPRESS)  # accepted everywhere; nothing trains


def _job_service_options(parser: argparse.ArgumentParser) -> None:
    """``--database``, or ``--url`` and ``--token``: the job store, or the HTTP API before it."""
    _database_option(parser)
    _api_options(parser, instead_of="the job store", unless=", unless --database is given")


def _api_options(parser: argparse.ArgumentParser, *, instead_of: str, unless: str = "") -> None:
    """``--url`` and ``--token``: lrtune's HTTP API, asked instead of ``instead_of``."""
    parser.add_argument(
        "--url",
        help="go through lrtune's HTTP API at this URL, e.g. http://127.0.0.1:8000, instead "
        f"of {instead_of} (default: $LRTUNE_URL{unless})",
    )
    parser.add_argument(
        "--token",
        help="the API's token (default: $LRTUNE_API_TOKEN, better: a command line is visible "
        "to the machine's other users)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    # SUPPRESS: without the option here, the value given before the command stands.
    _threads_option(parser, default=argparse.SUPPRESS)


def _threads_option(
    parser: argparse.ArgumentParser,
    default: Any,
    help_text: str = "torch CPU threads (default: $LRTUNE_TORCH_THREADS, else torch's)",
) -> None:
    parser.add_argument("--threads", type=int, default=default, metavar="N", help=help_text)


def _count_option(cap: int) -> Callable[[str], int]:
    """An argparse type: a whole number from 1 to ``cap``."""

    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not 1 <= value <= cap:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from 1 to {cap}, got {text!r}"
            )
        return value

    return count
