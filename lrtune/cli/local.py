"""The commands that work in this process, with no job store: ``find`` (the range test),
``tune`` (the schedule search) and ``list`` (the registry, here or at an API's ``--url``);
and the checks of the files and folders they and ``worker`` write.

Torch, Optuna and scikit-learn are imported only inside the commands that train, so that
``lrtune list`` answers at once.

Example:
    >>> key_values(["hidden=[64,64]", "dropout=0.1", "bias=true"])
    {'hidden': [64, 64], 'dropout': 0.1, 'bias': True}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from lrtune.cli.errors import CliError, first_line
from lrtune.cli.jobs import api_client
from lrtune.cli.render import report
from lrtune.registry import dataset_names, model_names
from lrtune.spec import FIELD_KEYWORDS, JobSpec

__all__ = [
    "find",
    "key_values",
    "list_registry",
    "load_job",
    "prepare_output_dir",
    "prepare_output_file",
    "start_training",
    "tune",
]


def start_training(args: argparse.Namespace) -> None:
    """Pin torch's threads; called by the commands that train, after their input is checked."""
    from lrtune.device import set_torch_threads

    set_torch_threads(args.threads)  # None: $LRTUNE_TORCH_THREADS, else torch's default


def find(args: argparse.Namespace) -> int:
    """``lrtune find``: the range test, its suggestion and (``--plot``) its curve."""
    spec = _find_spec(args)
    if args.plot:
        prepare_output_file("--plot", args.plot)
    start_training(args)
    from lrtune.result import RangeTestReport
    from lrtune.training import TrainingSetup
    from lrtune.tuner import range_test

    setup = TrainingSetup.from_spec(spec)
    result = range_test(setup, progress=not args.quiet)
    if args.json:
        range_report = RangeTestReport.model_validate({**result.model_dump(), "job": spec})
        print(range_report.model_dump_json())
    else:
        print(
            f"{spec.subject}, {spec.optimizer.name}, "
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
    data["model"].setdefault("params", {}).update(key_values(args.model_param))
    data["dataset"].setdefault("params", {}).update(key_values(args.dataset_param))
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


def key_values(pairs: list[str]) -> dict[str, Any]:
    """``--model-param``/``--dataset-param``'s ``KEY=VALUE`` pairs, each value read as YAML."""
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


def load_job(path: Path) -> JobSpec:
    """The job spec in ``path`` (YAML or JSON); a missing file is one line."""
    if not path.exists():
        raise CliError(f"job file not found: {path}")
    return JobSpec.from_file(path)


def _read_job(path: Path) -> dict[str, Any]:
    return load_job(path).model_dump(mode="json", exclude_unset=True)


def tune(args: argparse.Namespace) -> int:
    """``lrtune tune``: the range test and schedule search of a job file, in this process."""
    spec = load_job(args.job)
    # Every output place is checked before the work starts: a bad --plots must not cost a search.
    for option, directory in (("--artifacts", args.artifacts), ("--plots", args.plots)):
        if directory is not None:
            prepare_output_dir(option, directory)
    storage = _open_storage(args.storage)
    start_training(args)
    import optuna

    from lrtune.tuner import tune as tune_job

    # Optuna logs each failed trial with a traceback (also for Ctrl-C); the report lists them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rec = tune_job(spec, storage=storage, artifact_dir=args.artifacts, progress=not args.quiet)
    print(rec.model_dump_json() if args.json else report(rec))
    sys.stdout.flush()  # the report is out even if writing the plots fails
    if args.plots:
        _write_plots(rec, args.plots)
    return 0


def _open_storage(url: str | None) -> Any:
    """The study's storage, opened before the range test so that a bad URL fails first."""
    if url is None:
        return None
    from lrtune.optuna_storage import open_storage

    return open_storage(url)


def prepare_output_dir(option: str, directory: Path) -> None:
    """Create ``directory`` (and its parents) now, or fail with one line naming ``option``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{option} {directory}: cannot create directory: {_reason(exc)}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CliError(f"{option} {directory}: directory is not writable")


def prepare_output_file(option: str, path: Path) -> None:
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
    return exc.strerror or first_line(exc)


def _write_plots(rec: Any, directory: Path) -> None:
    from lrtune.plots import plot_history, plot_schedule

    _save_figure(rec.range_test.plot(bounds=rec.bounds), directory / "loss_vs_lr.png")
    if rec.best is not None:
        _save_figure(plot_schedule(rec), directory / "schedule.png")
    _save_figure(plot_history(rec.history, rec.metric, rec.direction), directory / "history.png")
    print(f"plots written to {directory}/", file=sys.stderr)


def _save_figure(fig: Any, path: Path) -> None:
    fig.savefig(path, dpi=120)


def list_registry(args: argparse.Namespace) -> int:
    """``lrtune list``: this installation's registry, or the API's (its own and its live
    workers' plugins)."""
    api = api_client(args)
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
