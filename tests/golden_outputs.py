"""Golden outputs: what the ``lrtune`` CLI and the HTTP API print for a fixed set of inputs.

Captured before the architecture refactor (issue 16), so that moving modules around can be
checked to change no byte a user sees: ``tests/test_golden_outputs.py`` runs :func:`capture`
on the current code and compares every file with ``tests/golden/``.

When an output is *meant* to change, regenerate the golden files deliberately and review the
diff like any other change::

    python tests/golden_outputs.py capture tests/golden
    git diff tests/golden

Only public entry points are used (the ``lrtune`` console script's entry point, in this
process, and the API's ``lrtune.api.create_app()`` served by uvicorn over real HTTP), never
private module paths, so the capture keeps working while modules move. Volatile values are
replaced by placeholders, everything else is kept byte for byte: job ids (``<JOB_1>``, also
their 8+ character prefixes), other UUIDs, ISO timestamps (``<TIME>``), the values of JSON keys
that hold times, durations, ETAs, hosts, pids or worker ids (``<VOLATILE>``), durations in
text, the temporary folder (``<TMP>``), the database URL and the API's URL with its port.
The worker's own log (times, host, pid) is not compared, only its exit status. Torch runs on
one thread with the job's fixed seeds, so the numbers are the same from run to run on one
machine (three captures in a row were identical when the golden files were written); on
another CPU their last digits differ, which ``tests/test_golden_outputs.py`` allows.

To capture another checkout (e.g. the code before a change), put it first on the path and
run from it, checking the paths printed at the end::

    cd /path/to/checkout && PYTHONPATH=$PWD python /path/to/tests/golden_outputs.py capture DIR

(with an editable install, ``lrtune.api`` and ``lrtune.workers`` map to the installed
checkout's ``api/`` and ``workers/``: link ``lrtune/api`` and ``lrtune/workers`` to them in the
other checkout first).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# Set before torch is imported (a no-op if it already was: --threads 1 covers that case).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# The job every command runs: logistic regression on wine, a 2-seed range test of 40 steps,
# 3 search trials of 2 epochs, the two constant-LR baselines on one confirmation seed.
JOB_YAML = """\
name: golden-wine
model: {name: logreg}
dataset: {name: wine}
batch_size: 32
range_test: {seeds: 2, num_iter: 40}
search:
  n_trials: 3
  epochs: 2
  baselines: [constant_at_suggestion, optimizer_default]
  max_confirm_seeds: 0
  confirm_seeds: 1
  finalists: 1
seed: 0
"""

# A spec the schema refuses (a field out of range) and one naming an unknown model.
BAD_FIELD_YAML = JOB_YAML.replace("n_trials: 3", "n_trials: 0")
BAD_MODEL_YAML = JOB_YAML.replace("{name: logreg}", "{name: no_such_model}")
BAD_PARAM_YAML = JOB_YAML.replace("{name: logreg}", "{name: mlp, params: {hidden: nope}}")

# Environment the capture runs under: no variable of the caller's may change an output.
_ENV = {
    "COLUMNS": "80",
    "LINES": "24",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "LRTUNE_TORCH_THREADS": "1",
    "TZ": "UTC",
}
_ENV_CLEARED_PREFIXES = ("LRTUNE_",)

_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?")
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
# JSON keys whose values change from run to run, wherever they appear.
_VOLATILE_KEYS = (
    r"[a-z_]*_at|[a-z_]*duration[a-z_]*|[a-z_]*elapsed[a-z_]*|eta|eta_s|eta_seconds|[a-z_]*_s_left"
    r"|seconds|pid|host|hostname|worker_id|worker|lease_id|lease_expires|heartbeat[a-z_]*"
    r"|last_seen[a-z_]*|datetime_start|datetime_complete|etag"
)
_JSON_VOLATILE = re.compile(
    rf'"({_VOLATILE_KEYS})": ?("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)'
)
# Durations and ETAs as the text reports write them ("12.3 s", "1m 5s", "eta 3s", "0:00:12").
_DURATION = re.compile(
    r"\b\d+(\.\d+)?\s?(ms|s|sec|seconds|m|min)\b(\s\d+(\.\d+)?\s?s\b)?|\b\d+:\d{2}:\d{2}\b"
)

# Outputs with nothing of the run in them but paths: their examples look like times.
_STATIC = ("cli_help", "api_openapi")


class Normalizer:
    """Replaces the values that change between runs with stable placeholders."""

    def __init__(self) -> None:
        self.literals: list[tuple[str, str]] = []  # (value, placeholder), longest first
        self.job_ids: list[str] = []

    def literal(self, value: str, placeholder: str) -> None:
        if value and all(value != known for known, _ in self.literals):
            self.literals.append((value, placeholder))
            self.literals.sort(key=lambda pair: -len(pair[0]))

    def job_id(self, job_id: str) -> str:
        """Register ``job_id`` (and its prefixes the CLI and dashboard show); its placeholder."""
        if job_id not in self.job_ids:
            self.job_ids.append(job_id)
        return f"<JOB_{self.job_ids.index(job_id) + 1}>"

    def __call__(self, text: str, *, static: bool = False) -> str:
        """``text`` with the run's values replaced; ``static`` text (help, the OpenAPI
        document) only has this run's paths, ports and ids replaced, not the patterns of times
        and durations that its examples hold."""
        for value, placeholder in self.literals:
            text = text.replace(value, placeholder)
        for number, job_id in enumerate(self.job_ids, 1):
            # The whole id, or a prefix of it of 8 characters or more (``lrtune status``).
            text = re.sub(re.escape(job_id[:8]) + r"[0-9a-zA-Z_-]*", f"<JOB_{number}>", text)
        if static:
            return text
        text = _UUID.sub("<UUID>", text)
        text = _JSON_VOLATILE.sub(lambda m: f'"{m.group(1)}":<VOLATILE>', text)
        text = _ISO_TIME.sub("<TIME>", text)
        text = _DURATION.sub("<DURATION>", text)
        return text


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(_ENV_CLEARED_PREFIXES):
            del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _lrtune_main() -> Callable[[list[str]], int | None]:
    """The function the ``lrtune`` command runs: the console script's entry point when the
    installed metadata names one that imports, else ``lrtune.cli.main``."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="console_scripts", name="lrtune"):
        try:
            return entry.load()
        except ImportError:
            break
    from lrtune.cli import main

    return main


def run_lrtune(*argv: str) -> tuple[int, str, str]:
    """``lrtune *argv`` in this process, through the console script's entry point: its exit
    status, stdout and stderr. An uncaught exception (a bug: lrtune's own errors end as one
    line and exit 2) is written to stderr with its traceback, exit 1 as Python's would, so that
    the comparison shows which outputs it changed instead of stopping the capture."""
    main = _lrtune_main()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)
        except Exception:
            traceback.print_exc()
            code = 1
    return int(code or 0), out.getvalue(), err.getvalue()


@contextlib.contextmanager
def _api_server(database_url: str) -> Iterator[str]:
    """The HTTP API for ``database_url`` on a free loopback port (uvicorn in a thread)."""
    from live_api import serve  # beside this file: on the path when run as a script or a test

    import lrtune.api as api

    os.environ["LRTUNE_DATABASE_URL"] = database_url
    with serve(api.create_app()) as url:  # settings from the environment: no class named here
        yield url


def _cli_record(argv: Sequence[str], code: int, out: str, err: str) -> str:
    return f"$ lrtune {' '.join(argv)}\nexit {code}\n--- stdout\n{out}--- stderr\n{err}"


def _http_record(method: str, path: str, response: Any) -> str:
    content_type = response.headers.get("content-type", "")
    return (
        f"{method} {path}\nstatus {response.status_code}\ncontent-type {content_type}\n"
        f"--- body\n{response.text}\n"
    )


def capture(out_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Run the fixed commands and requests; write each normalized output to ``out_dir/NAME``
    (replacing the folder's ``*.txt``); return ``{NAME: text}``."""
    out = Path(out_dir)
    work = Path(tempfile.mkdtemp(prefix="lrtune-golden-"))
    import torch

    threads = torch.get_num_threads()
    try:
        with _environment(_ENV):
            outputs = _capture(work)
    finally:
        torch.set_num_threads(threads)  # as it was, for a caller in the same process
        shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.txt"):
        old.unlink()
    for name, text in outputs.items():
        (out / name).write_text(text, encoding="utf-8", newline="\n")
    return outputs


def _capture(work: Path) -> dict[str, str]:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)

    norm = Normalizer()
    outputs: dict[str, str] = {}
    database_url = f"sqlite:///{work / 'jobs.db'}"
    norm.literal(database_url, "<DATABASE_URL>")
    norm.literal(str(work), "<TMP>")
    norm.literal(str(work.resolve()), "<TMP>")

    job = work / "job.yaml"
    job.write_text(JOB_YAML)
    for name, text in [
        ("bad_field.yaml", BAD_FIELD_YAML),
        ("bad_model.yaml", BAD_MODEL_YAML),
        ("bad_param.yaml", BAD_PARAM_YAML),
        ("not_yaml.yaml", "name: [unclosed\n"),
    ]:
        (work / name).write_text(text)

    def cli(name: str, *argv: str, threads: bool = True) -> tuple[int, str, str]:
        full = ("--threads", "1", *argv) if threads else argv
        code, stdout, stderr = run_lrtune(*full)
        outputs[f"cli_{name}.txt"] = _cli_record(full, code, stdout, stderr)
        return code, stdout, stderr

    # Help: the top level and every command's.
    cli("help", "--help", threads=False)
    commands = [
        "find",
        "tune",
        "list",
        "db",
        "submit",
        "status",
        "recommend",
        "cancel",
        "worker",
        "workers",
        "serve",
    ]
    for command in commands:
        cli(f"help_{command}", command, "--help", threads=False)
    for action in ("upgrade", "prune"):
        cli(f"help_db_{action}", "db", action, "--help", threads=False)

    # The registry.
    cli("list", "list")
    cli("list_json", "list", "--json")

    # Local commands: the range test and the whole tune.
    cli("find", "find", "--job", str(job), "--quiet")
    cli("find_json", "find", "--job", str(job), "--quiet", "--json")
    cli(
        "find_flags",
        "find",
        "--model",
        "logreg",
        "--dataset",
        "wine",
        "--num-iter",
        "30",
        "--seeds",
        "2",
        "--quiet",
    )
    cli("tune", "tune", str(job), "--quiet")
    cli("tune_json", "tune", str(job), "--quiet", "--json")

    # Errors: one line on stderr and the exit status.
    cli(
        "error_find_unknown_model",
        "find",
        "--model",
        "no_such_model",
        "--dataset",
        "wine",
        "--quiet",
    )
    cli("error_tune_missing_file", "tune", str(work / "missing.yaml"), "--quiet")
    cli("error_tune_bad_field", "tune", str(work / "bad_field.yaml"), "--quiet")
    cli("error_tune_bad_model", "tune", str(work / "bad_model.yaml"), "--quiet")
    cli("error_tune_not_yaml", "tune", str(work / "not_yaml.yaml"), "--quiet")
    cli("error_unknown_command", "frobnicate", threads=False)
    cli("error_bad_option", "find", "--no-such-option", threads=False)

    # The job store: submit, a worker, then every read.
    cli("db_upgrade", "db", "upgrade", "--database", database_url)
    code, stdout, stderr = cli("submit", "submit", str(job), "--database", database_url)
    if code != 0:  # every later step needs the job
        raise RuntimeError(f"lrtune submit failed (exit {code}):\n{stdout}{stderr}")
    job_id = stdout.strip()
    norm.job_id(job_id)
    cli("status_queued", "status", job_id, "--database", database_url)
    cli(
        "error_submit_bad_model", "submit", str(work / "bad_model.yaml"), "--database", database_url
    )
    cli(
        "error_submit_bad_param", "submit", str(work / "bad_param.yaml"), "--database", database_url
    )
    cli(
        "error_submit_bad_field", "submit", str(work / "bad_field.yaml"), "--database", database_url
    )
    cli("error_status_unknown_job", "status", "no-such-job", "--database", database_url)
    cli("error_recommend_unfinished", "recommend", job_id, "--database", database_url)

    artifacts = work / "artifacts"
    code, _, _ = run_lrtune(
        "worker",
        "--database",
        database_url,
        "--once",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--artifact-dir",
        str(artifacts),
        "--wait-for-db",
        "0",
    )  # its log is progress with times and hosts: only the outcome is compared
    outputs["cli_worker_exit.txt"] = f"exit {code}\n"

    cli("status", "status", job_id, "--database", database_url)
    cli("status_json", "status", job_id, "--database", database_url, "--json")
    cli("status_list", "status", "--database", database_url)
    cli("status_list_json", "status", "--database", database_url, "--json")
    cli("recommend", "recommend", job_id, "--database", database_url)
    cli("recommend_json", "recommend", job_id, "--database", database_url, "--json")
    cli(
        "recommend_snippet",
        "recommend",
        job_id,
        "--database",
        database_url,
        "--epochs",
        "5",
        "--steps-per-epoch",
        "10",
    )
    cli(
        "recommend_stored",
        "recommend",
        "--model",
        "logreg",
        "--dataset",
        "wine",
        "--batch-size",
        "32",
        "--database",
        database_url,
    )
    cli(
        "recommend_stored_json",
        "recommend",
        "--model",
        "logreg",
        "--dataset",
        "wine",
        "--batch-size",
        "32",
        "--database",
        database_url,
        "--json",
    )
    cli(
        "error_recommend_none_stored",
        "recommend",
        "--model",
        "mlp",
        "--dataset",
        "digits",
        "--database",
        database_url,
    )
    cli("error_cancel_finished", "cancel", job_id, "--database", database_url)
    # Submitting the same job again answers from the finished one.
    cli("submit_reused", "submit", str(job), "--database", database_url)
    cli("submit_reused_json", "submit", str(job), "--database", database_url, "--json")

    # The HTTP API over the same store, and the CLI through it.
    import httpx

    with _api_server(database_url) as url:
        norm.literal(url, "<API_URL>")
        with httpx.Client(base_url=url, timeout=60) as client:

            def http(name: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
                response = client.request(method, path, **kwargs)
                outputs[f"api_{name}.txt"] = _http_record(method, path, response)
                return response

            http("job", "GET", f"/v1/jobs/{job_id}")
            http("jobs", "GET", "/v1/jobs")
            http("recommendation", "GET", f"/v1/jobs/{job_id}/recommendation")
            http("finder", "GET", f"/v1/jobs/{job_id}/finder")
            http("trials", "GET", f"/v1/jobs/{job_id}/trials")
            http("trials_csv", "GET", f"/v1/jobs/{job_id}/trials.csv")
            http(
                "recommendations_find",
                "GET",
                "/v1/recommendations",
                params={"model": "logreg", "dataset": "wine", "batch_size": 32},
            )
            http("models", "GET", "/v1/models")
            http("datasets", "GET", "/v1/datasets")
            http(
                "schedules_preview",
                "POST",
                "/v1/schedules/preview",
                json={
                    "schedule": {"family": "step", "step_size": 2, "gamma": 0.5},
                    "base_lr": 0.1,
                    "epochs": 4,
                },
            )
            http(
                "schedules_preview_onecycle",
                "POST",
                "/v1/schedules/preview",
                json={
                    "schedule": {"family": "onecycle", "max_lr": 0.3},
                    "base_lr": 0.3,
                    "epochs": 3,
                    "steps_per_epoch": 4,
                    "group_multipliers": [1.0, 0.1],
                },
            )
            http(
                "error_schedules_preview_422",
                "POST",
                "/v1/schedules/preview",
                json={"schedule": {"family": "nope"}, "base_lr": -1, "epochs": 4},
            )
            http(
                "error_submit_422",
                "POST",
                "/v1/jobs",
                json={
                    "name": "x",
                    "model": {"name": "logreg"},
                    "dataset": {"name": "wine"},
                    "search": {"n_trials": 0},
                },
            )
            http(
                "error_submit_unknown_model_422",
                "POST",
                "/v1/jobs",
                json={"name": "x", "model": {"name": "no_such_model"}, "dataset": {"name": "wine"}},
            )
            http(
                "error_submit_malformed_422",
                "POST",
                "/v1/jobs",
                content=b"{not json",
                headers={"content-type": "application/json"},
            )
            http("error_job_404", "GET", "/v1/jobs/no-such-job")
            http("error_jobs_bad_query_422", "GET", "/v1/jobs", params={"limit": "-1"})
            http("openapi", "GET", "/openapi.json")

        cli("status_via_url", "status", job_id, "--url", url)
        cli("recommend_via_url", "recommend", job_id, "--url", url)
        cli("recommend_via_url_json", "recommend", job_id, "--url", url, "--json")
        cli("list_via_url", "list", "--url", url)

    # Normalized last, once every job id, path and port is known.
    return {
        name: norm(text, static=name.startswith(_STATIC)) for name, text in sorted(outputs.items())
    }


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "capture":
        print("usage: python tests/golden_outputs.py capture OUT_DIR", file=sys.stderr)
        return 2
    outputs = capture(argv[1])
    import lrtune
    import lrtune.api

    print(
        f"wrote {len(outputs)} files to {argv[1]}, from lrtune at {lrtune.__file__}, "
        f"lrtune.api at {lrtune.api.__file__}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
