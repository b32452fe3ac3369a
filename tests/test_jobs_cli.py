"""``lrtune db upgrade``, ``submit``, ``status``, ``cancel`` and ``recommend`` against a real job
store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runs import run_cli as run
from live_api import finish_with
from small_jobs import small_job

from lrtune.jobs import JobStatus, JobStore, StoredRecommendation
from lrtune.jobs.revision import current_revision, head_revision
from lrtune.recommendation import Recommendation

JOB = "name: digits-mlp\nmodel: {name: mlp}\ndataset: {name: digits}\n"


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(JOB)
    return path


def test_db_upgrade_then_submit_then_status(
    tmp_path: Path, job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    code, out, _ = run(capsys, "db", "upgrade", "--database", url)
    assert code == 0 and f"at revision {head_revision()}" in out
    assert current_revision(url) == head_revision()

    code, out, _ = run(capsys, "submit", str(job_file), "--database", url)
    job_id = out.strip()
    assert code == 0 and JobStore(url).get(job_id).status is JobStatus.QUEUED
    run(capsys, "submit", str(job_file), "--database", url, "--name", "second")

    code, out, _ = run(capsys, "status", job_id, "--database", url)
    assert code == 0
    assert out.startswith(f"job {job_id} (digits-mlp): queued\nmodel mlp, dataset digits")

    code, out, _ = run(capsys, "status", "--database", url)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == [
        "id",
        "name",
        "status",
        "submitted",
        "(UTC)",
        "trials",
    ]
    assert [line.split()[1] for line in lines[1:]] == ["second", "digits-mlp"]  # newest first

    code, out, _ = run(capsys, "status", "--database", url, "--json", "--limit", "1")
    page = json.loads(out)
    assert [job["name"] for job in page["data"]] == ["second"] and page["next_after"]


def test_the_database_defaults_to_the_environment(
    tmp_path: Path, job_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    url = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("LRTUNE_DATABASE_URL", url)
    code, out, _ = run(capsys, "submit", str(job_file))
    assert code == 0 and JobStore(url).get(out.strip()).name == "digits-mlp"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status", "no-such-job", "--database", "{db}"], "no job 'no-such-job' in the job store"),
        (
            ["status", "--database", "postgresql+psycopg://u:pw-123@127.0.0.1:1/x"],
            "job store unavailable at postgresql+psycopg://u:***@127.0.0.1:1/x",
        ),
        (["db", "upgrade", "--database", "nonsense"], "invalid storage URL 'nonsense'"),
        (["submit", "{tmp}/missing.yaml", "--database", "{db}"], "missing.yaml: No such file"),
        (["submit", "{tmp}/bad.yaml", "--database", "{db}"], "invalid job: model="),
        (["db"], "the following arguments are required: action"),
    ],
)
def test_store_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    (tmp_path / "bad.yaml").write_text("dataset: {name: digits}\n")
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    JobStore(db)  # an empty store: a read command does not create one
    argv = [arg.format(db=db, tmp=tmp_path) for arg in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("lrtune: error: ") and expected in err, err
    assert len(err.splitlines()) == 1 and "pw-123" not in err


def test_cancel_stops_a_queued_job_and_refuses_a_finished_one(
    tmp_path: Path, job_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    _, out, _ = run(capsys, "submit", str(job_file), "--database", url)
    job_id = out.strip()

    code, out, _ = run(capsys, "cancel", job_id, "--database", url)
    assert (code, out) == (0, f"job {job_id} cancelled\n")
    assert JobStore(url).get(job_id).status is JobStatus.CANCELLED

    code, out, err = run(capsys, "cancel", job_id, "--database", url)
    assert code == 2 and out == ""
    assert err == (
        f"lrtune: error: job {job_id} is already cancelled: only an unfinished job can be "
        "cancelled\n"
    )
    code, _, err = run(capsys, "cancel", "no-such-job", "--database", url)
    assert code == 2 and err.count("\n") == 1 and "no job 'no-such-job'" in err


def test_recommend_epochs_writes_the_snippet_for_the_users_run(
    store: JobStore,
    jobs_url: str,
    onecycle_recommendation: Recommendation,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A onecycle tuned for 6 epochs, asked for 8: the report's snippet is written for 8 and
    says what it was tuned for; --json carries the same snippet."""
    rec = onecycle_recommendation
    job = finish_with(store, small_job(), rec)
    tuned = f"tuned for 6 epochs of {rec.steps_per_epoch} steps"
    code, out, err = run(capsys, "recommend", job.id, "--database", jobs_url, "--epochs", "8")
    assert (code, err) == (0, "")
    assert f"\n# paste into your training script (epochs = 8; {tuned}):\n" in out
    assert out.endswith("\n" + rec.to_code(epochs=8) + "\n")
    assert f"\nepochs = 8  # {tuned}; set your own\n" in out
    code, out, _ = run(
        capsys, "recommend", job.id, "--database", jobs_url,
        "--epochs", "8", "--steps-per-epoch", "20", "--json",
    )  # fmt: skip
    served = StoredRecommendation.model_validate_json(out)  # the code is derived: recomputed
    assert code == 0 and served.recommendation == rec
    assert json.loads(out)["recommendation"]["code"] == rec.to_code(epochs=8, steps_per_epoch=20)
    _, as_tuned, _ = run(capsys, "recommend", job.id, "--database", jobs_url)
    assert f"\nepochs = 6  # {tuned}; set your own\n" in as_tuned


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--epochs", "0"], "argument --epochs: must be a whole number from 1 to 100000, got '0'"),
        (["--epochs", "eight"], "argument --epochs: must be a whole number from 1 to 100000"),
        (["--epochs", "2.5"], "argument --epochs: must be a whole number from 1 to 100000"),
        (["--epochs", "100001"], "argument --epochs: must be a whole number from 1 to 100000"),
        (
            ["--epochs", "8", "--steps-per-epoch", "-1"],
            "argument --steps-per-epoch: must be a whole number from 1 to 10000000, got '-1'",
        ),
    ],
)
def test_recommend_refuses_a_run_length_that_is_no_count_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    code, out, err = run(capsys, "recommend", "some-job", "--database", url, *argv)
    assert (code, out) == (2, "") and err.count("\n") == 1 and expected in err, err


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_worker_refuses_an_artifact_dir_that_is_a_file_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    a_file = tmp_path / "artifacts"
    a_file.write_text("not a folder")
    argv = ["worker", "--database", url, "--once", "--wait-for-db", "0"]
    if how == "option":
        argv += ["--artifact-dir", str(a_file)]
    else:
        monkeypatch.setenv("LRTUNE_ARTIFACT_DIR", str(a_file))
    code, out, err = run(capsys, *argv)
    name = "--artifact-dir" if how == "option" else "LRTUNE_ARTIFACT_DIR"
    assert (code, out) == (2, "")
    reason = "cannot create directory: a regular file is in the way"
    assert err == f"lrtune: error: {name} {a_file}: {reason}\n"
