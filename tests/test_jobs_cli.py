"""``lrtune db upgrade``, ``lrtune submit`` and ``lrtune status`` against a real job store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lrtune.cli import main
from lrtune.jobs import JobStatus, JobStore
from lrtune.jobs.schema import current_revision, head_revision

JOB = "name: digits-mlp\nmodel: {name: mlp}\ndataset: {name: digits}\n"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit:
        code = int(exit.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


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
