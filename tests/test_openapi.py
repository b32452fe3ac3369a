"""The live OpenAPI schema: typed everywhere a model exists, and what the API answers conforms
to it (schemathesis over every operation, on SQLite and PostgreSQL).

The schemathesis run is bounded so that it stays in ``make test`` (about 40 s a database): a
few examples per operation, derandomized (the same cases every run), against a uvicorn server
on 127.0.0.1 whose jobs stay queued (no worker runs them; the run cancels and deletes some).
The SSE stream of a queued job never ends, so schemathesis reads its first event, or a second
of it, and closes it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_api import serve

from lrtune.api import ApiSettings, create_app

TOKEN = "schemathesis-t0ken"

# Free-form JSON by design, each for its reason; everything else has a model.
FREE_FORM = {
    # A factory's params: its own JSON schema (GET /v1/models, /v1/datasets) checks them, and a
    # plugin's are checked only where it is installed.
    "components/schemas/ModelRef/properties/params",
    "components/schemas/DatasetRef/properties/params",
    # A task's params: the task's factory checks them on the machine that runs it; the JSON
    # schema a worker publishes of them is itself free-form JSON, as a registry entry's is.
    "components/schemas/TaskRef/properties/params",
    "components/schemas/TaskInfo/properties/params_schema/anyOf/0",
    # A JSON Schema document (a factory's params schema) is itself free-form JSON: in the
    # registry's list and in the registry each worker serves (GET /v1/workers).
    "components/schemas/RegistryEntry/properties/params_schema/anyOf/0",
    "components/schemas/PluginRegistry/properties/models/additionalProperties/anyOf/0",
    "components/schemas/PluginRegistry/properties/datasets/additionalProperties/anyOf/0",
    # A job event's payload depends on its kind, and workers append kinds of their own.
    "paths//v1/jobs/{job_id}/events/get/responses/200/content/text/event-stream/itemSchema/"
    "properties/data/contentSchema/anyOf/0/properties/payload",
}
_DATA_KEYS = {"example", "examples", "default", "const", "enum"}  # values, not schemas
_TYPED_BY = {"type", "$ref", "anyOf", "oneOf", "allOf", "const", "enum"}


def untyped_schemas(node: Any, path: str = "") -> Iterator[str]:
    """The paths of the schemas under ``node`` that say nothing of their content: an object
    without properties, additional properties of any type, a property, item or variant that
    has no type."""
    if isinstance(node, list):
        for index, value in enumerate(node):
            yield from untyped_schemas(value, f"{path}/{index}")
        return
    if not isinstance(node, dict):
        return
    extra = node.get("additionalProperties")
    if (node.get("type") == "object" and not node.get("properties") and extra in (None, True)) or (
        extra is True or extra == {}
    ):
        yield path.lstrip("/")
    children = [*node.get("properties", {}).values(), node.get("items"), extra]
    children += [*node.get("anyOf", []), *node.get("oneOf", []), *node.get("prefixItems", [])]
    if any(isinstance(child, dict) and not _TYPED_BY & child.keys() for child in children):
        yield f"{path.lstrip('/')} (a member without a type)"
    for key, value in node.items():
        if key not in _DATA_KEYS:
            yield from untyped_schemas(value, f"{path}/{key}")


def test_the_openapi_schema_types_everything_but_the_free_form_json(tmp_path: Path) -> None:
    schema = create_app(ApiSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}")).openapi()
    found = set(untyped_schemas(schema))
    assert found == FREE_FORM, found ^ FREE_FORM  # an entry gone from the schema goes here too
    config = schema["components"]["schemas"]["RangeTestConfig"]
    assert set(config["required"]) == set(config["properties"])  # each one is always there


def test_the_walk_finds_an_untyped_result() -> None:
    schema = {
        "components": {
            "schemas": {
                "A": {"type": "object", "properties": {"x": {}, "y": {"type": "object"}}},
                "B": {"type": "object", "additionalProperties": True, "example": {"type": "x"}},
            }
        }
    }
    assert set(untyped_schemas(schema)) == {
        "components/schemas/A (a member without a type)",
        "components/schemas/A/properties/y",
        "components/schemas/B",
    }


SCHEMATHESIS_CONFIG = f"""\
workers = 1
request-timeout = 60  # a schedule preview may import torch first
headers = {{ Authorization = "Bearer {TOKEN}" }}

[[operations]]
include-path-regex = "/events$"
# A queued job's stream never ends: keep its first event, or what came within a second (none
# when resumed past its last event), then close it.
max-stream-events = 1
request-timeout = 1

[generation]
max-examples = 8
deterministic = true  # the same cases every run (a seed would be ignored)

[checks]
enabled = false
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_schema_conformance.enabled = true
ignored_auth.enabled = true  # a write without the token, or with a wrong one, is refused
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(
    jobs_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    app = create_app(ApiSettings(database_url=jobs_url, api_token=TOKEN))
    cli = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run"]
    with serve(app) as url:
        run = subprocess.run(
            [*cli, f"{url}/openapi.json", "--no-color", "--report-dir", str(tmp_path / "report")],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=280,
        )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    operations = sum(len(methods) for methods in app.openapi()["paths"].values())
    assert f"Tested: {operations}" in run.stdout, run.stdout[-5000:]  # every one of them
