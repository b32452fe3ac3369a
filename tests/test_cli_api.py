"""``lrtune submit``, ``status``, ``recommend`` and ``cancel`` through the HTTP API (``--url`` or
``LRTUNE_URL``) against a live uvicorn, beside the same commands on the job store itself.

One tiny job runs to success under a real worker process (``submit --wait`` as a real
subprocess); the other tests read it, or submit jobs that no worker takes.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from live_api import serve
from test_client import TINY as CLIENT_TINY
from test_jobs_cli import run

from lrtune.api import ApiSettings, create_app
from lrtune.jobs import JobStatus, JobStore, Submission, upgrade

TOKEN = "cli-test-token-never-shown"
TINY = {**CLIENT_TINY, "name": "cli-tiny"}
UNREACHABLE = "http://127.0.0.1:1"


@dataclass
class Service:
    url: str
    database: str
    job_file: Path
    tmp: Path


@dataclass
class FinishedJob:
    id: str
    submit: subprocess.CompletedProcess[str]


def child_env(**extra: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("LRTUNE_API")}
    inherited.pop("LRTUNE_URL", None)
    return {**inherited, "OMP_NUM_THREADS": "1", "LRTUNE_TORCH_THREADS": "1", **extra}


def lrtune(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lrtune.cli", *argv],
        cwd=cwd,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The API with a token, on a SQLite store, and a job file for it."""
    tmp = tmp_path_factory.mktemp("cli-api")
    database = f"sqlite:///{tmp / 'jobs.db'}"
    upgrade(database)
    job_file = tmp / "job.yaml"
    job_file.write_text(yaml.safe_dump(TINY))
    with serve(create_app(ApiSettings(database_url=database, api_token=TOKEN))) as url:
        yield Service(url, database, job_file, tmp)


@pytest.fixture(scope="module")
def finished(service: Service) -> FinishedJob:
    """``lrtune submit job.yaml --wait`` through the API while a real worker runs the job."""
    log_path = service.tmp / "worker.log"
    with log_path.open("wb") as log:  # a file: a pipe nobody reads could fill and block it
        worker = subprocess.Popen(
            [sys.executable, "-m", "lrtune.cli", "worker", "--database", service.database],
            cwd=service.tmp,
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        submit = lrtune(
            "submit",
            str(service.job_file),
            "--wait",
            "--url",
            service.url,
            cwd=service.tmp,
            LRTUNE_API_TOKEN=TOKEN,
        )
    finally:
        worker.send_signal(signal.SIGTERM)  # hands back what it holds, exits 0
        worker.wait(timeout=120)
    assert submit.returncode == 0 and worker.returncode == 0, (submit.stderr, log_path.read_text())
    job_id = submit.stdout.split(",")[0].removeprefix("job ")
    return FinishedJob(job_id, submit)


@pytest.fixture(autouse=True)
def no_api_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands here get their URL and token from their flags unless a test sets these."""
    monkeypatch.delenv("LRTUNE_URL", raising=False)
    monkeypatch.delenv("LRTUNE_API_TOKEN", raising=False)


def test_submit_wait_shows_progress_then_prints_the_recommendation(
    service: Service, finished: FinishedJob, capsys: pytest.CaptureFixture[str]
) -> None:
    store = JobStore(service.database)
    job = store.get(finished.id)
    assert job.status is JobStatus.SUCCEEDED and job.name == "cli-tiny"
    stderr = finished.submit.stderr
    assert f"job {job.id} queued; waiting for it" in stderr
    assert f"job {job.id[:8]}" in stderr and "succeeded" in stderr  # the bar, on stderr
    code, recommended, _ = run(capsys, "recommend", job.id, "--database", service.database)
    assert code == 0 and finished.submit.stdout == recommended  # what recommend prints
    rec = store.recommendation(job.id).recommendation
    assert f"recommended: {rec.best.describe}, " in recommended and rec.code in recommended
    assert TOKEN not in stderr + finished.submit.stdout


def test_a_reused_answer_is_printed_at_once_by_submit_wait(
    service: Service, finished: FinishedJob, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["submit", str(service.job_file), "--wait", "--url", service.url, "--token", TOKEN]
    code, out, err = run(capsys, *argv)
    assert code == 0 and f"reused job {finished.id} (succeeded" in err
    assert out == finished.submit.stdout
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0 and "reused job" not in err
    assert json.loads(out)["job_id"] == finished.id


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "{job}"],
        ["status", "{job}", "--json"],
        ["status"],
        ["status", "--json", "--limit", "1"],
        ["recommend", "{job}"],
        ["recommend", "{job}", "--json"],
        ["recommend", "--model", "logreg", "--dataset", "wine", "--batch-size", "32"],
        ["recommend", "--model", "logreg", "--dataset", "wine", "--optimizer", "adam", "--json"],
    ],
)
def test_each_command_prints_the_same_through_the_api_as_from_the_store(
    service: Service, finished: FinishedJob, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    argv = [arg.format(job=finished.id) for arg in argv]
    from_store = run(capsys, *argv, "--database", service.database)
    through_api = run(capsys, *argv, "--url", service.url)
    assert from_store[0] == 0 and from_store[2] == "", from_store
    assert through_api == from_store


def test_status_and_recommend_by_names_say_what_they_found(
    service: Service, finished: FinishedJob, capsys: pytest.CaptureFixture[str]
) -> None:
    _, status, _ = run(capsys, "status", finished.id, "--url", service.url)
    assert status.startswith(f"job {finished.id} (cli-tiny): succeeded\n")
    assert "range test: suggested lr" in status and "rule consensus" in status
    _, exact, _ = run(
        capsys, "recommend", "--model", "logreg", "--dataset", "wine", "--batch-size", "32",
        "--url", service.url,
    )  # fmt: skip
    assert exact.startswith("stored for exactly this query (fingerprint ")
    assert f"\njob {finished.id}, written " in exact
    _, near, _ = run(
        capsys, "recommend", "--model", "logreg", "--dataset", "wine", "--url", service.url
    )
    assert near.startswith("nothing stored for exactly this query; the newest job for logreg on")
    assert near.splitlines()[0].endswith("differs in: batch_size")


def test_submit_and_cancel_through_the_api(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    store = JobStore(service.database)
    code, out, _ = run(
        capsys, "submit", str(service.job_file), "--no-reuse", "--json",
        "--url", service.url, "--token", TOKEN,
    )  # fmt: skip
    job = Submission.model_validate_json(out)
    assert code == 0 and job.status is JobStatus.QUEUED and job.reused_from is None
    assert store.get(job.id).status is JobStatus.QUEUED

    code, out, _ = run(capsys, "cancel", job.id, "--url", service.url, "--token", TOKEN)
    assert (code, out) == (0, f"job {job.id} cancelled\n")
    assert store.get(job.id).status is JobStatus.CANCELLED
    code, out, err = run(capsys, "cancel", job.id, "--url", service.url, "--token", TOKEN)
    assert (code, out) == (2, "")
    assert err == (
        f"lrtune: error: HTTP 409: job {job.id} is already cancelled: only an unfinished job "
        "can be cancelled\n"
    )


def test_the_url_and_token_default_to_the_environment(
    service: Service,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # the store's default, ./lrtune.db, would land here
    monkeypatch.setenv("LRTUNE_URL", service.url)
    monkeypatch.setenv("LRTUNE_API_TOKEN", TOKEN)
    code, out, _ = run(capsys, "submit", str(service.job_file), "--no-reuse")
    job_id = out.strip()
    assert code == 0 and JobStore(service.database).get(job_id).name == "cli-tiny"
    assert run(capsys, "cancel", job_id) == (0, f"job {job_id} cancelled\n", "")
    assert not (tmp_path / "lrtune.db").exists()

    monkeypatch.setenv("LRTUNE_URL", UNREACHABLE)  # --database wins over the variable
    code, out, _ = run(capsys, "status", job_id, "--database", service.database)
    assert code == 0 and out.startswith(f"job {job_id} (cli-tiny): cancelled")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["submit", "{job_file}", "--token", "wrong-token"], "HTTP 401: the bearer token is not"),
        (["submit", "{job_file}"], "HTTP 401: this endpoint needs the header"),
        (["cancel", "some-job", "--token", "wrong-token"], "HTTP 401: the bearer token is not"),
        (["status", "no-such-job"], "HTTP 404: no job 'no-such-job' in the job store"),
        (["recommend", "no-such-job"], "HTTP 404: no job 'no-such-job'"),
        (["cancel", "no-such-job", "--token", TOKEN], "HTTP 404: no job 'no-such-job'"),
        (
            ["recommend", "--model", "mlp", "--dataset", "digits"],
            "HTTP 404: no succeeded job for model 'mlp' and dataset 'digits' yet: submit one",
        ),
        (
            ["submit", "{bad_model}", "--token", TOKEN],
            "HTTP 422: unknown model 'resnet'",
        ),
        (
            ["status", "--limit", "0"],
            "HTTP 422: query.limit='0': Input should be greater than or equal to 1\n",
        ),
        (["status", "--token", "wrong\ntoken"], "the API token must be printable ASCII without"),
        (["status", "--token", "wrong-tökén"], "the API token must be printable ASCII without"),
        (["status", "--url", UNREACHABLE], f"cannot reach the lrtune API at {UNREACHABLE}: "),
        (["status", "--url", "localhost:8000"], "the API URL 'localhost:8000' is not an http://"),
        (["status", "--database", "sqlite:///x.db"], "give --url (the HTTP API) or --database"),
        (["recommend", "some-job", "--model", "mlp"], "give a job id or --model and --dataset"),
        (["recommend", "--model", "mlp"], "give a job id, or --model and --dataset"),
    ],
)
def test_api_errors_are_one_line_and_exit_2_without_the_token(
    service: Service,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    bad_model = tmp_path / "bad.yaml"
    bad_model.write_text(yaml.safe_dump({**TINY, "model": {"name": "resnet"}}))
    argv = [arg.format(job_file=service.job_file, bad_model=bad_model) for arg in argv]
    if "--url" not in argv:
        argv += ["--url", service.url]
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, ""), err
    assert err.startswith("lrtune: error: ") and expected in err, err
    assert len(err.splitlines()) == 1 and TOKEN not in err and "wrong" not in err
    if "resnet" in expected:
        assert "(at body.model.name: " in err  # a 422 names the field's path


def test_a_token_without_a_url_is_refused(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "status", "--token", TOKEN, "--database", service.database)
    assert code == 2 and err == (
        "lrtune: error: --token is for the HTTP API: give --url or set LRTUNE_URL\n"
    )


def test_submit_wait_on_the_store_ends_with_one_line_when_the_job_is_cancelled(
    tmp_path: Path,
) -> None:
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(database)
    store = JobStore(database)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(TINY))
    waiting = subprocess.Popen(
        [sys.executable, "-m", "lrtune.cli", "submit", str(job_file), "--wait"],
        cwd=tmp_path,
        env=child_env(LRTUNE_DATABASE_URL=database),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not store.list_jobs().data:
            assert waiting.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        job = store.cancel(store.list_jobs().data[0].id)
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 1 and out == ""
    assert err.splitlines()[-1] == f"lrtune: error: job {job.id} cancelled"
    assert "Traceback" not in err


def test_submit_wait_with_a_timeout_stops_waiting_in_one_line_and_the_job_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(database)
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(TINY))
    argv = ["submit", str(job_file), "--database", database, "--wait"]
    started = time.monotonic()
    code, out, err = run(capsys, *argv, "--timeout", "0.5")  # no worker: it stays queued
    waited_s = time.monotonic() - started
    (job,) = JobStore(database).list_jobs().data
    assert code == 1 and out == "" and 0.5 <= waited_s < 10, (code, waited_s)
    assert err.splitlines()[-1] == (
        f"lrtune: error: job {job.id} is still queued after 0.5 s (it goes on: "
        f"lrtune status {job.id})"
    )
    assert job.status is JobStatus.QUEUED
    for extra, message in (
        (["--timeout", "0"], "--timeout must be > 0 seconds, got 0.0"),
        (["--timeout", "nan"], "--timeout must be > 0 seconds, got nan"),
    ):
        code, out, err = run(capsys, *argv, *extra)
        assert code == 2 and err.strip() == f"lrtune: error: {message}", err
    code, _, err = run(capsys, *argv[:-1], "--timeout", "5")
    assert code == 2 and "give --wait too" in err and len(err.strip().splitlines()) == 1


class NotLrtune(http.server.BaseHTTPRequestHandler):
    """Another HTTP server: HTML for /html/..., JSON of another shape for /json/..."""

    def do_GET(self) -> None:
        html = self.path.startswith("/html/")
        body = b"<html>hello</html>" if html else b'{"data": [{"id": 1}]}'
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if html else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def not_lrtune() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotLrtune)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("html", "/html/v1/jobs answered 200 with no JSON: is http://"),
        ("json", "answered with a JobPage this client cannot read (another lrtune version?): "),
    ],
)
def test_a_server_that_is_not_lrtunes_api_is_one_line(
    capsys: pytest.CaptureFixture[str], prefix: str, expected: str
) -> None:
    with not_lrtune() as url:
        code, out, err = run(capsys, "status", "--url", f"{url}/{prefix}")
    assert (code, out) == (2, "") and len(err.splitlines()) == 1
    assert err.startswith("lrtune: error: ") and expected in err, err
