"""``GET /v1/workers``, and ``lrtune workers`` and ``lrtune list`` through the API's ``--url``:
the same workers and names as from the job store, behind the token where reads need it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from cli_runs import run_cli as run
from live_api import serve
from small_jobs import small_job

from lrtune.api import ApiSettings, create_app
from lrtune.jobs import JobStore, PluginRegistry, WorkerActivity, WorkerRegistration
from lrtune.jobs.records import WorkerList
from lrtune.registry import dataset_names, model_names

TOKEN = "w0rkers-t0ken"


def registration(worker_id: str, registry: PluginRegistry | None = None) -> WorkerRegistration:
    return WorkerRegistration(
        id=worker_id,
        host="gpu-7",
        device="cuda:0",
        pid=4242,
        version="0.1",
        heartbeat_s=10,
        plugin_registry=registry or PluginRegistry(),
    )


@pytest.fixture
def fleet(store: JobStore) -> JobStore:
    """A live worker that holds a job and serves a plugin of its own, and a stopped one."""
    job = store.submit(small_job())
    plugins = PluginRegistry(models={"plugin-net": None}, datasets={"plugin-data": None})
    store.register_worker(registration("live-1", plugins))
    store.beat("live-1", [WorkerActivity(job_id=job.id, phase="searching", lease=False)])
    store.register_worker(registration("gone-2"))
    store.stop_worker("gone-2")
    return store


@pytest.fixture
def api_url(fleet: JobStore) -> Iterator[str]:
    with serve(create_app(ApiSettings(database_url=fleet.url))) as url:
        yield url


def test_get_workers_lists_the_live_ones_or_all(fleet: JobStore, api_url: str) -> None:
    with httpx.Client(base_url=api_url, timeout=60) as api:
        live = api.get("/v1/workers")
        assert live.status_code == 200
        assert [w.id for w in WorkerList.model_validate(live.json()).data] == ["live-1"]
        assert live.json()["data"][0]["activity"][0]["phase"] == "searching"
        every = WorkerList.model_validate(api.get("/v1/workers", params={"all": "true"}).json())
        assert {w.id: w.live for w in every.data} == {"live-1": True, "gone-2": False}
        assert api.get("/v1/workers", params={"all": "maybe"}).status_code == 422


def test_get_workers_needs_the_token_when_reads_do(fleet: JobStore) -> None:
    settings = ApiSettings(database_url=fleet.url, api_token=TOKEN, api_token_for_reads=True)
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=60) as api:
        assert api.get("/v1/workers").status_code == 401
        authorized = api.get("/v1/workers", headers={"Authorization": f"Bearer {TOKEN}"})
        assert authorized.status_code == 200 and len(authorized.json()["data"]) == 1


def _without_ages(text: str) -> str:
    """A heartbeat's age moves on between two reads."""
    text = re.sub(r"\d+\.\d+s ago", "Xs ago", text)
    return re.sub(r'"heartbeat_age_s":[0-9.e-]+', '"heartbeat_age_s":0', text)


@pytest.mark.parametrize("argv", [[], ["--all"], ["--json"], ["--all", "--json"]])
def test_lrtune_workers_prints_the_same_through_the_api(
    fleet: JobStore, api_url: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, from_store, err = run(capsys, "workers", *argv, "--database", fleet.url)
    assert (code, err) == (0, "") and "live-1" in from_store
    code, through_api, err = run(capsys, "workers", *argv, "--url", api_url)
    assert (code, err) == (0, "")
    assert _without_ages(through_api) == _without_ages(from_store)


def test_lrtune_workers_through_the_api_says_where_it_found_none(
    store: JobStore, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve(create_app(ApiSettings(database_url=store.url))) as url:
        code, out, _ = run(capsys, "workers", "--url", url)
    assert (code, out) == (0, f"no live workers in the lrtune API at {url}\n")


def test_lrtune_list_through_the_api_names_the_workers_plugins_too(
    api_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "list", "--url", api_url, "--json")
    assert (code, err) == (0, "")
    listing = json.loads(out)
    assert listing["models"] == sorted([*model_names(), "plugin-net"])
    assert listing["datasets"] == sorted([*dataset_names(), "plugin-data"])
    code, out, _ = run(capsys, "list", "--url", api_url)
    assert code == 0 and out.startswith("models:   ") and "plugin-net" in out


def test_lrtune_list_refuses_a_token_without_a_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LRTUNE_URL", raising=False)
    code, _, err = run(capsys, "list", "--token", TOKEN)
    assert code == 2 and "--token is for the HTTP API: give --url" in err
