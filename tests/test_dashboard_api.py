"""The dashboard's server side over real HTTP: its pages and assets, the range-test and trials
endpoints on a job a real worker ran, and the login cookie the browser authenticates with.

The browser itself is tested in tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import httpx
import pytest
from live_api import serve
from small_jobs import small_job
from test_imports import heavy_modules_after

from lrtune.api import ApiSettings, create_app
from lrtune.api.deps import TOKEN_COOKIE
from lrtune.jobs import JobRecord, JobStatus, JobStore
from lrtune.workers.loop import Worker

TOKEN = "c00kie-t0ken-never-shown"
N_TRIALS = 3


@pytest.fixture
def finished(store: JobStore) -> JobRecord:
    """A tiny job run to its recommendation by a real worker (in this process)."""
    spec = small_job(n_trials=N_TRIALS, epochs=2, families=["constant", "cosine"], confirm_seeds=1)
    job = store.submit(spec)
    Worker(store, device="cpu", poll_s=0.05).run(once=True)
    job = store.get(job.id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    return job


@contextlib.contextmanager
def client(store: JobStore, **fields: object) -> Iterator[httpx.Client]:
    app = create_app(ApiSettings(database_url=store.url, **fields), store=store)
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def test_the_finder_serves_curves_band_rules_the_chosen_one_and_bounds(
    store: JobStore, finished: JobRecord
) -> None:
    with client(store) as http:
        view = http.get(f"/v1/jobs/{finished.id}/finder").json()
    rt = view["range_test"]
    assert view["status"] == "succeeded" and view["chosen_rule"] == "consensus"
    assert len(rt["seeds"]) == 2 and len(rt["lrs"]) == len(rt["seeds"][0]["smoothed"])
    assert 0 < len(rt["median"]) == len(rt["band_low"]) == len(rt["band_high"]) <= len(rt["lrs"])
    assert {"steepest", "longest_run"} <= set(rt["suggestions"])
    chosen = rt["consensus"]["suggestion"]["lr"]
    assert chosen == rt["suggestion"] and rt["spread_decades"] is not None
    bounds = view["bounds"]
    assert bounds["low"] < bounds["high"] and math.isclose(bounds["suggestion"], chosen)
    assert view["steps_done"] > 0


def test_a_finished_range_test_is_served_from_the_cache_until_its_job_is_deleted(
    store: JobStore, finished: JobRecord
) -> None:
    from lrtune.api.schemas import FinderView
    from lrtune.study_view import open_reader, read_finder

    app = create_app(ApiSettings(database_url=store.url), store=store)
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        path = f"/v1/jobs/{finished.id}/finder"
        first, second = http.get(path), http.get(path)
        assert first.content == second.content and first.headers["etag"] == second.headers["etag"]
        result, bounds = read_finder(open_reader(store.url), finished.study_name)
        progress = finished.progress
        view = FinderView(
            job_id=finished.id,
            status="succeeded",
            steps_done=progress.range_test_steps_done,
            steps_total=progress.range_test_steps_total,
            range_test=result,
            bounds=bounds,
        )
        assert first.content == view.model_dump_json().encode()  # the schema's bytes
        unchanged = http.get(path, headers={"If-None-Match": first.headers["etag"]})
        assert unchanged.status_code == 304 and len(app.state.responses) == 1
        assert http.delete(f"/v1/jobs/{finished.id}").status_code == 204
        assert len(app.state.responses) == 0 and http.get(path).status_code == 404


def test_a_running_range_test_is_read_anew_and_a_finished_one_reused_for_the_answer_ttl(
    store: JobStore,
) -> None:
    # The job page's last read of /finder, right after the job ends, must see the finished
    # range test: only finished views are reused (for LRTUNE_ANSWER_TTL_S, without reading
    # the job), so a job deleted behind this API process's back is still served within it.
    job = store.submit(small_job(n_trials=2, epochs=1, families=["constant"], confirm_seeds=0))
    with client(store, answer_ttl_s=30.0) as reusing, client(store, answer_ttl_s=0) as asking:
        path = f"/v1/jobs/{job.id}/finder"
        assert reusing.get(path).json()["range_test"] is None
        Worker(store, device="cpu", poll_s=0.05).run(once=True)
        assert store.get(job.id).status is JobStatus.SUCCEEDED
        finished = reusing.get(path)
        assert finished.json()["range_test"] is not None
        assert asking.get(path).status_code == 200

        store.delete(job.id)

        assert asking.get(path).status_code == 404
        reused = reusing.get(path)
        assert reused.status_code == 200 and reused.content == finished.content


def test_the_trials_carry_family_params_state_epochs_reason_and_lr_curve(
    store: JobStore, finished: JobRecord
) -> None:
    with client(store) as http:
        view = http.get(f"/v1/jobs/{finished.id}/trials").json()
    search = [t for t in view["data"] if t["kind"] == "search"]
    confirmation = [t for t in view["data"] if t["kind"] == "confirmation"]
    assert view["metric"] == "val_loss" and view["count"] == len(view["data"])
    assert [t["number"] for t in search] == list(range(N_TRIALS))
    assert confirmation and all(t["candidate"] and t["seed"] is not None for t in confirmation)
    for trial in search:
        assert trial["family"] in {"constant", "cosine"}
        assert trial["state"] in {"COMPLETE", "PRUNED"}
        assert trial["epochs"] and "val_loss" in trial["epochs"][0]
        rows = sum(count for _, count in trial["lr_steps"])  # run-length encoded
        assert rows == len(trial["epochs"]) * (rows // len(trial["epochs"])) > 0
        if trial["state"] == "PRUNED":
            assert trial["reason"]


def test_the_trials_export_as_csv_one_row_each_as_the_json_lists_them(
    store: JobStore, finished: JobRecord
) -> None:
    import csv
    import io

    with client(store) as http:
        view = http.get(f"/v1/jobs/{finished.id}/trials").json()
        exported = http.get(f"/v1/jobs/{finished.id[:8]}/trials.csv")
        page = http.get(f"/jobs/{finished.id}")
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == view["count"] > 0
    for row, trial in zip(rows, view["data"], strict=True):
        assert (row["kind"], int(row["number"]), row["state"]) == (
            trial["kind"],
            trial["number"],
            trial["state"],
        )
        assert int(row["epochs"]) == len(trial["epochs"])
        assert row["value"] == ("" if trial["value"] is None else repr(trial["value"]))
        assert row["seed"] == ("" if trial["seed"] is None else str(trial["seed"]))
    assert 'id="trials-csv"' in page.text  # the job page links to it


def test_the_range_test_is_null_with_its_progress_before_it_has_run(store: JobStore) -> None:
    job = store.submit(small_job(n_trials=2))
    with client(store) as http:
        finder = http.get(f"/v1/jobs/{job.id}/finder")
        trials = http.get(f"/v1/jobs/{job.id}/trials")
        missing = http.get("/v1/jobs/no-such-job/finder")
    assert finder.status_code == 200, finder.text
    assert finder.json()["range_test"] is None and finder.json()["steps_total"] == 0
    assert trials.json()["data"] == [] and trials.json()["status"] == "queued"
    assert missing.status_code == 404 and "no-such-job" in missing.json()["detail"]


def test_pages_and_vendored_assets_are_served_with_their_types(store: JobStore) -> None:
    with client(store) as http:
        for path in ("/", "/jobs/anything", "/submit", "/login"):
            page = http.get(path)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "/ui/lrtune.css" in page.text and "cdn" not in page.text.lower()
            # the shared top (static/_layout.html), then the page's own title and body
            head, _, body = page.text.partition("</head>")
            assert page.text.startswith("<!doctype html>") and page.text.count("<title>") == 1
            assert "<title>lrtune · " in head and "<header>" in body and "<main>" in body
        script = http.get("/ui/vendor/uplot/uPlot.iife.min.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]
        assert script.text.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")
        assert "MIT" in http.get("/ui/vendor/uplot/LICENSE").text
        assert http.get("/ui/job.js").status_code == 200
        assert http.get("/ui/../main.py").status_code == 404
        assert "/" not in {p for p in http.get("/openapi.json").json()["paths"]}


def test_the_login_cookie_authenticates_reads_writes_and_the_event_stream(
    store: JobStore, caplog: pytest.LogCaptureFixture
) -> None:
    for server_side in ("lrtune", "uvicorn", "fastapi", "starlette"):  # not the test's client
        caplog.set_level(logging.DEBUG, logger=server_side)
    job = store.submit(small_job(n_trials=2))
    with client(store, api_token=TOKEN, api_token_for_reads=True) as http:
        assert http.get("/v1/jobs").status_code == 401
        assert http.get("/").status_code == 200  # pages hold no data
        wrong = http.post("/login", data={"token": "guess", "next": "/"})
        assert wrong.status_code == 303 and wrong.headers["location"].startswith("/login?error")
        assert TOKEN_COOKIE not in wrong.cookies and "guess" not in wrong.text
        ok = http.post("/login", data={"token": TOKEN, "next": f"/jobs/{job.id}"})
        assert ok.status_code == 303 and ok.headers["location"] == f"/jobs/{job.id}"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert http.get("/v1/jobs").status_code == 200  # httpx keeps the cookie
        with http.stream("GET", f"/v1/jobs/{job.id}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
        assert http.post(f"/v1/jobs/{job.id}/cancel").status_code == 200
        http.cookies.set(TOKEN_COOKIE, "forged")
        refused = http.get("/v1/jobs")
        assert refused.status_code == 401 and "forged" not in refused.text
        assert (
            http.post("/login", data={"token": TOKEN, "next": "//evil.example"}).headers["location"]
            == "/"
        )
    assert TOKEN not in caplog.text and "forged" not in caplog.text


def test_serving_the_finder_and_trials_loads_no_torch(tmp_path) -> None:
    code = f"""
        from fastapi.testclient import TestClient
        from lrtune.api import ApiSettings, create_app
        from lrtune.jobs import JobStore
        from lrtune.spec import JobSpec
        url = "sqlite:///{tmp_path / "jobs.db"}"
        store = JobStore(url)
        job = store.submit(JobSpec.model_validate(
            {{"model": {{"name": "logreg"}}, "dataset": {{"name": "wine"}}}}))
        http = TestClient(create_app(ApiSettings(database_url=url), store=store),
            base_url="http://127.0.0.1")
        assert http.get("/").status_code == 200
        assert http.get(f"/v1/jobs/{{job.id}}/finder").status_code == 200
        assert http.get(f"/v1/jobs/{{job.id}}/trials").status_code == 200
    """
    assert "torch" not in heavy_modules_after(code)


def test_reading_a_study_does_not_wait_for_the_sqlite_write_lock(tmp_path) -> None:
    """A worker holding SQLite's write lock (its transactions begin IMMEDIATE) does not hold
    up the dashboard's reads of the study."""
    import sqlite3

    path = tmp_path / "jobs.db"
    sqlite_store = JobStore(f"sqlite:///{path}")
    spec = small_job(n_trials=2, epochs=1, families=["constant"], confirm_seeds=0)
    job = sqlite_store.submit(spec)
    Worker(sqlite_store, device="cpu", poll_s=0.05).run(once=True)
    with client(sqlite_store) as http, contextlib.closing(sqlite3.connect(path)) as writer:
        assert http.get(f"/v1/jobs/{job.id}/finder").status_code == 200  # storage opened
        writer.execute("BEGIN IMMEDIATE")  # what a worker's write transaction holds
        for url_path in (f"/v1/jobs/{job.id}/finder", f"/v1/jobs/{job.id}/trials"):
            answer = http.get(url_path, timeout=10)
            assert answer.status_code == 200 and answer.elapsed.total_seconds() < 5
        writer.rollback()
