"""Consistency of what cannot run here (Docker) and of the documented entry points."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lrtune.spec import JobSpec

ROOT = Path(__file__).resolve().parents[1]


JOB_FILES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in {".yaml", ".json"})


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_example_jobs_are_valid_specs(path: Path) -> None:
    JobSpec.from_file(path)


def test_dockerfile_copies_what_exists_and_pins_torch_first() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert dockerfile.index("torch==2.13.0") < dockerfile.index("'.[postgres]'")


def test_readme_commands_are_make_targets_and_ci_runs_the_test_one() -> None:
    makefile = (ROOT / "Makefile").read_text()
    readme = (ROOT / "README.md").read_text()
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), target
        assert f"make {target}" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    install = makefile.index("-c constraints.txt torch==2.13.0")
    assert install < makefile.index("-e '.[dev,bench,lightning,hf,ray]'")
