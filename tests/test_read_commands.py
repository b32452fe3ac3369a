"""A command that reads the job store (or cancels a job in it) never creates one: with no store
where it looks, it says which database it looked for and how to name another, in one line,
exit 2. With one, it says which it read when the default chose it; ``serve`` and the CLI
default to the same database."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runs import run_cli as run

from lrtune.cli import main
from lrtune.jobs.settings import DEFAULT_DATABASE_URL

READ_COMMANDS = [
    ["status"],
    ["status", "3f2a9c1e"],
    ["status", "--json"],
    ["recommend", "3f2a9c1e"],
    ["recommend", "--model", "mlp", "--dataset", "digits"],
    ["cancel", "3f2a9c1e"],
    ["workers"],
    ["workers", "--all", "--json"],
    ["db", "prune", "--older-than", "30d"],
]
JOB = "model: {name: mlp}\ndataset: {name: digits}\n"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory, with no database or API named in the environment."""
    for name in ("LRTUNE_DATABASE_URL", "LRTUNE_URL", "LRTUNE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=" ".join)
def test_a_read_command_creates_no_default_database(
    workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1, err
    assert err.startswith(f"lrtune: error: no job store at {DEFAULT_DATABASE_URL}: "), err
    assert f"{workdir / 'lrtune.db'} does not exist" in err
    assert "--database URL or LRTUNE_DATABASE_URL" in err
    assert list(workdir.iterdir()) == []  # no lrtune.db, no WAL, no lock file


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=" ".join)
def test_a_read_command_creates_no_named_database(
    workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    missing = workdir / "out" / "jobs.db"
    code, _, err = run(capsys, *argv, "--database", f"sqlite:///{missing}")
    assert code == 2 and err.startswith(f"lrtune: error: no job store at sqlite:///{missing}: ")
    assert list(workdir.iterdir()) == []  # not even its folder


def test_the_default_database_is_named_when_it_is_read(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "job.yaml").write_text(JOB)
    note = f"lrtune: job store {DEFAULT_DATABASE_URL}, the default (--database URL or "
    code, out, err = run(capsys, "submit", "job.yaml")  # submit may create the store
    assert code == 0 and err.startswith(note) and (workdir / "lrtune.db").is_file()
    job_id = out.strip()

    code, out, err = run(capsys, "status")
    assert code == 0 and job_id in out and err.startswith(note)
    code, out, err = run(capsys, "workers")
    assert (code, out) == (0, f"no live workers in the job store at {DEFAULT_DATABASE_URL}\n")

    named = f"sqlite:///{workdir / 'named.db'}"
    assert run(capsys, "db", "upgrade", "--database", named)[0] == 0
    code, out, err = run(capsys, "status", "--database", named)
    assert (code, out, err) == (0, f"no jobs in the job store at {named}\n", "")


def test_serve_and_the_cli_default_to_the_same_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lrtune.api.config import ApiSettings
    from lrtune.jobs.settings import StoreSettings

    monkeypatch.delenv("LRTUNE_DATABASE_URL", raising=False)
    assert ApiSettings().database_url == StoreSettings().database_url == DEFAULT_DATABASE_URL
    monkeypatch.setenv("LRTUNE_DATABASE_URL", "sqlite:///elsewhere.db")
    assert ApiSettings.from_env().database_url == "sqlite:///elsewhere.db"
    assert StoreSettings.from_env().database_url == "sqlite:///elsewhere.db"
    for command in ("serve", "status", "submit", "worker", "workers"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert f"(default: $LRTUNE_DATABASE_URL, else {DEFAULT_DATABASE_URL})" in help_text
