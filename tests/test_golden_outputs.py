"""The CLI's and the HTTP API's outputs are byte for byte the golden ones in ``tests/golden/``.

``tests/golden_outputs.py`` runs a fixed set of ``lrtune`` commands (help, find, tune, submit,
a worker, status, recommend, errors) and API requests on one tiny job and normalizes what
changes from run to run. The golden files were captured before the architecture refactor
(issue 16), whose acceptance is that no output changes. When an output is meant to change,
regenerate them deliberately (``python tests/golden_outputs.py capture tests/golden``) and
review the diff.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The outputs of the current code, captured in a fresh interpreter (so torch starts on
    one thread, and no other test's state leaks in)."""
    out = tmp_path_factory.mktemp("golden-now")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(HERE / "golden_outputs.py"), "capture", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, f"capture failed:\n{result.stdout}\n{result.stderr}"
    return out


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.glob("*.txt"))


def test_the_same_outputs_are_captured(captured: Path) -> None:
    assert _names(captured) == _names(GOLDEN)


@pytest.mark.parametrize("name", _names(GOLDEN))
def test_an_output_is_byte_identical_to_its_golden(captured: Path, name: str) -> None:
    expected = (GOLDEN / name).read_text(encoding="utf-8")
    path = captured / name
    assert path.exists(), f"{name} was not captured"
    actual = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=f"tests/golden/{name}",
                tofile=f"now/{name}",
            )
        )
        pytest.fail(
            f"{name} differs from its golden file (if the change is meant, regenerate: "
            f"python tests/golden_outputs.py capture tests/golden):\n{diff}",
            pytrace=False,
        )
