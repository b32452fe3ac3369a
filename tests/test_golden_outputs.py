"""The CLI's and the HTTP API's outputs are the golden ones in ``tests/golden/``, byte for byte
but for the last digits of trained numbers.

``tests/golden_outputs.py`` runs a fixed set of ``lrtune`` commands (help, find, tune, submit,
a worker, status, recommend, errors) and API requests on one tiny job and normalizes what
changes from run to run. The golden files were captured before the architecture refactor
(issue 16), whose acceptance is that no output changes. When an output is meant to change,
regenerate them deliberately (``python tests/golden_outputs.py capture tests/golden``) and
review the diff.

Trained numbers (losses, metrics, LRs derived from them) differ in their last digits from one
CPU to another (other kernels, other float rounding: an AMD EPYC and an AMX Xeon differ by up to
3e-6 relative on this job), so numbers compare within :data:`REL_TOL`; every other character
must be equal, and so must the count and place of the numbers.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
REL_TOL = 1e-4
"""How far a number may be from its golden value, relative: 30x the spread seen across CPUs."""
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


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
def test_an_output_is_its_golden_but_for_float_rounding(captured: Path, name: str) -> None:
    expected = (GOLDEN / name).read_text(encoding="utf-8")
    path = captured / name
    assert path.exists(), f"{name} was not captured"
    actual = path.read_text(encoding="utf-8")
    if not _same_but_for_float_rounding(actual, expected):
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


def _same_but_for_float_rounding(actual: str, expected: str) -> bool:
    """Whether the texts are equal once each number may be off by :data:`REL_TOL`."""
    if actual == expected:
        return True
    if NUMBER.split(actual) != NUMBER.split(expected):
        return False
    numbers = zip(NUMBER.findall(actual), NUMBER.findall(expected), strict=True)
    return all(
        math.isclose(float(now), float(golden), rel_tol=REL_TOL, abs_tol=1e-12)
        for now, golden in numbers
    )


@pytest.mark.parametrize(
    ("actual", "same"),
    [
        ('{"loss": 1.4501936435699463, "n": 3}', True),  # another CPU's last digits
        ('{"loss": 1.452, "n": 3}', False),  # a change in the numbers (1e-3)
        ('{"loss": 1.4501934051513672, "n": 4}', False),  # an integer is exact to 1e-4 too
        ('{"loss": 1.4501934051513672,"n": 3}', False),  # a character
        ('{"loss": 1.4501934051513672, "n": 3, "m": 1}', False),  # a number more
    ],
)
def test_only_the_last_digits_of_numbers_may_differ(actual: str, same: bool) -> None:
    assert _same_but_for_float_rounding(actual, '{"loss": 1.4501934051513672, "n": 3}') is same
