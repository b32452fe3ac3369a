"""Free-form JSON in a job (model and dataset params) that could not be served back.

A lone surrogate, a non-finite number or nesting too deep for the JSON serializer is refused
where a job comes in (HTTP and ``lrtune submit --database``), on SQLite and PostgreSQL; a job
stored before that check reads back as a clear error, and never hides the others.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cli_runs import run_cli
from live_api import register_plugin_worker, serve

from lrtune.api import ApiSettings, create_app
from lrtune.jobs import JobStore, tables
from lrtune.jobs.db import get_engine
from lrtune.spec import JobSpec

WINE = {"name": "wine"}


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


BAD_PARAMS = {
    "lone surrogate": {"act": "relu\ud800"},
    "lone surrogate in a key": {"\udfff": 1},
    "lone surrogate in a list": {"acts": ["relu", "\ud800"]},
    "inf": {"scale": float("inf")},
    "-inf": {"scale": [1.0, float("-inf")]},
    "nan": {"scale": float("nan")},
    "nested 33 deep": deep(33),
    "nested 300 deep": deep(300),
}


@pytest.fixture
def api(jobs_url: str, store: JobStore) -> Iterator[httpx.Client]:
    """The API on the test's store, with a live worker whose plugin model takes any params
    (no factory here checks them: the way in that stored such jobs before)."""
    register_plugin_worker(store, {"plugin_mlp": {"type": "object"}})
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve(create_app(ApiSettings(database_url=jobs_url))))
        yield stack.enter_context(httpx.Client(base_url=url, timeout=60))


def post_json(api: httpx.Client, body: Any) -> httpx.Response:
    """POST ``body`` as Python's json writes it (``\\ud800`` escapes, ``Infinity``, ``NaN``)."""
    text = json.dumps(body)
    return api.post("/v1/jobs", content=text, headers={"content-type": "application/json"})


@pytest.mark.parametrize("params", BAD_PARAMS.values(), ids=BAD_PARAMS.keys())
def test_params_that_could_not_be_served_back_are_422_and_not_stored(
    api: httpx.Client, store: JobStore, params: dict[str, Any]
) -> None:
    for ref in ("model", "dataset"):
        body = {"model": {"name": "plugin_mlp"}, "dataset": WINE}
        body[ref] = {**body[ref], "params": params}
        response = post_json(api, body)
        assert response.status_code == 422, response.text
        errors = response.json()["errors"]
        assert [error["loc"] for error in errors] == [["body", ref, "params"]]
        assert "send valid JSON" in errors[0]["msg"]
    assert store.count() == 0
    assert api.get("/v1/jobs").status_code == 200


def test_a_lone_surrogate_in_a_name_is_422(api: httpx.Client, store: JobStore) -> None:
    response = post_json(api, {"model": {"name": "plugin\ud800"}, "dataset": WINE})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "model", "name"]
    assert store.count() == 0


def test_params_nested_to_the_cap_are_accepted_and_read_back(
    api: httpx.Client, store: JobStore
) -> None:
    params = {"layers": deep(31), "unicode": "gelu \U0001f600 ü"}
    response = post_json(api, {"model": {"name": "plugin_mlp", "params": params}, "dataset": WINE})
    assert response.status_code == 201, response.text
    job = api.get(response.headers["location"]).json()
    assert job["spec"]["model"]["params"] == params


def stored_before_the_check(store: JobStore, params: dict[str, Any]) -> str:
    """A job whose params the spec refuses today, stored as a submit stored it before."""
    job = store.submit(JobSpec.model_validate({"model": {"name": "logreg"}, "dataset": WINE}))
    spec = job.spec.model_dump(mode="json")
    spec["model"]["params"] = params
    with get_engine(store.url).begin() as conn:
        conn.execute(sa.update(tables.Job).where(tables.Job.id == job.id).values(spec=spec))
    return job.id


@pytest.mark.parametrize(
    "params",
    [BAD_PARAMS["lone surrogate"], BAD_PARAMS["nested 300 deep"]],
    ids=["surrogate", "deep"],
)
def test_a_bad_job_stored_before_the_check_hides_no_other_and_reads_as_a_clear_error(
    api: httpx.Client, store: JobStore, params: dict[str, Any]
) -> None:
    good = post_json(api, {"model": {"name": "plugin_mlp"}, "dataset": WINE}).json()["id"]
    bad = stored_before_the_check(store, params)
    newer = post_json(api, {"model": {"name": "logreg"}, "dataset": WINE}).json()["id"]

    page = api.get("/v1/jobs")
    assert page.status_code == 200, page.text
    assert [job["id"] for job in page.json()["data"]] == [newer, good]
    assert page.json()["unreadable"] == [bad]
    first = api.get("/v1/jobs", params={"limit": 2}).json()  # pages still step over it
    assert [job["id"] for job in first["data"]] == [newer] and first["unreadable"] == [bad]
    rest = api.get("/v1/jobs", params={"limit": 2, "after": first["next_after"]}).json()
    assert [job["id"] for job in rest["data"]] == [good] and rest["next_after"] is None

    one = api.get(f"/v1/jobs/{bad}")
    assert one.status_code == 409, one.text
    detail = one.json()["detail"]
    assert f"job {bad} is stored but cannot be read back" in detail
    assert "spec.model.params" in detail and detail.endswith("cancel it, then delete it")
    assert api.get(f"/v1/jobs/{good}").status_code == 200

    cancelled = api.post(f"/v1/jobs/{bad}/cancel")  # lands, and says what is left to do
    assert cancelled.status_code == 409 and cancelled.json()["detail"].endswith(": delete it")
    assert api.delete(f"/v1/jobs/{bad}").status_code == 204
    assert api.get("/v1/jobs").json()["unreadable"] == []


def test_a_worker_fails_a_bad_job_stored_before_the_check(store: JobStore) -> None:
    from lrtune.workers.loop import Worker

    bad = stored_before_the_check(store, BAD_PARAMS["lone surrogate"])
    Worker(store, device="cpu", poll_s=0.05).run(once=True)  # fails it; does not crash
    assert store.list_jobs(status="failed").unreadable == [bad]


@pytest.mark.parametrize("params", BAD_PARAMS.values(), ids=BAD_PARAMS.keys())
def test_submit_to_the_database_refuses_them_in_one_line(
    tmp_path: Path,
    jobs_url: str,
    store: JobStore,
    capsys: pytest.CaptureFixture[str],
    params: dict[str, Any],
) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"model": {"name": "mlp", "params": params}, "dataset": WINE}))
    code, out, err = run_cli(capsys, "submit", str(path), "--database", jobs_url)
    assert code == 2 and out == ""
    assert err.startswith("lrtune: error: invalid job: model.params=") and err.count("\n") == 1
    assert "send valid JSON" in err
    assert store.count() == 0


def test_status_lists_the_readable_jobs_and_names_the_bad_one(
    jobs_url: str, store: JobStore, capsys: pytest.CaptureFixture[str]
) -> None:
    good = store.submit(JobSpec.model_validate({"model": {"name": "mlp"}, "dataset": WINE})).id
    bad = stored_before_the_check(store, BAD_PARAMS["lone surrogate"])
    code, out, err = run_cli(capsys, "status", "--database", jobs_url)
    assert code == 0 and good in out and bad not in out
    assert f"1 job(s) cannot be read back: {bad}" in err
    code, _, err = run_cli(capsys, "status", bad, "--database", jobs_url)
    assert code == 2 and "cannot be read back" in err and err.count("\n") == 1
