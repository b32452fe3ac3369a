"""The ``lrtune`` command behaves as a Unix command: its ``--help`` says what it is in whole
sentences."""

from __future__ import annotations

import re

import pytest

from lrtune.cli import main


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
