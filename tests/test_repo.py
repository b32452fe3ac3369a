"""Consistency of what cannot run here (Docker) and of the documented entry points."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from lrtune.spec import JobSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "examples").iterdir()), ids=lambda p: p.name)
def test_example_jobs_are_valid_specs(path: Path) -> None:
    JobSpec.from_file(path)


def test_compose_services_are_consistent() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    postgres = services["postgres"]["environment"]
    for name, service in services.items():
        if "build" in service:
            context = ROOT / (service["build"] if isinstance(service["build"], str) else ".")
            assert (context / "Dockerfile").exists(), name
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            named = volume.split(":")[0]
            if not named.startswith((".", "/")):
                assert named in compose.get("volumes", {}), f"undeclared volume {named}"
    command = services["tune"]["command"]
    assert command[0] == "tune"
    JobSpec.from_file(ROOT / command[1])
    url = make_url(command[command.index("--storage") + 1])
    assert url.host == "postgres" and url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"]
    assert url.database == postgres["POSTGRES_DB"]


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
    assert install < makefile.index("-e '.[dev,bench]'")
