"""The HTTP API over real HTTP (uvicorn on 127.0.0.1) on real SQLite and PostgreSQL stores.

Every endpoint with its bad input: unknown names and ids, finished jobs, oversize bodies,
missing tokens, a full queue and a database that is down.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from live_api import finish_with, register_plugin_worker, serve
from small_jobs import small_job
from test_imports import heavy_modules_after

from lrtune.api import ApiSettings, create_app
from lrtune.api.schemas import RecommendationMatch
from lrtune.exceptions import InvalidInputError
from lrtune.jobs import JobStore, tables, upgrade
from lrtune.recommendation import Recommendation
from lrtune.spec import JobSpec

MINIMAL = {"model": {"name": "logreg"}, "dataset": {"name": "wine"}}
TOKEN = "t0ken-never-shown"

Start = Callable[..., httpx.Client]


@pytest.fixture
def launch() -> Iterator[Start]:
    """Start an API with the given settings fields; returns an HTTP client for it."""
    with contextlib.ExitStack() as stack:

        def start(**fields: Any) -> httpx.Client:
            url = stack.enter_context(serve(create_app(ApiSettings(**fields))))
            return stack.enter_context(httpx.Client(base_url=url, timeout=60))

        yield start


@pytest.fixture
def start(launch: Start, jobs_url: str) -> Start:
    """Like :func:`launch`, on the test's job store (SQLite and PostgreSQL)."""
    return lambda **fields: launch(database_url=jobs_url, **fields)


@pytest.fixture
def api(start: Start) -> httpx.Client:
    return start()


@pytest.fixture(scope="session")
def recommendation() -> Recommendation:
    """A real recommendation of a tiny job (logistic regression on wine)."""
    from lrtune.tuner import tune

    spec = small_job(n_trials=2, epochs=2, families=["cosine"], confirm_seeds=2)
    return tune(spec, progress=False)


def submit(api: httpx.Client, body: Any = None, **kwargs: Any) -> httpx.Response:
    return api.post("/v1/jobs", json=MINIMAL if body is None else body, **kwargs)


def assert_field_error(response: httpx.Response, loc: list[Any], status: int = 422) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert loc in [error["loc"] for error in body["errors"]], body
    assert "Traceback" not in response.text
    return body["detail"]


# --- jobs -------------------------------------------------------------------------------------


def test_a_submitted_job_is_201_with_its_url_and_reads_back(api: httpx.Client) -> None:
    response = submit(api, params={"name": "wine-1"})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["name"] == "wine-1"
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    again = api.get(response.headers["location"]).json()
    assert job.pop("reused_from") is None and job.pop("recommendation") is None  # a new job
    assert again == job
    assert again["spec"]["model"] == {"name": "logreg", "params": {}}


def test_a_spec_an_earlier_job_answered_is_answered_at_once_unless_reuse_is_off(
    api: httpx.Client, store: JobStore, recommendation: Recommendation
) -> None:
    spec = small_job()
    earlier = finish_with(store, spec, recommendation)
    body = spec.model_dump(mode="json")

    reused = submit(api, body)
    assert reused.status_code == 200, reused.text
    answer = reused.json()
    assert answer["id"] == answer["reused_from"] == earlier.id
    assert answer["recommendation"]["job_id"] == earlier.id
    assert reused.headers["location"] == f"/v1/jobs/{earlier.id}"
    assert store.count() == 1  # nothing was queued

    fresh = submit(api, body, params={"reuse": "false"})
    assert fresh.status_code == 201 and fresh.json()["reused_from"] is None
    assert fresh.json()["id"] != earlier.id and store.count("queued") == 1


def test_a_model_only_a_live_worker_knows_is_accepted_and_listed(
    api: httpx.Client, store: JobStore
) -> None:
    unknown = submit(api, {"model": {"name": "worker_only_mlp"}, "dataset": {"name": "wine"}})
    assert_field_error(unknown, ["body", "model", "name"])
    ready = api.get("/readyz").json()
    assert ready["live_workers"] == 0 and "no live worker" in ready["note"]

    schema = {"type": "object", "properties": {"width": {"type": "integer"}}}
    register_plugin_worker(store, {"worker_only_mlp": schema}, "gpu-box-1", "cuda:0")
    accepted = submit(api, {"model": {"name": "worker_only_mlp"}, "dataset": {"name": "wine"}})
    assert accepted.status_code == 201, accepted.text
    models = {m["name"]: m for m in api.get("/v1/models").json()["data"]}
    assert models["worker_only_mlp"] == {
        "name": "worker_only_mlp",
        "builtin": False,
        "params_schema": schema,
    }
    assert models["mlp"]["builtin"]
    ready = api.get("/readyz").json()
    assert ready["live_workers"] == 1 and ready["note"] is None
    assert "lrtune_workers_live 1.0" in api.get("/metrics").text


def test_a_sequential_layer_that_does_not_fit_the_data_is_422_at_its_path(
    api: httpx.Client,
) -> None:
    layers = [
        {"type": "reshape", "shape": [1, 8, 8]},
        {"type": "conv2d", "out_channels": 4, "kernel_size": 9},
        {"type": "flatten"},
        {"type": "linear", "out_features": 10},
    ]
    spec = {"model": {"name": "sequential", "params": {"layers": layers}}}
    response = submit(api, {**spec, "dataset": {"name": "digits"}})
    detail = assert_field_error(
        response, ["body", "model", "params", "layers", 1, "conv2d", "kernel_size"]
    )
    assert "larger than the input" in detail
    layers[1]["kernel_size"] = 3
    assert submit(api, {**spec, "dataset": {"name": "digits"}}).status_code == 201


def test_job_pages_are_keyset_pages_newest_first_and_filter_by_status(api: httpx.Client) -> None:
    ids = [submit(api).json()["id"] for _ in range(3)]
    first = api.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["data"]] == ids[:0:-1]
    submit(api)  # a job submitted between two pages does not shift the next one
    second = api.get("/v1/jobs", params={"limit": 2, "after": first["next_after"]}).json()
    assert [j["id"] for j in second["data"]] == [ids[0]] and second["next_after"] is None
    api.post(f"/v1/jobs/{ids[1]}/cancel")
    cancelled = api.get("/v1/jobs", params={"status": "cancelled"}).json()["data"]
    assert [j["id"] for j in cancelled] == [ids[1]]


def test_a_polled_job_is_304_until_it_changes(api: httpx.Client) -> None:
    job = submit(api).json()
    first = api.get(f"/v1/jobs/{job['id']}")
    etag = first.headers["etag"]
    unchanged = api.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    api.post(f"/v1/jobs/{job['id']}/cancel")
    changed = api.get(f"/v1/jobs/{job['id']}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["status"] == "cancelled"
    assert changed.headers["etag"] != etag


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"model": {"name": "resnet"}, "dataset": {"name": "wine"}}, ["body", "model", "name"]),
        ({"model": {"name": "mlp"}, "dataset": {"name": "imagenet"}}, ["body", "dataset", "name"]),
        (
            {"model": {"name": "mlp", "params": {"hidden": [0]}}, "dataset": {"name": "wine"}},
            ["body", "model", "params"],
        ),
        (
            {"model": {"name": "logreg"}, "dataset": {"name": "wine", "params": {"seed": "x"}}},
            ["body", "dataset", "params"],
        ),
        ({**MINIMAL, "batch_size": 0}, ["body", "batch_size"]),
        ({**MINIMAL, "search": {"families": ["sawtooth"]}}, ["body", "search", "families"]),
        ({**MINIMAL, "range_test": {"start_lr": 1, "end_lr": 0.1}}, ["body", "range_test"]),
        ({**MINIMAL, "epochs": 3}, ["body", "epochs"]),
        ({"dataset": {"name": "wine"}}, ["body", "model"]),
        ([1, 2], ["body"]),
    ],
)
def test_an_invalid_job_spec_is_422_at_its_field(
    api: httpx.Client, body: Any, loc: list[Any]
) -> None:
    assert_field_error(submit(api, body), loc)
    assert api.get("/v1/jobs").json()["data"] == []


@pytest.mark.parametrize(
    "kwargs",
    [{"betas": [0.9, 0.99]}, {"momentum": True}, {"alpha": float("nan")}, {"alpha": 10**400}],
    ids=["unknown", "wrong-type", "nan", "huge"],
)
def test_a_bad_optimizer_keyword_is_422_and_names_the_accepted_ones(
    api: httpx.Client, kwargs: dict[str, Any]
) -> None:
    optimizer = {"name": "RMSprop", "kwargs": kwargs}
    content = json.dumps({**MINIMAL, "optimizer": optimizer})  # NaN as JSON parsers take it
    response = api.post("/v1/jobs", content=content, headers={"content-type": "application/json"})
    detail = assert_field_error(response, ["body", "optimizer", "kwargs"])
    assert "rmsprop accepts alpha" in detail and "centered" in detail
    good = submit(api, {**MINIMAL, "optimizer": {"name": "RMSprop", "kwargs": {"alpha": 0.9}}})
    assert good.status_code == 201, good.text
    assert good.json()["spec"]["optimizer"] == {"name": "rmsprop", "kwargs": {"alpha": 0.9}}


def test_malformed_json_and_a_bad_name_are_422(api: httpx.Client) -> None:
    broken = api.post(
        "/v1/jobs", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422 and broken.json()["errors"][0]["type"] == "json_invalid"
    assert_field_error(submit(api, params={"name": "x" * 121}), ["query", "name"])


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/jobs", b"[" * 100_000 + b"]" * 100_000),  # nested too deeply to parse
        (
            "POST",
            "/v1/jobs",
            b'{"model": {"name": "mlp"}, "dataset": {"name": "digits"}, "seed": NaN}',
        ),
        ("POST", "/v1/jobs", b'{"model": {"name": "mlp"}, "batch_size": 1' + b"0" * 5000 + b"}"),
        ("POST", "/v1/jobs", b'{"model": {"name": "\\ud800"}, "dataset": {"name": "digits"}}'),
        ("POST", "/v1/jobs", b"\xff\xfe"),
        ("POST", "/v1/jobs", b'{"model": {"name": "mlp", "params": {"hidden": [1e400]}}}'),
        ("GET", "/v1/jobs/%00", b""),  # PostgreSQL text cannot hold NUL: 422, not 503
        ("GET", "/v1/jobs?after=a%00", b""),
        (
            "POST",
            "/v1/jobs?name=a%00",
            b'{"model": {"name": "mlp"}, "dataset": {"name": "digits"}}',
        ),
        ("GET", "/v1/jobs?limit=99999999999999999999999", b""),
        ("GET", "/v1/recommendations?model=%00&dataset=x", b""),
        (
            "POST",
            "/v1/schedules/preview",
            b'{"schedule": {"family": "exponential", "gamma": 1e-300}, '
            b'"base_lr": 0.1, "epochs": 50}',
        ),
        (
            "POST",
            "/v1/schedules/preview",
            b'{"schedule": {"family": "onecycle", "max_lr": 0.1}, "base_lr": 0.1, "epochs": 1}',
        ),
    ],
)
def test_hostile_input_is_never_a_server_error(
    api: httpx.Client, method: str, path: str, body: bytes
) -> None:
    headers = {"content-type": "application/json"} if body else None
    response = api.request(method, path, content=body or None, headers=headers)
    assert response.status_code < 500, response.text
    assert "Traceback" not in response.text
    if not response.is_success:
        assert set(response.json()) == {"detail", "errors"}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({**MINIMAL, "model": {"name": "logreg\u0000"}}, ["body", "model", "name"]),
        (
            {**MINIMAL, "model": {"name": "plugin_mlp", "params": {"act": "relu\u0000"}}},
            ["body", "model", "params", "act"],
        ),
        (
            {**MINIMAL, "model": {"name": "plugin_mlp", "params": {"a\u0000": 1}}},
            ["body", "model", "params", "a\u0000"],
        ),
        (
            {**MINIMAL, "param_groups": [{"prefix": "0.\u0000", "lr_mult": 2}]},
            ["body", "param_groups", 0, "prefix"],
        ),
    ],
)
def test_a_nul_character_in_a_job_spec_is_422_at_its_field(
    api: httpx.Client, store: JobStore, body: dict[str, Any], loc: list[Any]
) -> None:
    # PostgreSQL cannot keep a NUL in text; a plugin model's params are checked by no factory.
    register_plugin_worker(store, {"plugin_mlp": {"type": "object"}})
    detail = assert_field_error(submit(api, body, params={"reuse": "false"}), loc)
    assert "NUL character" in detail
    assert store.count() == 0


def test_a_job_stored_with_a_nul_before_the_api_refused_one_still_reads(
    api: httpx.Client, store: JobStore
) -> None:
    groups = [{"prefix": "0\u0000", "lr_mult": 2}]
    job = store.submit(JobSpec.model_validate(MINIMAL))
    stored = {**job.spec.model_dump(mode="json"), "param_groups": groups}
    engine = sa.create_engine(store.url)
    with engine.begin() as conn:  # what a submit stored before the check
        conn.execute(sa.update(tables.Job).where(tables.Job.id == job.id).values(spec=stored))
    engine.dispose()
    assert api.get(f"/v1/jobs/{job.id}").json()["spec"]["param_groups"][0]["prefix"] == "0\u0000"
    assert [j["id"] for j in api.get("/v1/jobs").json()["data"]] == [job.id]


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/schedules/preview"])
def test_a_body_that_is_not_utf8_is_422_not_a_bare_400(api: httpx.Client, path: str) -> None:
    response = api.post(
        path, content=b'{"a": "\xff"}', headers={"content-type": "application/json"}
    )
    detail = assert_field_error(response, ["body"])
    assert "not UTF-8" in detail and response.json()["errors"][0]["type"] == "json_invalid"


def test_an_oversize_body_is_413_declared_or_chunked(start: Start) -> None:
    api = start(max_body_bytes=4096)
    padded = {**MINIMAL, "name": "x" * 5000}
    declared = submit(api, padded)
    assert declared.status_code == 413 and "LRTUNE_MAX_BODY_BYTES" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:
        yield b'{"model": {"name": "logreg"}, "dataset": {"name": "wine"}, "name": "'
        yield from (b"x" * 1024 for _ in range(8))
        yield b'"}'

    chunked = api.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413, chunked.text
    assert submit(api).status_code == 201  # a body under the cap still passes


def test_a_full_queue_is_429_until_a_job_leaves_it(start: Start) -> None:
    api = start(max_queued_jobs=2)
    first, _ = submit(api).json(), submit(api)
    refused = submit(api)
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert "LRTUNE_MAX_QUEUED_JOBS=2" in refused.json()["detail"]
    api.post(f"/v1/jobs/{first['id']}/cancel")
    assert submit(api).status_code == 201


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"status": "sleeping"}, ["query", "status"]),
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 501}, ["query", "limit"]),
        ({"after": "no-such-job"}, ["query", "after"]),
    ],
)
def test_bad_list_queries_are_422(api: httpx.Client, params: dict[str, Any], loc: list) -> None:
    assert_field_error(api.get("/v1/jobs", params=params), loc)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/{id}"),
        ("POST", "/v1/jobs/{id}/cancel"),
        ("DELETE", "/v1/jobs/{id}"),
        ("GET", "/v1/jobs/{id}/recommendation"),
        ("GET", "/v1/jobs/{id}/events"),
    ],
)
def test_an_unknown_job_id_is_404(api: httpx.Client, method: str, path: str) -> None:
    unknown = "6d1f2a0e-0000-4000-8000-000000000000"
    response = api.request(method, path.format(id=unknown))
    assert response.status_code == 404
    assert response.json() == {"detail": f"no job {unknown!r} in the job store", "errors": []}


# --- every endpoint's bad input, from the live schema (so routes added later are covered) ----

UNKNOWN_JOB = "6d1f2a0e-0000-4000-8000-000000000000"
UNKNOWN_DATASET = "0" * 64
PROBES = {"/healthz", "/readyz"}  # open to orchestrators whatever the token settings


def operations(api: httpx.Client) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, operation) of every operation in the served OpenAPI schema."""
    paths = api.get("/openapi.json").json()["paths"]
    return [(m.upper(), path, op) for path, methods in paths.items() for m, op in methods.items()]


def test_every_job_route_answers_an_unknown_id_404_and_a_malformed_one_422(
    api: httpx.Client,
) -> None:
    job_routes = [  # an agent's unit routes are its own: tests/test_agents.py
        (method, path)
        for method, path, _ in operations(api)
        if "{job_id}" in path and not path.startswith("/v1/agents")
    ]
    assert len(job_routes) >= 7
    for method, path in job_routes:
        unknown = api.request(method, path.format(job_id=UNKNOWN_JOB))
        assert unknown.status_code == 404, (method, path, unknown.text)
        assert UNKNOWN_JOB in unknown.json()["detail"]
        for malformed in ("x" * 65, "a%00b"):
            response = api.request(method, path.format(job_id=malformed))
            assert_field_error(response, ["path", "job_id"])


def test_every_write_needs_the_token_and_every_read_too_when_reads_are_protected(
    start: Start,
) -> None:
    writes = start(api_token=TOKEN)
    protected = start(api_token=TOKEN, api_token_for_reads=True)
    tried = 0
    for method, path, op in operations(writes):
        if path in PROBES:
            continue
        url = path.format(
            job_id=UNKNOWN_JOB, dataset_id=UNKNOWN_DATASET, agent_id="agent-x", trial_id=1
        )
        body = MINIMAL if "requestBody" in op else None
        wrong = {"Authorization": "Bearer wrong"}
        if op.get("security"):  # a write: refused on both servers, without or with a wrong token
            assert writes.request(method, url, json=body).status_code == 401, (method, path)
            assert writes.request(method, url, json=body, headers=wrong).status_code == 401
        response = protected.request(method, url, json=body)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        tried += 1
    assert tried >= 14


def test_every_body_over_the_cap_is_413(start: Start) -> None:
    api = start(max_body_bytes=4096, max_upload_bytes=4096)
    with_body = [(m, path) for m, path, op in operations(api) if "requestBody" in op]
    assert len(with_body) >= 3
    for method, path in with_body:
        response = api.request(
            method,
            path.format(job_id=UNKNOWN_JOB, agent_id="agent-x", trial_id=1),
            content=b'{"pad": "' + b"x" * 5000 + b'"}',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 413, (method, path, response.text)
        cap = "LRTUNE_MAX_UPLOAD_BYTES" if path == "/v1/datasets" else "LRTUNE_MAX_BODY_BYTES"
        assert cap in response.json()["detail"]


def test_cancel_and_delete_follow_the_jobs_state(api: httpx.Client) -> None:
    job = submit(api).json()
    unfinished = api.delete(f"/v1/jobs/{job['id']}")
    assert unfinished.status_code == 409 and "cancel it before deleting it" in unfinished.text
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert api.get(f"/v1/jobs/{job['id']}").status_code == 404


def test_writes_sent_by_another_sites_page_are_refused(api: httpx.Client) -> None:
    """A page on another site (or another port of this host) may post a form to a loopback
    service with no token: the browser's Sec-Fetch-Site header tells, and such writes get 403."""
    job = submit(api).json()
    for sender in ("cross-site", "same-site"):
        forged = api.post(f"/v1/jobs/{job['id']}/cancel", headers={"Sec-Fetch-Site": sender})
        assert forged.status_code == 403 and f"from a {sender} page" in forged.json()["detail"]
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    own_page = api.post(f"/v1/jobs/{job['id']}/cancel", headers={"Sec-Fetch-Site": "same-origin"})
    assert own_page.status_code == 200 and own_page.json()["status"] == "cancelled"
    read = api.get(f"/v1/jobs/{job['id']}", headers={"Sec-Fetch-Site": "cross-site"})
    assert read.status_code == 200


def test_a_succeeded_job_cannot_be_cancelled_and_can_be_deleted(
    api: httpx.Client, store: JobStore, recommendation: Recommendation
) -> None:
    job = finish_with(store, small_job(), recommendation)
    refused = api.post(f"/v1/jobs/{job.id}/cancel")
    assert refused.status_code == 409 and "already succeeded" in refused.json()["detail"]
    assert api.get(f"/v1/jobs/{job.id}").json()["status"] == "succeeded"
    assert api.delete(f"/v1/jobs/{job.id}").status_code == 204


# --- results ----------------------------------------------------------------------------------


def test_a_finished_jobs_recommendation_is_served_with_its_snippet(
    api: httpx.Client, store: JobStore, recommendation: Recommendation
) -> None:
    waiting = submit(api).json()
    pending = api.get(f"/v1/jobs/{waiting['id']}/recommendation")
    assert pending.status_code == 404 and "it is queued" in pending.json()["detail"]
    job = finish_with(store, small_job(), recommendation)
    stored = api.get(f"/v1/jobs/{job.id}/recommendation").json()
    assert stored["job_id"] == job.id and stored["provenance"]["device"] == "cpu"
    served = stored["recommendation"]
    assert served["code"] == recommendation.to_code()
    assert served["schedule"]["family"] == recommendation.schedule.family
    assert served["base_lr"] == recommendation.base_lr
    assert Recommendation.model_validate(served) == recommendation


def test_epochs_renders_a_recommendations_snippet_for_the_users_run(
    api: httpx.Client, store: JobStore, onecycle_recommendation: Recommendation
) -> None:
    """The onecycle tuned for 6 epochs, written for 8 (and 8 of 20 steps): the snippet says
    what it was tuned for and stretches the cycle; the rest of the answer is as stored."""
    rec = onecycle_recommendation
    assert rec.schedule is not None and rec.schedule.family == "onecycle"
    job = finish_with(store, small_job(), rec)
    url = f"/v1/jobs/{job.id}/recommendation"
    tuned_for = f"tuned for 6 epochs of {rec.steps_per_epoch} steps"
    as_tuned = api.get(url).json()["recommendation"]["code"]
    assert f"\nepochs = 6  # {tuned_for}; set your own\n" in as_tuned
    longer = api.get(url, params={"epochs": 8})
    assert longer.status_code == 200, longer.text
    served = longer.json()["recommendation"]
    assert served["code"] == rec.to_code(epochs=8) != as_tuned
    assert f"\nepochs = 8  # {tuned_for}; set your own\n" in served["code"]
    assert "total_steps=epochs * steps_per_epoch" in served["code"]
    assert Recommendation.model_validate(served) == rec  # the code is derived: the rest is as is
    both = api.get(url, params={"epochs": 8, "steps_per_epoch": 20}).json()["recommendation"]
    assert "\nsteps_per_epoch = 20  # len(train_loader); " in both["code"]


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"epochs": 0}, "epochs", "greater than or equal to 1"),
        ({"epochs": "eight"}, "epochs", "valid integer"),
        ({"epochs": 2.5}, "epochs", "valid integer"),
        ({"epochs": 100_001}, "epochs", "less than or equal to 100000"),
        ({"epochs": 8, "steps_per_epoch": -3}, "steps_per_epoch", "greater than or equal to 1"),
        ({"steps_per_epoch": 10**8}, "steps_per_epoch", "less than or equal to 10000000"),
    ],
)
def test_a_run_length_that_is_not_a_sane_count_is_a_422(
    api: httpx.Client,
    store: JobStore,
    recommendation: Recommendation,
    params: dict[str, Any],
    field: str,
    message: str,
) -> None:
    job = finish_with(store, small_job(), recommendation)
    refused = api.get(f"/v1/jobs/{job.id}/recommendation", params=params)
    assert message in assert_field_error(refused, ["query", field])


def test_recommendations_match_by_fingerprint_or_by_names_with_the_differences(
    api: httpx.Client, store: JobStore, recommendation: Recommendation
) -> None:
    spec = small_job()  # batch size 32, everything else at its default
    job = finish_with(store, spec, recommendation)
    by_fingerprint = api.get("/v1/recommendations", params={"fingerprint": job.fingerprint})
    assert by_fingerprint.json()["match"] == "fingerprint"
    assert by_fingerprint.json()["stored"]["job_id"] == job.id
    exact = api.get(
        "/v1/recommendations", params={"model": "logreg", "dataset": "wine", "batch_size": 32}
    ).json()
    assert (exact["match"], exact["differs"], exact["stored"]["job_id"]) == (
        "fingerprint",
        [],
        job.id,
    )
    near = api.get(
        "/v1/recommendations", params={"model": "logreg", "dataset": "wine", "optimizer": "adam"}
    ).json()
    assert near["match"] == "names" and near["stored"]["job_id"] == job.id
    assert near["differs"] == ["batch_size", "optimizer.name"]


def test_which_job_answers_a_lookup_is_reused_for_the_answer_ttl(
    jobs_url: str, store: JobStore, recommendation: Recommendation
) -> None:
    """A lookup's answer is reused for LRTUNE_ANSWER_TTL_S: a job deleted behind this API
    process's back (through another one, or the CLI) is still served within it, and is a 404
    once it has passed; with a TTL of 0 the store is asked every time."""
    job = finish_with(store, small_job(), recommendation)
    by_fingerprint = {"fingerprint": job.fingerprint}
    by_names = {"model": "logreg", "dataset": "wine", "optimizer": "adam"}
    reusing = create_app(ApiSettings(database_url=jobs_url, answer_ttl_s=2.0))
    asking = create_app(ApiSettings(database_url=jobs_url, answer_ttl_s=0))
    with (
        serve(reusing) as reusing_url,
        serve(asking) as asking_url,
        httpx.Client(base_url=reusing_url) as a,
        httpx.Client(base_url=asking_url) as b,
    ):
        for params in (by_fingerprint, by_names):
            assert a.get("/v1/recommendations", params=params).status_code == 200
            assert b.get("/v1/recommendations", params=params).status_code == 200
        asked_at = time.monotonic()

        store.delete(job.id)

        for params in (by_fingerprint, by_names):
            assert b.get("/v1/recommendations", params=params).status_code == 404
            reused = a.get("/v1/recommendations", params=params)
            assert reused.status_code == 200 and time.monotonic() - asked_at < 2.0
            assert reused.json()["stored"]["job_id"] == job.id
        time.sleep(2.0 - (time.monotonic() - asked_at) + 0.1)
        for params in (by_fingerprint, by_names):
            assert a.get("/v1/recommendations", params=params).status_code == 404


def test_a_served_recommendation_is_kept_until_its_job_is_deleted(
    launch: Start, jobs_url: str, store: JobStore, recommendation: Recommendation
) -> None:
    """The lookups serve a recommendation's body from the process's cache: the same bytes
    and ETag each time (304 for a client that has it), gone with its job; a newer
    recommendation for the same spec is served in its place, with another ETag."""
    app = create_app(ApiSettings(database_url=jobs_url))
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as api:
        spec = small_job()
        first = finish_with(store, spec, recommendation)
        by_fingerprint = {"fingerprint": first.fingerprint}
        by_names = {"model": "logreg", "dataset": "wine", "optimizer": "adam"}
        served = api.get("/v1/recommendations", params=by_fingerprint)
        again = api.get("/v1/recommendations", params=by_fingerprint)
        assert served.status_code == again.status_code == 200
        assert again.content == served.content and again.headers["etag"] == served.headers["etag"]
        schema = RecommendationMatch(
            match="fingerprint", stored=store.latest_recommendation(first.fingerprint)
        )
        assert served.content == schema.model_dump_json().encode()  # as FastAPI serialises it
        etag = served.headers["etag"]
        has_it = {"If-None-Match": etag}
        cached = api.get("/v1/recommendations", params=by_fingerprint, headers=has_it)
        assert cached.status_code == 304 and cached.headers["etag"] == etag
        near = api.get("/v1/recommendations", params=by_names)
        assert near.json()["stored"]["job_id"] == first.id and len(app.state.responses) == 2

        assert api.delete(f"/v1/jobs/{first.id}").status_code == 204
        assert len(app.state.responses) == 0  # the deleted job's answers are gone
        assert api.get("/v1/recommendations", params=by_fingerprint).status_code == 404
        assert api.get("/v1/recommendations", params=by_names).status_code == 404

        newer = recommendation.model_copy(update={"base_lr": recommendation.base_lr / 2})
        second = finish_with(store, spec, newer)
        assert second.fingerprint == first.fingerprint
        replaced = api.get("/v1/recommendations", params=by_fingerprint, headers=has_it)
        assert replaced.status_code == 200 and replaced.headers["etag"] != etag
        assert replaced.json()["stored"]["job_id"] == second.id
        assert replaced.json()["stored"]["recommendation"]["base_lr"] == newer.base_lr
        near = api.get("/v1/recommendations", params=by_names).json()
        assert (near["match"], near["stored"]["job_id"]) == ("names", second.id)


def test_the_response_cache_is_bounded_and_forgets_a_job() -> None:
    from lrtune.api.cache import ResponseCache

    cache = ResponseCache(max_entries=2)
    cache.put(("fingerprint", "a"), b"1")
    cache.put(("names", "b", "q"), b"2")
    assert cache.get(("fingerprint", "a")) is not None  # used: "b" is now the oldest
    cache.put(("finder", "c"), b"3")
    assert cache.get(("names", "b", "q")) is None and len(cache) == 2
    cache.forget("a")
    assert cache.get(("fingerprint", "a")) is None and cache.get(("finder", "c")).body == b"3"


@pytest.mark.parametrize(
    ("params", "status", "loc"),
    [
        ({}, 422, ["query", "model"]),
        ({"model": "mlp"}, 422, ["query", "dataset"]),
        ({"fingerprint": "abc"}, 422, ["query", "fingerprint"]),
        ({"fingerprint": "0" * 64, "model": "mlp"}, 422, ["query", "fingerprint"]),
        ({"model": "mlp", "dataset": "digits", "batch_size": 0}, 422, ["query", "batch_size"]),
        ({"model": "mlp\u0000", "dataset": "digits"}, 422, ["query", "model"]),
        ({"model": "mlp", "dataset": "digits", "optimizer": "LBFGS"}, 422, ["query", "optimizer"]),
        ({"fingerprint": "0" * 64}, 404, None),
        ({"model": "mlp", "dataset": "digits"}, 404, None),
        ({"model": "mlp", "dataset": "digits", "optimizer": "RMSprop"}, 404, None),
    ],
)
def test_recommendation_lookups_that_find_nothing_say_what_to_do(
    api: httpx.Client, params: dict[str, Any], status: int, loc: list | None
) -> None:
    response = api.get("/v1/recommendations", params=params)
    if loc is not None:
        assert_field_error(response, loc, status)
    else:
        assert response.status_code == 404 and "POST /v1/jobs" in response.json()["detail"]


# --- the event stream -------------------------------------------------------------------------


def sse_messages(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Parse Server-Sent Events: one dict per message (``id``, ``event``, ``data``), and one
    ``{"comment": ...}`` per comment line."""
    message: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif line:
            field, _, value = line.partition(":")
            message[field] = value.removeprefix(" ")
        elif message:
            yield message
            message = {}


@contextlib.contextmanager
def event_stream(api: httpx.Client, job_id: str, **kwargs: Any) -> Iterator[Iterator[dict]]:
    """The job's event stream, messages only (keep-alive comments skipped)."""
    with api.stream("GET", f"/v1/jobs/{job_id}/events", **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        messages = sse_messages(response.iter_lines())
        yield (m for m in messages if "comment" not in m)


def test_the_event_stream_is_live_resumable_and_ends_when_the_job_is_done(
    start: Start, store: JobStore
) -> None:
    api = start(sse_poll_s=0.05)
    job = submit(api).json()
    with event_stream(api, job["id"]) as events:
        submitted = next(events)
        assert json.loads(submitted["data"])["kind"] == "submitted"
        appended = store.append_event(job["id"], "progress", {"range_test_steps_done": 5})
        live = next(events)  # appended while the client listens
        assert live["id"] == str(appended.id)
        assert json.loads(live["data"])["payload"] == {"range_test_steps_done": 5}
    missed = store.append_event(job["id"], "progress", {"range_test_steps_done": 9})
    with event_stream(api, job["id"], headers={"Last-Event-ID": live["id"]}) as events:
        assert next(events)["id"] == str(missed.id)  # nothing before the cursor again
        store.cancel(job["id"])
        rest = list(events)  # the stream closes by itself once the job is finished
    assert json.loads(rest[0]["data"])["payload"]["to"] == "cancelled"
    assert rest[-1] == {"event": "end", "data": '{"status": "cancelled"}'}
    with event_stream(api, job["id"], params={"after": submitted["id"]}) as events:
        replay = [m.get("id") for m in events]
    assert replay == [live["id"], str(missed.id), rest[0]["id"], None]


def test_each_event_the_stream_sends_is_one_its_openapi_schema_documents(
    api: httpx.Client,
) -> None:
    import jsonschema_rs

    schema = api.get("/openapi.json").json()
    media = schema["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    item = media["text/event-stream"]["itemSchema"]
    root = {"components": schema["components"]}  # where its $refs point
    event_schema = jsonschema_rs.Draft202012Validator({**item, **root})
    data_schema = jsonschema_rs.Draft202012Validator(
        {**item["properties"]["data"]["contentSchema"], **root}
    )
    job = submit(api).json()
    api.post(f"/v1/jobs/{job['id']}/cancel")
    with event_stream(api, job["id"]) as events:
        sent = list(events)  # submitted, status, end
    assert [m.get("event") for m in sent] == [None, None, "end"]
    for message in sent:
        event_schema.validate({"event": "message", **message})
        data_schema.validate(json.loads(message["data"]))


def test_an_idle_event_stream_sends_keep_alive_comments(start: Start) -> None:
    api = start(sse_ping_s=0.2)
    job = submit(api).json()
    with api.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
        messages = sse_messages(response.iter_lines())
        # the submitted event, then pings (on a busy machine a ping may come before it)
        submitted = next(m for m in messages if "comment" not in m)
        assert json.loads(submitted["data"])["kind"] == "submitted"
        assert "ping" in next(messages)["comment"]


def test_an_event_stream_with_a_bad_cursor_is_422(api: httpx.Client) -> None:
    job = submit(api).json()
    path = f"/v1/jobs/{job['id']}/events"
    assert_field_error(api.get(path, headers={"Last-Event-ID": "x"}), ["header", "last-event-id"])
    assert_field_error(api.get(path, params={"after": -1}), ["query", "after"])
    beyond = 2**63  # over any id the store holds (SQLite raised, PostgreSQL said "unavailable")
    assert_field_error(api.get(path, params={"after": beyond}), ["query", "after"])
    last = {"Last-Event-ID": str(beyond)}
    assert_field_error(api.get(path, headers=last), ["header", "last-event-id"])


# --- registry and schedules -------------------------------------------------------------------


def test_the_registry_lists_models_and_datasets_with_their_params_schemas(
    api: httpx.Client,
) -> None:
    models = api.get("/v1/models").json()
    mlp = next(m for m in models["data"] if m["name"] == "mlp")
    assert mlp["builtin"] and "hidden" in mlp["params_schema"]["properties"]
    datasets = api.get("/v1/datasets").json()
    assert {"digits", "wine", "synthetic"} <= {d["name"] for d in datasets["data"]}
    assert datasets["count"] == len(datasets["data"])


def test_a_schedule_preview_is_the_schedulers_curve_and_its_code_reproduces_it(
    api: httpx.Client,
) -> None:
    import torch

    from lrtune.schedules import parse_schedule, preview

    request = {
        "schedule": {"family": "onecycle", "max_lr": 0.3, "pct_start": 0.25},
        "base_lr": 0.3,
        "epochs": 3,
        "steps_per_epoch": 4,
        "group_multipliers": [1.0, 0.1],
    }
    answer = api.post("/v1/schedules/preview", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    curve = [row for row, count in body["lr_curve"] for _ in range(count)]
    expected = preview(
        parse_schedule(request["schedule"]), [0.3, 0.03], 4, 3, group_multipliers=[1.0, 0.1]
    )
    assert curve == expected.tolist()
    weights = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.SGD(
        [{"params": [weights[0]], "lr": 0.3}, {"params": [weights[1]], "lr": 0.03}], momentum=0.9
    )
    train_loader = torch.utils.data.DataLoader(torch.zeros(8, 1), batch_size=2)  # 4 batches
    namespace: dict[str, Any] = {
        "optimizer": optimizer,
        "group_mults": [1.0, 0.1],
        "train_loader": train_loader,
    }
    exec(body["code"], namespace)
    assert namespace["epochs"] == 3 and namespace["steps_per_epoch"] == 4
    seen = []
    for _ in range(12):  # onecycle steps every batch
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        namespace["scheduler"].step()
    assert seen == curve


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"schedule": {"family": "sawtooth"}, "base_lr": 0.1, "epochs": 3}, ["body", "schedule"]),
        ({"schedule": {"family": "constant"}, "base_lr": -1, "epochs": 3}, ["body", "base_lr"]),
        (
            {
                "schedule": {"family": "constant"},
                "base_lr": 0.1,
                "epochs": 200,
                "steps_per_epoch": 1000,
            },
            ["body"],
        ),
        ({"schedule": {"family": "plateau"}, "base_lr": 0.1, "epochs": 3}, ["body"]),
        (  # found by schemathesis: the LR overflowed to -inf, and the answer was a 500
            {
                "schedule": {"family": "cosine_warm_restarts", "T_0": 2, "eta_min": 1.7e308},
                "base_lr": 6000.0,
                "epochs": 4,
            },
            ["body", "schedule"],
        ),
    ],
)
def test_a_schedule_the_scheduler_cannot_run_is_422(
    api: httpx.Client, body: dict[str, Any], loc: list
) -> None:
    assert_field_error(api.post("/v1/schedules/preview", json=body), loc)


# --- auth -------------------------------------------------------------------------------------


def test_with_a_token_set_writes_need_it_and_it_is_never_shown(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = start(api_token=TOKEN)
    seen = []
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        refused = submit(api, headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert (
            "Authorization: Bearer" in refused.json()["detail"]
            or "not this server" in (refused.json()["detail"])
        )
        seen.append(refused.text)
    job = submit(api, headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 401
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 401
    reads = [api.get("/v1/jobs"), api.get(f"/v1/jobs/{job['id']}"), api.get("/v1/models")]
    assert [r.status_code for r in reads] == [200, 200, 200]
    seen += [r.text for r in reads]
    assert not any(TOKEN in text for text in seen)
    assert TOKEN not in caplog.text


def test_reads_need_the_token_when_the_server_protects_them(start: Start) -> None:
    api = start(api_token=TOKEN, api_token_for_reads=True)
    assert api.get("/v1/jobs").status_code == 401
    assert api.get("/v1/models").status_code == 401
    ok = api.get("/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert api.get("/healthz").status_code == 200  # probes stay open


# --- the database down ------------------------------------------------------------------------


def test_an_unreachable_database_is_503_and_the_app_still_starts(launch: Start) -> None:
    api = launch(database_url="postgresql+psycopg://lrtune:hunter2@127.0.0.1:1/lrtune")
    assert api.get("/healthz").status_code == 200
    for response in (submit(api), api.get("/v1/jobs"), api.get("/v1/jobs/x/events")):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] and "job store unavailable" in response.text
        assert "hunter2" not in response.text and "Traceback" not in response.text
    ready = api.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
    assert ready.json()["database"] == "postgresql+psycopg://lrtune:***@127.0.0.1:1/lrtune"


@pytest.mark.parametrize("url", ["not a url", "nosuchdb://host/db", "mysql+nodriver://h/db"])
def test_an_unusable_database_url_stops_the_app_from_starting(url: str) -> None:
    with pytest.raises(InvalidInputError, match="URL"):
        create_app(ApiSettings(database_url=url))


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server; :meth:`cut` drops every connection and stops,
    :meth:`stall` holds every byte until :meth:`flow` (a database that hangs)."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=True)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self.flowing.wait()
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        self.flowing.clear()

    def flow(self) -> None:
        self.flowing.set()

    def cut(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accept() so the port stops listening
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.mark.postgres
def test_a_database_that_goes_down_while_serving_is_503_then_ready_again(
    launch: Start, postgres_url: str
) -> None:
    real = sa.engine.make_url(postgres_url)
    proxy = TcpProxy((real.host or "127.0.0.1", real.port or 5432))
    proxied = real.set(port=proxy.port).render_as_string(hide_password=False)
    upgrade(proxied)
    api = launch(database_url=proxied)
    job = submit(api).json()
    assert api.get("/readyz").status_code == 200
    proxy.cut()
    down = api.get(f"/v1/jobs/{job['id']}")
    assert down.status_code == 503 and "job store unavailable" in down.json()["detail"]
    assert submit(api).status_code == 503
    assert api.get("/readyz").status_code == 503
    assert api.get("/healthz").status_code == 200
    back = TcpProxy(proxy.target, port=proxy.port)  # the database is back on the same address
    try:
        assert api.get("/readyz").status_code == 200
        assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    finally:
        back.cut()


@pytest.mark.postgres
def test_a_hanging_database_holds_its_requests_but_not_the_event_loop(
    launch: Start, postgres_url: str
) -> None:
    real = sa.engine.make_url(postgres_url)
    proxy = TcpProxy((real.host or "127.0.0.1", real.port or 5432))
    proxied = real.set(port=proxy.port).render_as_string(hide_password=False)
    upgrade(proxied)
    api = launch(database_url=proxied, sse_poll_s=0.05)
    job = submit(api).json()

    def first_event() -> dict[str, str]:
        with (
            httpx.Client(base_url=api.base_url, timeout=60) as own,
            event_stream(own, job["id"]) as events,
        ):
            return next(events)

    def get_job() -> httpx.Response:
        with httpx.Client(base_url=api.base_url, timeout=60) as own:
            return own.get(f"/v1/jobs/{job['id']}")

    proxy.stall()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            waiting = [pool.submit(first_event), pool.submit(get_job)]
            time.sleep(1.0)
            started = time.monotonic()
            assert api.get("/healthz", timeout=5).status_code == 200
            assert time.monotonic() - started < 2.0
            assert not any(future.done() for future in waiting)  # they wait on the database
            proxy.flow()
            event, record = (future.result(timeout=60) for future in waiting)
    finally:
        proxy.flow()
        proxy.cut()
    assert json.loads(event["data"])["kind"] == "submitted"
    assert record.status_code == 200


# --- what the app loads, and what it documents ------------------------------------------------


def test_the_app_starts_and_serves_jobs_without_importing_torch(jobs_url: str) -> None:
    code = f"""
        import asyncio, httpx
        from lrtune.api import ApiSettings, create_app
        app = create_app(ApiSettings(database_url={jobs_url!r}))
        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
                assert (await c.get("/healthz")).status_code == 200
                job = await c.post("/v1/jobs", json={MINIMAL!r})
                assert job.status_code == 201, job.text
                assert (await c.get("/v1/jobs")).json()["data"][0]["id"] == job.json()["id"]
                assert (await c.get("/v1/models")).status_code == 200
                assert (await c.get("/openapi.json")).status_code == 200
        asyncio.run(main())
    """
    assert heavy_modules_after(code) == []


API_MODULES = [
    "lrtune.api",
    "lrtune.api.cache",
    "lrtune.api.config",
    "lrtune.api.deps",
    "lrtune.api.embedded",
    "lrtune.api.errors",
    "lrtune.api.main",
    "lrtune.api.middleware",
    "lrtune.api.schemas",
    "lrtune.api.routes",
    "lrtune.api.routes._docs",
    "lrtune.api.routes._lean",
    "lrtune.api.routes._registry",
    "lrtune.api.routes.agents",
    "lrtune.api.routes.dashboard",
    "lrtune.api.routes.datasets",
    "lrtune.api.routes.health",
    "lrtune.api.routes.jobs",
    "lrtune.api.routes.metrics",
    "lrtune.api.routes.models",
    "lrtune.api.routes.optuna_dashboard",
    "lrtune.api.routes.recommendations",
    "lrtune.api.routes.results",
    "lrtune.api.routes.schedules",
    "lrtune.api.routes.workers",
]


@pytest.mark.parametrize("name", API_MODULES)
def test_each_api_modules_docstring_example_runs(name: str) -> None:
    """api/ is outside pytest's doctest paths (it installs as lrtune.api): run them here."""
    module = importlib.import_module(name)
    assert module.__doc__ and ">>>" in module.__doc__
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried and not failures


def test_every_api_module_is_checked() -> None:
    from pathlib import Path

    folder = Path(importlib.import_module("lrtune.api").__file__).parent
    found = set()
    for path in folder.rglob("*.py"):
        parts = path.relative_to(folder).with_suffix("").parts
        found.add(".".join(("lrtune.api", *(parts[:-1] if parts[-1] == "__init__" else parts))))
    assert found == set(API_MODULES)


def test_the_openapi_request_examples_are_accepted(api: httpx.Client) -> None:
    schema = api.get("/openapi.json").json()
    tried = 0
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            if "application/json" not in op.get("requestBody", {}).get("content", {}):
                continue  # (an upload's multipart examples are tests/test_uploads.py's)
            for name, example in op["requestBody"]["content"]["application/json"][
                "examples"
            ].items():
                response = api.request(method, path, json=example["value"])
                assert response.status_code in (200, 201), (path, name, response.text)
                tried += 1
    assert tried == 4


def test_the_openapi_schema_documents_every_operation_with_typed_results(
    api: httpx.Client,
) -> None:
    schema = api.get("/openapi.json").json()
    operations = [
        (path, method, op)
        for path, methods in schema["paths"].items()
        for method, op in methods.items()
    ]
    # with GET /metrics, /finder, /finder.png, /trials, /trials.csv, uploads and /v1/workers
    assert len(operations) == 23
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        assert op.get("summary") and op.get("description"), where
        ok = [status for status in op["responses"] if status.startswith("2")]
        assert ok, where
        if ok != ["204"]:
            content = op["responses"][ok[0]]["content"]
            (media,) = content.values()
            assert media.get("schema") or media.get("itemSchema"), where  # SSE: each event's
        for status, response in op["responses"].items():
            if status.startswith("4") or (status == "503" and path.startswith("/v1")):
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), where
        if "requestBody" in op:
            (media,) = op["requestBody"]["content"].values()
            assert media.get("examples"), where
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    # Untyped objects: tests/test_openapi.py walks the schema for them.
