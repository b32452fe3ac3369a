"""Running ``lrtune`` commands in the test's own process, as a user's shell would see them."""

from __future__ import annotations

import pytest

from lrtune.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``lrtune *argv`` in this process: its exit status (a ``SystemExit``'s too), stdout and
    stderr."""
    try:
        code = main(list(argv))
    except SystemExit as exit:
        code = int(exit.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
