"""The ``lrtune`` command: ``find`` (range test), ``tune`` (schedule search), ``list``, and the
job store's ``db upgrade``, ``db prune``, ``submit``, ``status``, ``recommend``, ``cancel``,
``worker`` and ``workers``; ``serve``, the HTTP service.

``submit``, ``status``, ``recommend`` and ``cancel`` work on the job store (``--database``), or
through the HTTP API with ``--url`` (or ``LRTUNE_URL``), printing the same either way. Only
``submit``, ``worker``, ``serve`` and ``db upgrade`` create a job store that is not there.

Progress goes to stderr, answers to stdout (``--json`` for machines). Bad input ends with a
one-line ``lrtune: error: ...`` and exit status 2, never a traceback.

Example:
    $ lrtune find --model mlp --dataset digits --seeds 4 --plot curve.png
    $ lrtune tune examples/digits_mlp.yaml --storage sqlite:///lrtune.db --plots out/
    $ lrtune submit examples/digits_mlp.yaml --url http://127.0.0.1:8765 --wait
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import yaml
from pydantic import ValidationError

from lrtune.exceptions import (
    InvalidInputError,
    LRTuneError,
    NotFoundError,
    describe_validation_error,
)
from lrtune.optimizer_signatures import OPTIMIZERS
from lrtune.registry import dataset_names, model_names
from lrtune.schedules import MAX_RUN_EPOCHS, MAX_RUN_STEPS_PER_EPOCH
from lrtune.spec import FIELD_KEYWORDS, JobSpec

if TYPE_CHECKING:
    from lrtune.client import Client
    from lrtune.jobs import JobStore, StoredRecommendation
    from lrtune.recommendation import Recommendation
    from lrtune.result import LRBounds, LRFinderResult

# This module imports torch, Optuna and scikit-learn only inside the commands that train, so
# that ``lrtune list`` and ``--help`` answer at once.


DESCRIPTION = (
    "Find the learning rate and LR schedule of a PyTorch training job: run a range test "
    "(find), search schedules (tune), or queue jobs for workers and follow them (submit, "
    "status, recommend), alone or through the HTTP service (serve). Answers go to stdout, "
    "progress to stderr; 'lrtune COMMAND --help' describes each command."
)
"""What ``lrtune --help`` says lrtune is."""


class CliError(InvalidInputError):
    """A problem with the user's command line, reported as one line."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``lrtune`` command; return its exit status.

    The library's errors (:class:`~lrtune.exceptions.LRTuneError`), invalid job specs and the
    operating system's refusals (a missing, unreadable or misplaced file) end as one
    ``lrtune: error:`` line and exit status 2. Anything else is a bug in lrtune and keeps its
    traceback. A reader that closes stdout early (``lrtune status | head -1``) ends the
    command quietly, with the status a shell reports for a Unix tool stopped so (141).
    """
    try:
        try:
            return _main(argv)
        finally:  # --help too: a closed pipe shows here, not in the interpreter's last flush
            sys.stdout.flush()
    except BrokenPipeError:
        return _reader_left()


def _reader_left() -> int:
    """stdout's reader has gone: send what is still to be written nowhere (the interpreter
    flushes stdout at exit) and return 128 + SIGPIPE, as a shell reports a Unix tool that
    SIGPIPE stopped."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args) or 0)
    except ValidationError as exc:
        _fail(_describe_invalid_job(exc))
    except (LRTuneError, yaml.YAMLError) as exc:
        _fail(_first_line(exc))
    except BrokenPipeError:
        raise  # stdout's reader has gone: main() ends quietly
    except OSError as exc:
        _fail(describe_os_error(exc))
    except KeyboardInterrupt:
        print("lrtune: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> NoReturn:
    print(f"lrtune: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_os_error(exc: OSError) -> str:
    """``path: reason`` on one line, e.g. ``job.yaml: Permission denied``."""
    reason = exc.strerror or _first_line(exc)
    if exc.filename is None:
        return reason
    return f"{exc.filename}: {reason}"


def _describe_invalid_job(exc: ValidationError) -> str:
    return "invalid job: " + describe_validation_error(exc)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one ``lrtune: error:`` line and a pointer to --help."""

    def error(self, message: str) -> NoReturn:
        _fail(f"{message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
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
    find.set_defaults(run=_find)

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
    tune.set_defaults(run=_tune)

    listing = sub.add_parser(
        "list", help="list the models and datasets a job may name, here or at an API's --url"
    )
    listing.add_argument("--json", action="store_true")
    _api_options(listing, instead_of="this installation's registry")
    _threads_option(listing, default=argparse.SUPPRESS)  # accepted everywhere; nothing trains
    listing.set_defaults(run=_list)

    db = sub.add_parser("db", help="manage the job store's database")
    db_sub = db.add_subparsers(required=True, metavar="action", parser_class=_Parser)
    db_upgrade = db_sub.add_parser("upgrade", help="apply the job store's schema migrations")
    _database_option(db_upgrade)
    db_upgrade.set_defaults(run=_db_upgrade)
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
    db_prune.set_defaults(run=_db_prune)

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
    submit.set_defaults(run=_submit)

    status = sub.add_parser("status", help="show one job, or the most recent jobs")
    status.add_argument(
        "job_id", nargs="?", help="a job id, or its first characters (default: list recent jobs)"
    )
    status.add_argument("--limit", type=int, default=20, help="jobs listed (default 20)")
    _job_service_options(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=_status)

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
    recommend.set_defaults(run=_recommend)

    cancel = sub.add_parser("cancel", help="cancel a job that has not finished")
    cancel.add_argument("job_id", help="a job id, or its first characters (see lrtune status)")
    _job_service_options(cancel)
    cancel.add_argument("--json", action="store_true", help="print the job record as JSON")
    cancel.set_defaults(run=_cancel)

    worker = sub.add_parser("worker", help="take jobs from the job store and run them")
    _database_option(worker, trains=True)
    worker.add_argument("--device", default="auto", help="auto, cpu or cuda:N (default auto)")
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
    worker.set_defaults(run=_worker)

    workers = sub.add_parser("workers", help="list the live workers and what each holds")
    _job_service_options(workers)
    workers.add_argument("--json", action="store_true", help="machine-readable output")
    workers.add_argument(
        "--all", action="store_true", help="stopped and silent workers too, not only live ones"
    )
    workers.set_defaults(run=_workers)

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
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    from lrtune.api.config import ApiSettings
    from lrtune.api.serve import ServeOptions, serve

    if args.workers < 1:
        raise CliError(f"--workers must be >= 1, got {args.workers} (or pass --no-worker)")
    if args.exit_when_done and args.submit is None:
        raise CliError("--exit-when-done needs --submit JOB")
    if args.submit is not None:
        _load_job(args.submit)  # a bad job file fails now, before anything starts
    if args.port is not None and not 0 <= args.port <= 65535:
        raise CliError(f"--port must be 0 (any free port) to 65535, got {args.port}")
    overrides = {"database_url": args.database, "host": args.host}
    settings = ApiSettings.from_env()
    try:
        settings = ApiSettings.model_validate(
            {**settings.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
    except ValidationError as exc:
        raise CliError(describe_validation_error(exc)) from None
    options = ServeOptions(
        settings=settings,
        port=args.port,
        workers=0 if args.no_worker else args.workers,
        threads=getattr(args, "threads", None),
        device=args.device,
        submit=args.submit,
        exit_when_done=args.exit_when_done,
        access_log=args.access_log,
    )
    return serve(options)


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


def _start_training(args: argparse.Namespace) -> None:
    """Pin torch's threads; called by the commands that train, after their input is checked."""
    from lrtune.device import set_torch_threads

    set_torch_threads(args.threads)  # None: $LRTUNE_TORCH_THREADS, else torch's default


def _find(args: argparse.Namespace) -> int:
    spec = _find_spec(args)
    if args.plot:
        _prepare_output_file("--plot", args.plot)
    _start_training(args)
    from lrtune.result import RangeTestReport
    from lrtune.training import TrainingSetup
    from lrtune.tuner import range_test

    setup = TrainingSetup.from_spec(spec)
    result = range_test(setup, progress=not args.quiet)
    if args.json:
        report = RangeTestReport.model_validate({**result.model_dump(), "job": spec})
        print(report.model_dump_json())
    else:
        print(
            f"{spec.model.name} on {spec.dataset.name}, {spec.optimizer.name}, "
            f"{spec.range_test.seeds} seed(s), {result.config.engine} on {setup.device}"
        )
        print(result.summary())
    sys.stdout.flush()  # the answer is out even if writing the plot fails
    if args.plot:
        _save_figure(result.plot(), args.plot)
    return 0


def _find_spec(args: argparse.Namespace) -> JobSpec:
    data: dict[str, Any] = _read_job(args.job) if args.job else {}
    if args.model:
        data["model"] = {"name": args.model, "params": {}}
    if args.dataset:
        data["dataset"] = {"name": args.dataset, "params": {}}
    if "model" not in data or "dataset" not in data:
        raise CliError("name a --model and a --dataset (or a --job file); see 'lrtune list'")
    data["model"].setdefault("params", {}).update(_key_values(args.model_param))
    data["dataset"].setdefault("params", {}).update(_key_values(args.dataset_param))
    optimizer = data.setdefault("optimizer", {})
    _set(optimizer, "name", args.optimizer)
    # sgd, adam and adamw have fields for these; every other optimizer takes them in kwargs
    name = str(optimizer.get("name", "sgd")).lower()
    keywords = optimizer if name in FIELD_KEYWORDS else optimizer.setdefault("kwargs", {})
    _set(keywords, "momentum", args.momentum)
    _set(keywords, "weight_decay", args.weight_decay)
    _set(data, "batch_size", args.batch_size)
    _set(data, "seed", args.seed)
    _set(data, "device", args.device)
    range_test = data.setdefault("range_test", {})
    for key in ("start_lr", "end_lr", "num_iter", "seeds"):
        _set(range_test, key, getattr(args, key))
    return JobSpec.model_validate(data)


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


def _key_values(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key] = yaml.safe_load(value)  # 3 -> int, 0.5 -> float, [64,64] -> list, true
        except RecursionError:
            raise CliError(f"{key}: value nested too deeply") from None
    return out


def _load_job(path: Path) -> JobSpec:
    if not path.exists():
        raise CliError(f"job file not found: {path}")
    return JobSpec.from_file(path)


def _read_job(path: Path) -> dict[str, Any]:
    return _load_job(path).model_dump(mode="json", exclude_unset=True)


def _tune(args: argparse.Namespace) -> int:
    spec = _load_job(args.job)
    # Every output place is checked before the work starts: a bad --plots must not cost a search.
    for option, directory in (("--artifacts", args.artifacts), ("--plots", args.plots)):
        if directory is not None:
            _prepare_output_dir(option, directory)
    storage = _open_storage(args.storage)
    _start_training(args)
    import optuna

    from lrtune.tuner import tune

    # Optuna logs each failed trial with a traceback (also for Ctrl-C); the report lists them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rec = tune(spec, storage=storage, artifact_dir=args.artifacts, progress=not args.quiet)
    print(rec.model_dump_json() if args.json else _report(rec))
    sys.stdout.flush()  # the report is out even if writing the plots fails
    if args.plots:
        _write_plots(rec, args.plots)
    return 0


def _open_storage(url: str | None) -> Any:
    """The study's storage, opened before the range test so that a bad URL fails first."""
    if url is None:
        return None
    from lrtune.storage import open_storage

    return open_storage(url)


def _prepare_output_dir(option: str, directory: Path) -> None:
    """Create ``directory`` (and its parents) now, or fail with one line naming ``option``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{option} {directory}: cannot create directory: {_reason(exc)}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CliError(f"{option} {directory}: directory is not writable")


def _prepare_output_file(option: str, path: Path) -> None:
    """Create ``path``'s directory now and check that a file can be written at ``path``."""
    if path.is_dir():
        raise CliError(f"{option} {path}: is a directory, expected a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{option} {path}: cannot create its directory: {_reason(exc)}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise CliError(f"{option} {path}: directory {path.parent} is not writable")


def _reason(exc: OSError) -> str:
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return "a regular file is in the way"
    return exc.strerror or _first_line(exc)


CodeFor = dict[str, int | None]
"""The run a snippet is written for: ``{"epochs": E, "steps_per_epoch": S}``, either None."""


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


def _report(rec: Recommendation, code_for: CodeFor | None = None) -> str:
    """The report ``tune`` and ``recommend`` print; ``code_for`` writes the snippet for the
    user's run (:meth:`Recommendation.to_code`'s ``epochs`` and ``steps_per_epoch``)."""
    lines = [f"job {rec.study_name} ({rec.fingerprint[:12]})"]
    if rec.suggested_lr is not None:
        agreement = rec.range_test.consensus.agreement
        spread = (
            "one seed"
            if rec.spread_decades is None
            else f"seeds within {rec.spread_decades:.2f} decades, agreement {agreement}"
        )
        lines.append(f"range test: suggested lr {rec.suggested_lr:.4g} ({spread})")
    lines.append(f"lr bounds: {rec.bounds.low:.4g} .. {rec.bounds.high:.4g}: {rec.bounds.reason}")
    lines.append(f"search trials: {_counts(rec.n_trials)}")
    if any(rec.n_confirmation.values()):
        lines.append(f"confirmation runs: {_counts(rec.n_confirmation)}")
    skipped = [e for e in rec.history if (e.stop_reason or "").startswith("skipped:")]
    if skipped:
        lines.append(f"  {len(skipped)} queued trials {skipped[0].stop_reason}")
    for entry in rec.history:
        if entry.state == "FAIL":
            what = "trial" if entry.kind == "search" else "confirmation run"
            lines.append(f"  {what} {entry.number} failed: {entry.stop_reason}")
    if rec.best is not None:
        how = (
            f"mean over confirmation seeds {', '.join(map(str, rec.confirm_seeds))}"
            if rec.confirmed
            else f"search seed {rec.search_seed} only, unconfirmed"
        )
        lines += [
            "",
            f"recommended{' (PROVISIONAL)' if rec.provisional else ''}: {rec.best.describe}, "
            f"{rec.metric} {rec.value:.4g} ({how})",
        ]
    lines += ["", rec.table()]
    if rec.code is not None and code_for:
        tuned = f"{rec.spec.search.epochs} epochs of {rec.steps_per_epoch} steps"
        written = ", ".join(f"{key} = {value}" for key, value in code_for.items() if value)
        lines += ["", f"# paste into your training script ({written}; tuned for {tuned}):"]
        lines.append(rec.to_code(**code_for))
    elif rec.code is not None:
        lines += ["", "# paste into your training script:", rec.code]
    return "\n".join(lines)


def _counts(states: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in states.items() if n) or "none"


def _write_plots(rec: Any, directory: Path) -> None:
    from lrtune.plots import plot_history, plot_schedule

    _save_figure(rec.range_test.plot(bounds=rec.bounds), directory / "loss_vs_lr.png")
    if rec.best is not None:
        _save_figure(plot_schedule(rec), directory / "schedule.png")
    _save_figure(plot_history(rec.history, rec.metric, rec.direction), directory / "history.png")
    print(f"plots written to {directory}/", file=sys.stderr)


def _save_figure(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=120)


def _list(args: argparse.Namespace) -> int:
    """This installation's registry, or the API's (its own and its live workers' plugins)."""
    api = _api_client(args)
    if api is None:
        listing = {"models": model_names(), "datasets": dataset_names()}
    else:
        with api:
            models, datasets = api.models(), api.datasets()
        listing = {
            "models": [m.name for m in models.data],
            "datasets": [d.name for d in datasets.data],
        }
    if args.json:
        print(json.dumps(listing))
    else:
        print("models:   " + ", ".join(listing["models"]))
        print("datasets: " + ", ".join(listing["datasets"]))
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
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
        lrtune.cli.CliError: --older-than '99999999999w' is more than 36600 days: name a \
shorter age
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


def _db_prune(args: argparse.Namespace) -> int:
    from lrtune.jobs.store import FINISHED_STATUSES

    older_than = parse_duration(args.older_than)
    store = _open_store(args.database, create=False)
    deleted = store.prune(older_than, args.status or FINISHED_STATUSES)
    statuses = "/".join(args.status) if args.status else "finished"
    print(f"deleted {len(deleted)} {statuses} jobs that ended more than {args.older_than} ago")
    return 0


def _open_store(database: str | None, *, create: bool) -> JobStore:
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
def _job_service(args: argparse.Namespace, *, create: bool = False) -> Iterator[JobStore | Client]:
    """Where ``submit``, ``status``, ``recommend``, ``cancel`` and ``workers`` go.

    The HTTP API at ``--url`` (else ``$LRTUNE_URL``) with ``--token`` (else
    ``$LRTUNE_API_TOKEN``), through :class:`~lrtune.client.Client`; else the job store at
    ``--database`` (else ``$LRTUNE_DATABASE_URL``), which only ``create`` (``submit``) may
    start (:func:`_open_store`). ``--database`` wins over ``$LRTUNE_URL``. Both answer the
    commands' calls with the same models, so every command prints the same for the same job
    either way.
    """
    api = _api_client(args)
    if api is None:
        yield _open_store(args.database, create=create)
        return
    with api:
        yield api


def _api_client(args: argparse.Namespace) -> Client | None:
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


def _submit(args: argparse.Namespace) -> int:
    from lrtune.jobs import JobStatus
    from lrtune.jobs.waiting import wait_for

    if args.timeout is not None and not args.wait:
        raise CliError("--timeout is how long --wait waits: give --wait too")
    if args.timeout is not None and not args.timeout > 0:
        raise CliError(f"--timeout must be > 0 seconds, got {args.timeout}")
    spec = JobSpec.from_file(args.job)
    with _job_service(args, create=True) as jobs:
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
            reason = f": {_first_line(finished.error)}" if finished.error else ""
            print(f"lrtune: error: job {job.id} {finished.status.value}{reason}", file=sys.stderr)
            return 1
        _print_recommendation(jobs.recommendation(job.id), as_json=args.json)
    return 0


def _recommend(args: argparse.Namespace) -> int:
    query = {"model": args.model, "dataset": args.dataset}
    query |= {"optimizer": args.optimizer, "batch_size": args.batch_size}
    by_names = any(value is not None for value in query.values())
    if args.job_id is not None and by_names:
        raise CliError("give a job id or --model and --dataset, not both")
    if args.job_id is None and (args.model is None or args.dataset is None):
        raise CliError("give a job id, or --model and --dataset (see lrtune status for ids)")
    code_for = _code_for(args)
    with _job_service(args) as jobs:
        if args.job_id is not None:
            stored = jobs.recommendation(args.job_id)
            _print_recommendation(stored, as_json=args.json, code_for=code_for)
            return 0
        found = jobs.find_recommendation(**query)
    if args.json:
        print(found.model_dump_json(context=_code_context(code_for)))
        return 0
    if found.match == "fingerprint":
        print(f"stored for exactly this query (fingerprint {found.stored.fingerprint[:12]})")
    else:
        print(
            f"nothing stored for exactly this query; the newest job for {args.model} on "
            f"{args.dataset} differs in: {', '.join(found.differs)}"
        )
    _print_recommendation(found.stored, as_json=False, code_for=code_for)
    return 0


def _code_for(args: argparse.Namespace) -> CodeFor | None:
    """``recommend --epochs/--steps-per-epoch``, or None for the run it was tuned for."""
    if args.epochs is None and args.steps_per_epoch is None:
        return None
    return {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch}


def _code_context(code_for: CodeFor | None) -> dict[str, CodeFor] | None:
    """The serialization context that writes a recommendation's ``code`` for that run."""
    return None if code_for is None else {"code_for": code_for}


def _print_recommendation(
    stored: StoredRecommendation, *, as_json: bool, code_for: CodeFor | None = None
) -> None:
    """What ``lrtune recommend JOB`` prints: the stored record as JSON, or the report; its
    snippet written for ``code_for``'s run when given."""
    if as_json:
        print(stored.model_dump_json(context=_code_context(code_for)))
        return
    print(f"job {stored.job_id}, written {stored.created_at:%Y-%m-%d %H:%M:%S} UTC")
    print(_report(stored.recommendation, code_for))


def _cancel(args: argparse.Namespace) -> int:
    """Its running units stop after their epoch; a finished job is a one-line error."""
    with _job_service(args) as jobs:
        job = jobs.cancel(args.job_id)
    print(job.model_dump_json() if args.json else f"job {job.id} cancelled")
    return 0


def _status(args: argparse.Namespace) -> int:
    with _job_service(args) as jobs:
        if args.job_id is None:
            page = jobs.list_jobs(limit=args.limit)
            if args.json:
                print(page.model_dump_json())
            else:
                print(_jobs_table(page.data) if page.data else f"no jobs in {_source(jobs)}")
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
        print(_describe_job(job))
        range_test = _completed_range_test(jobs, job.id)
    if range_test is not None:
        print(_describe_range_test(*range_test))
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


def _worker(args: argparse.Namespace) -> int:
    from lrtune.device import set_torch_threads
    from lrtune.workers.loop import (
        DEFAULT_LEASE_S,
        Worker,
        open_store,
        stop_on_signals,
        threads_per_unit,
    )

    if args.max_jobs is not None and args.max_jobs < 1:
        raise CliError(f"--max-jobs must be >= 1, got {args.max_jobs}")
    if args.concurrency < 1:
        raise CliError(f"--concurrency must be >= 1, got {args.concurrency}")
    lease_s = DEFAULT_LEASE_S if args.lease_s is None else args.lease_s
    if not lease_s > 0:
        raise CliError(f"--lease-s must be a positive number of seconds, got {lease_s}")
    if not args.wait_for_db >= 0:
        raise CliError(f"--wait-for-db must be >= 0 seconds, got {args.wait_for_db}")
    _prepare_output_dir(*_artifact_dir(args))  # a file there would fail every job it takes
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the worker logs one line per change
    logging.getLogger("lrtune.workers").setLevel(logging.INFO)
    threads, chosen = threads_per_unit(args.concurrency, getattr(args, "threads", None))
    threads = set_torch_threads(threads)
    logging.getLogger("lrtune.workers").info("torch threads: %d per unit (%s)", threads, chosen)
    store = open_store(args.database, wait_s=args.wait_for_db)
    worker = Worker(
        store,
        device=args.device,
        lease_s=lease_s,
        artifact_dir=args.artifact_dir,
        concurrency=args.concurrency,
        threads=threads,
    )
    with stop_on_signals():
        jobs = worker.run(max_jobs=args.max_jobs, once=args.once)
    print(f"worker {worker.id} ({threads} threads) stopped after working on {jobs} jobs")
    return 0


def _artifact_dir(args: argparse.Namespace) -> tuple[str, Path]:
    """Where the worker checkpoints: ``--artifact-dir``, else the store's setting; and its
    name for an error message."""
    if args.artifact_dir is not None:
        return "--artifact-dir", args.artifact_dir
    from lrtune.jobs.settings import StoreSettings

    return "LRTUNE_ARTIFACT_DIR", StoreSettings.from_env().artifact_dir


def _workers(args: argparse.Namespace) -> int:
    with _job_service(args) as jobs:
        workers = jobs.list_workers(live_only=not args.all)
    if args.json:
        print(workers.model_dump_json())
    elif not workers.data:
        print(f"no {'live ' if not args.all else ''}workers in {_source(jobs)}")
    else:
        print(_workers_table(workers.data))
    return 0


def _workers_table(workers: list[Any]) -> str:
    rows = [("id", "host", "device", "pid", "version", "units", "heartbeat", "holds")]
    for w in workers:
        state = "" if w.live else (" (stopped)" if w.stopped_at else " (silent)")
        holds = ", ".join(
            f"{a.job_id[:8]} {a.phase.value}{' (lease)' if a.lease else ''}" for a in w.activity
        )
        rows.append(
            (
                w.id,
                w.host,
                w.device,
                str(w.pid),
                w.version,
                f"{w.concurrency}x{w.threads}t",
                f"{w.heartbeat_age_s:.1f}s ago{state}",
                holds or "idle",
            )
        )
    return _table(rows)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _describe_job(job: Any) -> str:
    progress = job.progress
    lines = [
        f"job {job.id} ({job.name or 'unnamed'}): {job.status.value}",
        f"model {job.spec.model.name}, dataset {job.spec.dataset.name}, "
        f"fingerprint {job.fingerprint[:12]}, study {job.study_name}",
        f"submitted {job.created_at:%Y-%m-%d %H:%M:%S} UTC, attempts {job.attempts}",
        f"range test steps {progress.range_test_steps_done}/{progress.range_test_steps_total}, "
        f"trials {progress.trials_done}/{progress.trials_total or job.spec.search.n_trials}, "
        f"confirmation runs {progress.confirmations_done}/{progress.confirmations_total}"
        + ("" if progress.best_value is None else f", best so far {progress.best_value:.4g}"),
    ]
    if progress.search_stopped:
        lines.append(
            f"search stopped early ({progress.trials_skipped} queued trials skipped): "
            f"{progress.search_stopped}"
        )
    if job.holder_worker_id:
        lines.append(f"held by worker {job.holder_worker_id} until {job.lease_expires_at}")
    if job.error:
        lines.append(f"error: {job.error}")
    return "\n".join(lines)


def _describe_range_test(range_test: LRFinderResult, bounds: LRBounds, rule: str) -> str:
    """The range test's suggestion, the seeds' spread and the search's LR bounds."""
    if range_test.suggestion is None:
        suggested = f"no suggestion ({range_test.consensus.suggestion.reason})"
    else:
        suggested = f"suggested lr {range_test.suggestion:.3g}"
    spread = range_test.spread_decades
    agreement = "n/a" if spread is None else f"{spread:.2f} decades"
    lines = [
        f"range test: {suggested}, seeds' spread {agreement} "
        f"(agreement {range_test.consensus.agreement}, rule {rule})",
        f"search bounds: lr {bounds.low:.3g} to {bounds.high:.3g}"
        + (" (widened)" if bounds.widened else ""),
    ]
    return "\n".join(lines)


def _jobs_table(jobs: list[Any]) -> str:
    rows = [("id", "name", "status", "submitted (UTC)", "trials")]
    rows += [
        (
            job.id,
            job.name or "-",
            job.status.value,
            f"{job.created_at:%Y-%m-%d %H:%M:%S}",
            f"{job.progress.trials_done}/{job.progress.trials_total or job.spec.search.n_trials}",
        )
        for job in jobs
    ]
    return _table(rows)


if __name__ == "__main__":
    raise SystemExit(main())
