"""lrtune.client.Client against a live uvicorn serving the API, with a real worker process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_api import serve
from test_imports import heavy_modules_after

from lrtune.api import ApiSettings, create_app
from lrtune.client import Client, Unauthorized
from lrtune.exceptions import ConflictError, InvalidInputError, NotFoundError
from lrtune.jobs import JobStatus, JobStore, upgrade

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model": {"name": "logreg"},
    "dataset": {"name": "wine"},
    "batch_size": 32,
    "range_test": {"seeds": 2, "num_iter": 40},
    "search": {"n_trials": 2, "epochs": 2, "families": ["cosine"], "confirm_seeds": 1},
}
TOKEN = "client-test-token"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    return url


@pytest.fixture
def server(sqlite_url: str) -> Iterator[str]:
    with serve(create_app(ApiSettings(database_url=sqlite_url, api_token=TOKEN))) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[Client]:
    with Client(server, token=TOKEN) as client:
        yield client


def test_submit_wait_trials_and_recommendation_through_the_api_with_a_real_worker(
    client: Client, server: str, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = client.submit(TINY, name="client-e2e")
    assert (job.status, job.name) == (JobStatus.QUEUED, "client-e2e")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LRTUNE_TORCH_THREADS": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "lrtune.cli", "worker", "--database", sqlite_url, "--once"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        done = client.wait(job.id, timeout_s=240, poll_s=0.2, progress=True)
    finally:
        _, err = worker.communicate(timeout=240)
    assert done.status is JobStatus.SUCCEEDED, (done.error, err)
    assert done.progress.trials_done == 2
    stored = client.recommendation(job.id)
    assert stored.job_id == job.id and stored.fingerprint == job.fingerprint
    rec = stored.recommendation  # a cosine finalist, or a baseline that beat it
    assert ("lr_scheduler.CosineAnnealingLR" in rec.to_code()) == (
        rec.best.schedule.family == "cosine"
    )
    trials = client.trials(job.id)
    search = [t for t in trials if t.kind == "search"]
    assert [t.number for t in search] == [0, 1] and {t.family for t in search} == {"cosine"}
    assert all(t.state in ("COMPLETE", "PRUNED") and t.epochs and t.lr_steps for t in search)
    confirmation = [t for t in trials if t.kind == "confirmation"]
    assert confirmation and all(t.candidate and t.seed is not None for t in confirmation)
    assert trials == sorted(trials, key=lambda t: t.kind != "search")  # search runs first
    csv_rows = httpx.get(
        f"{server}/v1/jobs/{job.id}/trials.csv", headers={"Authorization": f"Bearer {TOKEN}"}
    ).text.splitlines()
    assert len(csv_rows) == 1 + len(trials)  # the same list as the CSV export
    found = client.find_recommendation(model="logreg", dataset="wine", batch_size=32)
    assert (found.match, found.stored.job_id) == ("fingerprint", job.id)
    near = client.find_recommendation(model="logreg", dataset="wine")  # batch size 64
    assert (near.match, near.differs) == ("names", ["batch_size"])
    bar = capsys.readouterr().err
    assert f"job {job.id[:8]}" in bar and "succeeded" in bar


def test_error_responses_come_back_as_lrtune_exceptions_with_the_servers_message(
    client: Client, server: str
) -> None:
    with pytest.raises(InvalidInputError, match=r"HTTP 422: unknown model 'resnet'.*body\.model"):
        client.submit({"model": {"name": "resnet"}, "dataset": {"name": "wine"}})
    with pytest.raises(NotFoundError, match="HTTP 404: no job 'nope'"):
        client.get("nope")
    with pytest.raises(NotFoundError, match="HTTP 404: no job 'nope'"):
        client.trials("nope")
    job = client.cancel(client.submit(TINY).id)
    with pytest.raises(ConflictError, match="already cancelled"):
        client.cancel(job.id)
    with pytest.raises(NotFoundError, match="has no recommendation: it is cancelled"):
        client.recommendation(job.id)
    with Client(server, token="wrong") as intruder, pytest.raises(Unauthorized):
        intruder.submit(TINY)
    with pytest.raises(NotFoundError, match="submit one"):
        client.find_recommendation(model="mlp", dataset="digits")
    assert TOKEN not in repr(client)
    assert [j.id for j in client.list_jobs(status="cancelled").data] == [job.id]


def test_wait_gives_up_after_its_timeout(client: Client) -> None:
    job = client.submit(TINY)
    with pytest.raises(TimeoutError, match="still queued"):
        client.wait(job.id, timeout_s=0.3, poll_s=0.1, progress=False)


def test_the_client_loads_no_heavy_package(server: str, sqlite_url: str) -> None:
    code = f"""
        from lrtune.client import Client
        with Client({server!r}, token={TOKEN!r}) as client:
            job = client.submit({TINY!r})
            assert client.get(job.id).status.value == "queued"
            assert client.list_jobs().data[0].id == job.id
            assert client.trials(job.id) == []
    """
    assert heavy_modules_after(code) == []
    assert JobStore(sqlite_url).list_jobs().data[0].spec.model.name == "logreg"


def test_the_client_reads_a_range_test_in_the_clones_parent(
    client: Client, server: str, tmp_path: Path
) -> None:
    # A folder named lrtune in the working directory (the clone's parent) is on sys.path before
    # an editable install's package: the client must not need the server's modules from it.
    (tmp_path / "lrtune").symlink_to(REPO)
    job = client.submit(TINY)
    code = (
        "import sys; from lrtune.client import Client; "
        "print(Client(sys.argv[1], token=sys.argv[2]).finder(sys.argv[3]).status)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, server, TOKEN, job.id],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (0, "queued\n"), done.stderr
