"""The long-running commands: ``lrtune worker`` (take jobs from the job store and run them)
and ``lrtune serve`` (the HTTP API in uvicorn, with embedded worker processes).

:func:`run_service` binds the API (``http://127.0.0.1:8000/`` by default), starts
``--workers`` child processes running ``lrtune worker`` on the same database (none with
``--no-worker``: the fleet layout, where ``lrtune worker`` processes run elsewhere), prints the
dashboard's URL, and serves until SIGINT (Ctrl-C) or SIGTERM. Then uvicorn finishes its
requests, each worker gets SIGTERM (it hands its unit and lease back and exits 0), and the
command exits 0. A worker is started with ``PR_SET_PDEATHSIG`` on Linux, so even a
``kill -9`` of the server leaves no orphan worker behind. A worker is started so that the
working directory cannot shadow the installed package (:func:`python_module`): ``lrtune
serve`` run in the clone's parent, which holds a folder named ``lrtune``, starts the same
lrtune as its own. If the embedded workers exit anyway, ``/readyz`` and the dashboard say so
(:class:`lrtune.api.embedded.EmbeddedWorkers`).

With ``submit`` (``lrtune serve --submit job.yaml``, the README's demo) a thread submits the
job over HTTP once the server is up (with :class:`lrtune.client.Client`, as any user would),
prints the job's URL, shows a progress bar until it finishes and prints the recommendation
(:func:`lrtune.cli.render.print_recommendation`, as ``lrtune recommend`` does); with
``exit_when_done`` the service then stops (exit 0 if the job succeeded, 1 if not).

Binding a non-loopback address needs ``LRTUNE_API_TOKEN``, and with it reads need the token
too: the app applies the rule (:meth:`lrtune.api.config.ApiSettings.bound`), however it is
started; ``serve`` checks it before it binds, so a refusal is one line.

The API (FastAPI, uvicorn), torch and Optuna are imported inside the commands: the API
package never imports the CLI.

Example:
    >>> base_url("0.0.0.0", 8000)
    'http://127.0.0.1:8000'
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lrtune.cli.errors import CliError
from lrtune.cli.local import load_job, prepare_output_dir
from lrtune.cli.render import print_recommendation
from lrtune.exceptions import InvalidInputError, LRTuneError, describe_validation_error

if TYPE_CHECKING:
    from lrtune.api.config import ApiSettings

__all__ = [
    "ServeOptions",
    "base_url",
    "python_module",
    "run_service",
    "serve",
    "worker",
]

logger = logging.getLogger("lrtune.api")

WORKER_STOP_S = 60.0
"""Seconds a worker gets, after SIGTERM, to hand its unit back before it is killed."""
WORKER_START_S = 120.0
"""Seconds ``serve --task`` waits for its embedded workers to publish their tasks."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The service's log lines: the API's, uvicorn's and (in their own processes) the workers'."""


def worker(args: argparse.Namespace) -> int:
    """``lrtune worker``: take jobs from the job store and run them until stopped."""
    from lrtune.device import set_torch_threads
    from lrtune.workers.backoff import open_store
    from lrtune.workers.loop import DEFAULT_LEASE_S, Worker
    from lrtune.workers.signals import stop_on_signals
    from lrtune.workers.threads import threads_per_unit

    if args.max_jobs is not None and args.max_jobs < 1:
        raise CliError(f"--max-jobs must be >= 1, got {args.max_jobs}")
    if args.concurrency < 1:
        raise CliError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.population < 1:
        raise CliError(f"--population must be >= 1, got {args.population}")
    lease_s = DEFAULT_LEASE_S if args.lease_s is None else args.lease_s
    if not lease_s > 0:
        raise CliError(f"--lease-s must be a positive number of seconds, got {lease_s}")
    if not args.wait_for_db >= 0:
        raise CliError(f"--wait-for-db must be >= 0 seconds, got {args.wait_for_db}")
    prepare_output_dir(*_artifact_dir(args))  # a file there would fail every job it takes
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the worker logs one line per change
    logging.getLogger("lrtune.workers").setLevel(logging.INFO)
    threads, chosen = threads_per_unit(args.concurrency, getattr(args, "threads", None))
    threads = set_torch_threads(threads)
    tasks = load_worker_tasks(args.task)  # a task that does not load: one line, exit 2
    logging.getLogger("lrtune.workers").info("torch threads: %d per unit (%s)", threads, chosen)
    store = open_store(args.database, wait_s=args.wait_for_db)
    running = Worker(
        store,
        device=args.device,
        lease_s=lease_s,
        artifact_dir=args.artifact_dir,
        concurrency=args.concurrency,
        threads=threads,
        tasks=tasks,
        population=args.population,
    )
    with stop_on_signals():
        jobs = running.run(max_jobs=args.max_jobs, once=args.once)
    print(f"worker {running.id} ({threads} threads) stopped after working on {jobs} jobs")
    return 0


def agent(args: argparse.Namespace) -> int:
    """``lrtune agent``: serve the service's jobs of ``--task`` over HTTP until stopped."""
    from lrtune.agent import Agent
    from lrtune.cli.jobs import api_client
    from lrtune.exceptions import LRTuneError
    from lrtune.workers.signals import stop_on_signals
    from lrtune.workers.tasks import load_named

    if args.max_units is not None and args.max_units < 1:
        raise CliError(f"--max-units must be >= 1, got {args.max_units}")
    try:
        tasks = load_named(args.task)
    except LRTuneError as exc:
        raise CliError(f"--task: {exc}") from None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lrtune.agent").setLevel(logging.INFO)
    client = api_client(args)
    if client is None:
        raise CliError("give --url (the lrtune service) or set LRTUNE_URL")
    with client:
        running = Agent(
            client,
            tasks,
            device=args.device,
            job_id=args.job,
            max_units=args.max_units,
            once=args.once,
        )
        with stop_on_signals():
            units = running.run()
    print(f"agent {running.id} stopped after {units} units")
    return 0


def load_worker_tasks(paths: list[str]) -> dict[str, Any]:
    """The tasks ``--task`` names and installed packages declare (one line and exit 2 for a
    named one that does not load: :class:`CliError`)."""
    from lrtune.exceptions import LRTuneError
    from lrtune.workers.tasks import load_installed, load_named

    try:
        named = load_named(paths)
    except LRTuneError as exc:
        raise CliError(f"--task: {exc}") from None
    tasks = {**load_installed(), **named}
    if tasks:
        logging.getLogger("lrtune.workers").info("tasks: %s", ", ".join(sorted(tasks)))
    return tasks


def _artifact_dir(args: argparse.Namespace) -> tuple[str, Path]:
    """Where the worker checkpoints: ``--artifact-dir``, else the store's setting; and its
    name for an error message."""
    if args.artifact_dir is not None:
        return "--artifact-dir", args.artifact_dir
    from lrtune.jobs.settings import StoreSettings

    return "LRTUNE_ARTIFACT_DIR", StoreSettings.from_env().artifact_dir


@dataclass
class ServeOptions:
    """What ``lrtune serve`` was asked to do (see the module)."""

    settings: ApiSettings
    port: int | None = None  # overrides settings.port; 0 binds any free port
    workers: int = 1
    threads: int | None = None
    device: str = "auto"
    population: int = 1
    tasks: tuple[str, ...] = ()
    submit: Path | None = None
    exit_when_done: bool = False
    access_log: bool = False


def serve(args: argparse.Namespace) -> int:
    """``lrtune serve``: its options checked (a bad job file fails before anything starts),
    then :func:`run_service`."""
    from lrtune.api.config import ApiSettings

    if args.workers < 1:
        raise CliError(f"--workers must be >= 1, got {args.workers} (or pass --no-worker)")
    if args.population < 1:
        raise CliError(f"--population must be >= 1, got {args.population}")
    if args.exit_when_done and args.submit is None:
        raise CliError("--exit-when-done needs --submit JOB")
    if args.submit is not None:
        load_job(args.submit)  # a bad job file fails now, before anything starts
    if args.task and args.no_worker:
        raise CliError("--task is for the embedded workers: drop --no-worker (or run lrtune "
                       "worker --task, or lrtune agent --task, beside the service)")  # fmt: skip
    if args.task:
        load_worker_tasks(args.task)  # a task that does not load fails now, in one line
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
        population=args.population,
        tasks=tuple(args.task),
        submit=args.submit,
        exit_when_done=args.exit_when_done,
        access_log=args.access_log,
    )
    return run_service(options)


def base_url(host: str, port: int) -> str:
    """The URL a browser on this machine opens (``0.0.0.0`` is reached as 127.0.0.1)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def setup_logging() -> None:
    """INFO lines from the API and uvicorn on stderr, one format (workers log the same way)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger("lrtune").setLevel(logging.INFO)


def run_service(options: ServeOptions) -> int:
    """Run the service until a signal (or, with ``exit_when_done``, the job's end); return the
    exit status.

    Raises:
        InvalidInputError: a non-loopback bind without a token, or the port cannot be bound.
        StorageUnavailableError: the job store cannot be opened (down, or its schema is out of
            date: run ``lrtune db upgrade``).
    """
    import uvicorn

    from lrtune.api.embedded import EmbeddedWorkers
    from lrtune.api.main import create_app
    from lrtune.jobs import JobStore

    settings = options.settings
    settings = settings.bound()  # before anything starts: a refused bind is one line
    token = settings.api_token.get_secret_value() if settings.api_token else None
    setup_logging()
    store = JobStore(settings.database_url, settings=settings)  # upgrades an embedded SQLite
    sock = _bind(settings.host, settings.port if options.port is None else options.port)
    url = base_url(settings.host, sock.getsockname()[1])
    stop = _StopSignals()
    workers: list[subprocess.Popen[bytes]] = []
    outcome = _Outcome()
    try:
        with stop:
            workers = [
                _start_worker(options, settings.database_url) for _ in range(options.workers)
            ]
            app = create_app(settings, store=store, embedded_workers=EmbeddedWorkers(workers))
            config = uvicorn.Config(
                app,
                log_config=None,
                log_level="info",
                access_log=options.access_log,
                lifespan="off",
                timeout_graceful_shutdown=5,
                ws="none",
            )
            server = stop.server = uvicorn.Server(config)
            if options.tasks:  # the API admits a task's job once a live worker published it
                _wait_until_registered(store, workers, stop)
            if stop.received:  # a signal while the workers started
                server.should_exit = True
            _announce(url, store, workers)
            helpers = [threading.Thread(target=_watch_workers, args=(workers, server), daemon=True)]
            if options.submit is not None:
                args = (options, url, token, server, outcome)
                helpers.append(threading.Thread(target=_submit_and_wait, args=args, daemon=True))
            for thread in helpers:
                thread.start()
            server.run(sockets=[sock])
    finally:
        _stop_workers(workers)
        sock.close()
    if stop.received:
        logger.info("event=stopped signal=%s", stop.received)
    return outcome.status


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidInputError(
            f"cannot bind {host}:{port}: {exc.strerror or exc}; choose another --port"
        ) from None
    sock.set_inheritable(False)
    return sock


def _wait_until_registered(
    store: Any, workers: list[subprocess.Popen[bytes]], stop: _StopSignals
) -> None:
    """Wait until every embedded worker has registered (and so published its tasks), one
    exits (:func:`_watch_workers` says why), a signal arrives, or ``WORKER_START_S`` pass."""
    pids = {worker.pid for worker in workers}
    deadline = time.monotonic() + WORKER_START_S
    while time.monotonic() < deadline and not stop.received:
        if any(worker.poll() is not None for worker in workers):
            return
        live = store.list_workers().data
        if pids <= {w.pid for w in live if w.host == socket.gethostname()}:
            return
        time.sleep(0.2)


def _announce(url: str, store: Any, workers: list[subprocess.Popen[bytes]]) -> None:
    from lrtune.jobs.db import safe_url

    who = f"{len(workers)} embedded worker(s), pid {', '.join(str(w.pid) for w in workers)}"
    print(f"lrtune: dashboard at {url}/", file=sys.stderr, flush=True)
    print(
        f"lrtune: API at {url}/v1 (docs {url}/docs), job store {safe_url(store.url)}, "
        f"{who if workers else 'no embedded worker (run lrtune worker on the same database)'}; "
        "Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )


class _StopSignals:
    """SIGINT/SIGTERM set aside while uvicorn serves: uvicorn takes them over while it runs,
    and delivers them again to these handlers when it returns; they only record the signal,
    so that the workers are stopped and the command exits 0."""

    def __init__(self) -> None:
        self.received: str | None = None
        self.server: Any = None  # set once uvicorn's server exists: a signal then stops it
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        if self.server is not None:
            self.server.should_exit = True

    def __enter__(self) -> _StopSignals:
        signums = (signal.SIGINT, signal.SIGTERM)
        self._previous = {signum: signal.signal(signum, self._handle) for signum in signums}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def python_module(module: str) -> list[str]:
    """The command that runs ``python -m module`` in this interpreter, except that the working
    directory is not put on ``sys.path``: in a folder that holds a folder named ``lrtune``
    (the clone's parent), ``python -m`` would import that folder instead of the installed
    package (an editable install's package is found after it).

    Example:
        >>> command = python_module("lrtune.cli")
        >>> command[0] == sys.executable, command[1] in ("-P", "-c")
        (True, True)
    """
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module]  # -P: sys.flags.safe_path
    return [  # pragma: no cover - Python 3.10
        sys.executable,
        "-c",
        f"import runpy, sys; del sys.path[0]; "
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)",
    ]


def _worker_argv(options: ServeOptions) -> list[str]:
    # The database URL goes in the environment, not the command line: `ps` shows no password.
    command = [*python_module("lrtune.cli"), "worker", "--device", options.device]
    if options.threads is not None:
        command += ["--threads", str(options.threads)]
    if options.population > 1:
        command += ["--population", str(options.population)]
    for task in options.tasks:
        command += ["--task", task]
    return command


def _start_worker(options: ServeOptions, database_url: str) -> subprocess.Popen[bytes]:
    """``lrtune worker`` on the service's database, in this process group (so a terminal's
    Ctrl-C reaches it too), killed with SIGTERM if this process dies first (Linux)."""
    env = dict(os.environ, LRTUNE_DATABASE_URL=database_url)
    threads = options.threads or int(env.get("LRTUNE_TORCH_THREADS") or 1)
    env.setdefault("OMP_NUM_THREADS", str(threads))  # numpy/sklearn's pools, like torch's
    return subprocess.Popen(
        _worker_argv(options),
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def _die_with_parent() -> None:
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each running worker, wait for it (``WORKER_STOP_S``), kill it if it hangs."""
    for process in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in workers:
        try:
            status = process.wait(timeout=WORKER_STOP_S)
        except subprocess.TimeoutExpired:
            logger.warning(
                "event=worker_killed pid=%d: no exit %.0f s after SIGTERM",
                process.pid,
                WORKER_STOP_S,
            )
            process.kill()
            status = process.wait()
        logger.info("event=worker_stopped pid=%d status=%d", process.pid, status)


def _watch_workers(workers: list[subprocess.Popen[bytes]], server: Any) -> None:
    """Log an embedded worker that exits by itself (the API keeps serving)."""
    running = list(workers)
    while running and not server.should_exit:
        for process in list(running):
            if process.poll() is not None:
                running.remove(process)
                if not server.should_exit:
                    logger.warning(
                        "event=worker_exited pid=%d status=%d: jobs wait for another worker",
                        process.pid,
                        process.returncode,
                    )
        threading.Event().wait(0.5)


@dataclass
class _Outcome:
    status: int = 0


def _submit_and_wait(
    options: ServeOptions, url: str, token: str | None, server: Any, outcome: _Outcome
) -> None:
    """The demo: submit ``options.submit`` over HTTP, follow it, print the recommendation."""
    from lrtune.client import Client
    from lrtune.spec import JobSpec

    while not server.started:
        if server.should_exit:
            return
        threading.Event().wait(0.05)
    try:
        spec = JobSpec.from_file(options.submit)
        with Client(url, token) as client:
            job = client.submit(spec)
            if job.reused_from is not None:
                print(
                    f"lrtune: job {job.id} already answered this spec (reused; its page: "
                    f"{url}/jobs/{job.id})",
                    file=sys.stderr,
                )
            else:
                print(f"lrtune: submitted job {job.id}: {url}/jobs/{job.id}", file=sys.stderr)
            print(f"lrtune: its API resource: {url}/v1/jobs/{job.id}", file=sys.stderr, flush=True)
            job = client.wait(job.id, poll_s=1.0)
            if job.status.value != "succeeded":
                outcome.status = 1
                print(f"lrtune: job {job.id} {job.status.value}: {job.error or ''}", flush=True)
            else:
                print_recommendation(client.recommendation(job.id), as_json=False)  # as the CLI
                sys.stdout.flush()
    except (LRTuneError, OSError, ValueError) as exc:
        outcome.status = 1
        text = str(exc).strip().splitlines()
        print(f"lrtune: error: {text[0] if text else type(exc).__name__}", file=sys.stderr)
    if options.exit_when_done:
        server.should_exit = True
    else:
        print(f"lrtune: still serving at {url}/; Ctrl-C stops", file=sys.stderr, flush=True)
