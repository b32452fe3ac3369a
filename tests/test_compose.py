"""docker-compose.yml checked against the code (no Docker engine here): every command is an
``lrtune`` subcommand the CLI accepts, every ``LRTUNE_*`` variable is a settings field, the
API's port and healthcheck match the app, and each worker reserves a GPU and says how to get
the CUDA build of torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from lrtune.api.config import ApiSettings
from lrtune.cli.parser import build_parser
from lrtune.jobs.settings import StoreSettings

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
OURS = {name: s for name, s in SERVICES.items() if "build" in s}  # the lrtune image
WORKERS = {name: s for name, s in OURS.items() if s["command"][0] == "worker"}
SETTINGS = {
    f"LRTUNE_{field.upper()}" for cls in (StoreSettings, ApiSettings) for field in cls.model_fields
}


def interpolated(value: str) -> str:
    """``value`` as compose reads it with nothing set: ``${X:-d}`` is ``d``."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_the_fleet_has_its_services() -> None:
    assert {"postgres", "migrate", "api"} <= set(SERVICES)
    assert len(WORKERS) >= 2, "one worker service per GPU"
    for name, service in OURS.items():
        build = service["build"]
        context = ROOT / (build if isinstance(build, str) else build["context"])
        assert (context / "Dockerfile").exists(), name


@pytest.mark.parametrize("name", sorted(OURS))
def test_commands_are_lrtune_subcommands(name: str) -> None:
    command = [str(part) for part in OURS[name]["command"]]
    args = build_parser().parse_args(command)  # exits 2 on an unknown command or option
    assert callable(args.run)


@pytest.mark.parametrize("name", sorted(OURS))
def test_environment_variables_are_settings_fields(name: str) -> None:
    environment = OURS[name].get("environment", {})
    assert isinstance(environment, dict), "a mapping, so that names can be checked"
    for variable in environment:
        if variable.startswith("LRTUNE_"):
            assert variable in SETTINGS, f"{name}: {variable} is read by no Settings field"
        else:
            assert variable == "CUDA_VISIBLE_DEVICES", f"{name}: unexpected {variable}"
    url = make_url(interpolated(environment["LRTUNE_DATABASE_URL"]))
    postgres = SERVICES["postgres"]["environment"]
    assert url.drivername == "postgresql+psycopg" and url.host == "postgres"
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == interpolated(postgres["POSTGRES_PASSWORD"])
    assert url.database == postgres["POSTGRES_DB"]


def test_postgres_has_a_volume_and_a_healthcheck() -> None:
    postgres = SERVICES["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    named = [volume.split(":")[0] for volume in postgres["volumes"]]
    assert named and all(volume in COMPOSE["volumes"] for volume in named)


def test_the_migration_runs_once_before_the_api_and_workers() -> None:
    migrate = SERVICES["migrate"]
    assert migrate["command"] == ["db", "upgrade"] and migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ["api", *WORKERS]:
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    for name, service in SERVICES.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"


def test_the_api_serves_without_a_worker_on_its_published_port_with_a_token(tmp_path) -> None:
    api = SERVICES["api"]
    command = [str(part) for part in api["command"]]
    args = build_parser().parse_args(command)
    assert args.no_worker and args.host == "0.0.0.0"
    published = [str(mapping).rsplit(":", 1)[1] for mapping in api["ports"]]
    assert published == [str(args.port)]
    assert all(str(mapping).startswith("127.0.0.1:") for mapping in api["ports"])
    # Required, not defaulted: compose refuses to start without it, as the API would.
    assert re.fullmatch(r"\$\{LRTUNE_API_TOKEN:\?[^}]+\}", api["environment"]["LRTUNE_API_TOKEN"])
    probe = " ".join(api["healthcheck"]["test"])
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", probe)
    assert match and match.group(1) == str(args.port)
    from lrtune.api import create_app

    app = create_app(ApiSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}"))
    assert match.group(2) in app.openapi()["paths"]


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_each_worker_reserves_one_gpu_and_uses_it(name: str) -> None:
    worker = WORKERS[name]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and "gpu" in devices[0]["capabilities"]
    assert devices[0]["driver"] == "nvidia" and len(devices[0]["device_ids"]) == 1
    assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "0"  # its one device, in there
    args = build_parser().parse_args([str(part) for part in worker["command"]])
    assert args.device == "cuda:0" and args.threads >= 1
    assert worker["stop_signal"] == "SIGTERM"


def test_workers_have_distinct_gpus() -> None:
    ids = [
        w["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"][0]
        for w in WORKERS.values()
    ]
    assert len(set(ids)) == len(ids)


def test_the_worker_image_is_the_cuda_build_and_says_so() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cpu_index = re.search(r"^ARG TORCH_INDEX_URL=(\S+)$", dockerfile, re.M)
    assert cpu_index and cpu_index.group(1).endswith("/whl/cpu")  # the default: CPU torch
    assert '--index-url "$TORCH_INDEX_URL"' in dockerfile
    for name, worker in WORKERS.items():
        index = interpolated(worker["build"]["args"]["TORCH_INDEX_URL"])
        assert index != cpu_index.group(1), f"{name} would get the CPU torch"
    assert "CUDA note:" in TEXT and "NVIDIA Container Toolkit" in TEXT


def test_optuna_dashboard_is_the_apis_behind_its_token_and_no_open_server(tmp_path) -> None:
    """optuna-dashboard's own server has no auth: compose runs none, the API serves it."""
    for name, service in SERVICES.items():
        image = str(service.get("image", "")) + " " + " ".join(map(str, service.get("command", [])))
        assert "optuna-dashboard" not in image and "optuna_dashboard" not in image, name
    api = SERVICES["api"]
    enabled = ApiSettings.model_validate(
        {"optuna_dashboard": api["environment"].get("LRTUNE_OPTUNA_DASHBOARD", "true")}
    )
    assert enabled.optuna_dashboard and "/dashboard" in TEXT and "/login" in TEXT
    from fastapi.testclient import TestClient

    from lrtune.api import create_app

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    settings = ApiSettings(database_url=url, api_token="compose-t0ken", optuna_dashboard=True)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as http:
        assert http.get("/api/studies").status_code == 401  # the token, as compose's API has
