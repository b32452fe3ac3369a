"""DNS rebinding: a loopback API with no token answers only for its own names.

A page on ``attacker.example``, which the attacker's DNS then points at 127.0.0.1, reaches
the loopback API as a same-origin page of ``attacker.example``: the browser sends that name in
``Host`` (and ``Origin``), and ``Sec-Fetch-Site: same-origin``. The API refuses any ``Host``
it does not answer for, and any write from an ``Origin`` on another host; ``Location`` never
echoes a host.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_api import serve

from lrtune.api import ApiSettings, create_app
from lrtune.jobs import JobStore, upgrade

MINIMAL = {"model": {"name": "logreg"}, "dataset": {"name": "wine"}}
REBOUND = {"Host": "attacker.example:8813", "Sec-Fetch-Site": "same-origin"}

Start = Callable[..., httpx.Client]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start an API on a fresh SQLite store with the given settings fields; its client."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    with contextlib.ExitStack() as stack:

        def start(**fields: Any) -> httpx.Client:
            base = stack.enter_context(serve(create_app(ApiSettings(database_url=url, **fields))))
            return stack.enter_context(httpx.Client(base_url=base, timeout=60))

        yield start


def test_a_rebound_page_can_neither_write_nor_read_a_loopback_api(
    start: Start, tmp_path: Path
) -> None:
    api = start()
    for method, path, body in [
        ("POST", "/v1/jobs", MINIMAL),
        ("GET", "/v1/jobs", None),
        ("GET", "/dashboard/api/studies", None),  # optuna-dashboard's API
        ("GET", "/metrics", None),
    ]:
        response = api.request(method, path, json=body, headers=REBOUND)
        assert response.status_code == 400, (path, response.text)
        detail = response.json()["detail"]
        assert "'attacker.example:8813'" in detail and "LRTUNE_ALLOWED_HOSTS" in detail
    assert JobStore(f"sqlite:///{tmp_path / 'jobs.db'}").count() == 0


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "LocalHost", "[::1]"])
def test_the_loopback_names_are_answered(start: Start, name: str) -> None:
    api = start()
    port = api.base_url.port
    assert api.get("/v1/jobs", headers={"Host": f"{name}:{port}"}).status_code == 200


def test_a_write_from_a_page_on_another_host_is_403(start: Start) -> None:
    api = start()
    port = api.base_url.port
    for origin in ("http://attacker.example:8813", "null"):
        refused = api.post("/v1/jobs", json=MINIMAL, headers={"Origin": origin})
        assert refused.status_code == 403, refused.text
        assert "own pages only" in refused.json()["detail"]
    own = api.post("/v1/jobs", json=MINIMAL, headers={"Origin": f"http://localhost:{port}"})
    assert own.status_code == 201, own.text


def test_location_names_no_host(start: Start) -> None:
    api = start(allowed_hosts="*")  # any Host passes: Location still does not echo it
    created = api.post("/v1/jobs", json=MINIMAL, headers={"Host": "attacker.example"})
    assert created.status_code == 201, created.text
    assert created.headers["location"] == f"/v1/jobs/{created.json()['id']}"
    assert api.get(created.headers["location"]).json()["id"] == created.json()["id"]


def test_allowed_hosts_come_from_the_environment(
    start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LRTUNE_ALLOWED_HOSTS", "lrtune.example.com, *.corp")
    api = start(**ApiSettings.from_env().model_dump(include={"allowed_hosts"}))
    assert api.get("/v1/jobs", headers={"Host": "lrtune.example.com"}).status_code == 200
    assert api.get("/v1/jobs", headers={"Host": "api.team.corp:8000"}).status_code == 200
    assert api.get("/v1/jobs", headers={"Host": "127.0.0.1"}).status_code == 400
    monkeypatch.setenv("LRTUNE_ALLOWED_HOSTS", " , ")
    with pytest.raises(ValueError, match="LRTUNE_ALLOWED_HOSTS"):
        ApiSettings.from_env()


def test_a_non_loopback_bind_answers_any_host_behind_its_token(start: Start) -> None:
    api = start(host="0.0.0.0", api_token="s3cret")
    headers = {"Host": "lrtune.internal:8000"}
    assert api.get("/healthz", headers=headers).status_code == 200
    assert api.post("/v1/jobs", json=MINIMAL, headers=headers).status_code == 401
