"""What installing lrtune puts in site-packages: the one top-level package ``lrtune``."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Repo folder -> the package it installs as.
INSTALLED_AS = {"lrtune": "lrtune", "api": "lrtune/api", "workers": "lrtune/workers"}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the build reads, so that building leaves no build/ in the repo."""
    copy = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, copy / name)
    for folder in INSTALLED_AS:
        shutil.copytree(REPO / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _pip(*args: str, cwd: Path) -> str:
    """Run pip; return what it printed (pip passes the build backend's warnings on, -q or not)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--no-deps", "--no-build-isolation", "-q"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def _backend_warnings(printed: str) -> list[str]:
    """The build backend's warnings in pip's output, e.g. setuptools' "Package
    'lrtune.api.static' is absent from the `packages` configuration" for a data folder that
    pyproject.toml does not declare as a package."""
    return [
        line.strip()
        for line in printed.splitlines()
        if "Warning:" in line or "absent from the `packages`" in line
    ]


def _expected_modules() -> set[str]:
    """Every .py file of the repo's package folders, at the path it must have in the wheel."""
    expected = set()
    for folder, installed in INSTALLED_AS.items():
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                expected.add(f"{installed}/{path.relative_to(REPO / folder).as_posix()}")
    return expected


def test_the_wheel_installs_only_lrtune_with_api_workers_and_migrations_inside(
    source: Path, tmp_path: Path
) -> None:
    printed = _pip("wheel", ".", "-w", str(tmp_path), cwd=source)
    assert _backend_warnings(printed) == [], printed  # every package and data folder declared
    (wheel,) = tmp_path.glob("lrtune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {
        name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")
    }
    assert top_level == {"lrtune"}
    assert {"lrtune/api/__init__.py", "lrtune/workers/__init__.py"} <= set(names)
    assert {"lrtune/jobs/migrations/env.py", "lrtune/jobs/migrations/script.py.mako"} <= set(names)
    assert _expected_modules() <= set(names)  # every package listed in pyproject.toml
    assert _dashboard_assets() <= set(names)  # package data: pages, scripts, vendored uPlot
    assert "lrtune/api/static/vendor/uplot/LICENSE" in names


def _dashboard_assets() -> set[str]:
    """Every file of the dashboard's static folder, at its path in the wheel."""
    static = REPO / "api" / "static"
    return {
        f"lrtune/api/static/{path.relative_to(static).as_posix()}"
        for path in static.rglob("*")
        if path.is_file()
    }


def test_an_editable_install_maps_api_and_workers_under_lrtune(
    source: Path, tmp_path: Path
) -> None:
    # --ignore-installed: without it pip uninstalls the running environment's lrtune first.
    printed = _pip(
        "install", "-e", ".", "--prefix", str(tmp_path), "--ignore-installed", cwd=source
    )
    # setuptools' one note on every editable install that maps folders (api/ -> lrtune.api)
    # through its import finder is information, not a warning about this project's config.
    warnings = [w for w in _backend_warnings(printed) if "Editable installation." not in w]
    assert warnings == [], printed
    (site,) = tmp_path.glob("lib/python*/site-packages")
    # The running environment has its own editable lrtune; read what this install maps instead
    # of importing through it: setuptools' finder module holds the package -> folder mapping.
    (finder,) = site.glob("__editable___lrtune*_finder.py")
    tree = ast.parse(finder.read_text())
    mapping = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign | ast.Assign)
        and "MAPPING" in {t.id for t in ast.walk(node) if isinstance(t, ast.Name)}
        and isinstance(node.value, ast.Dict)
    )
    assert {name.split(".")[0] for name in mapping} == {"lrtune"}, mapping
    assert Path(mapping["lrtune.api"]) == source / "api"
    assert Path(mapping["lrtune.workers"]) == source / "workers"
