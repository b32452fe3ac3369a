"""The ``lrtune`` command behaves as a Unix command: its ``--help`` says what it is in whole
sentences, and a reader that stops early (``lrtune status | head -1``) ends it quietly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lrtune.cli import main

_SCRIPT = Path(sys.executable).with_name("lrtune")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "lrtune.cli"]
SIGPIPE_STATUS = 128 + signal.SIGPIPE
"""What a shell reports for a Unix tool that a closed pipe stopped (141)."""


def test_help_describes_lrtune_in_complete_sentences(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    help_text = capsys.readouterr().out
    description = help_text.split("\n\n")[1]  # after the usage line, before the arguments
    sentences = " ".join(description.split())
    assert "`" not in sentences, sentences  # no reStructuredText markup
    assert re.fullmatch(r"[A-Z].*\.", sentences), sentences  # ends its last sentence
    assert "learning rate" in sentences and "PyTorch" in sentences


@pytest.fixture
def closed_pipe() -> Iterator[int]:
    """The write end of a pipe whose reader has gone (as ``head`` does after its line)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    yield write_end
    os.close(write_end)


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("argv", [["list"], ["list", "--json"], ["--help"]])
def test_a_reader_that_stops_early_ends_the_command_quietly(
    closed_pipe: int, argv: list[str], buffered: bool
) -> None:
    """Whether the write that meets the closed pipe is the command's own (unbuffered) or the
    last flush of what it buffered."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env |= {} if buffered else {"PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [*CLI, *argv], stdout=closed_pipe, stderr=subprocess.PIPE, text=True, env=env, timeout=120
    )
    assert done.stderr == ""  # no "Broken pipe", no "Exception ignored"
    # argparse itself ignores a failed write of the help, and exits 0
    quiet = {0, SIGPIPE_STATUS} if argv == ["--help"] else {SIGPIPE_STATUS}
    assert done.returncode in quiet


def test_a_broken_pipe_mid_output_is_not_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, closed_pipe: int
) -> None:
    """The write that meets the closed pipe happens inside the command (line buffered, as
    when a long listing fills a pipe's buffer): still quiet, and what is written after it
    (the interpreter's last flush) goes nowhere, without an error."""
    with monkeypatch.context() as patched:
        stdout = open(closed_pipe, "w", buffering=1, closefd=False)  # noqa: SIM115
        patched.setattr(sys, "stdout", stdout)
        assert main(["list"]) == SIGPIPE_STATUS
        print("after the reader left")
    assert capsys.readouterr().err == ""
