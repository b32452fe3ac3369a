"""optuna-dashboard served by the API over the jobs' studies, over real HTTP (uvicorn), on a job
a real worker ran (SQLite and PostgreSQL): behind the token on every path, reads and writes;
the job's study listed and linked; lrtune's own paths untouched; off when turned off; and
nothing of it imported at the API's start.

The browser's view of it is in tests/test_dashboard_browser.py.
"""

from __future__ import annotations

import httpx
import pytest
from live_api import serve
from small_jobs import small_job
from test_dashboard_api import client
from test_imports import heavy_modules_after

from lrtune.api import ApiSettings, create_app
from lrtune.api.deps import TOKEN_COOKIE
from lrtune.api.routes.optuna_dashboard import PATHS
from lrtune.jobs import JobRecord, JobStatus, JobStore
from lrtune.workers.loop import Worker

TOKEN = "0ptuna-t0ken-never-shown"


@pytest.fixture
def finished(store: JobStore) -> JobRecord:
    """A tiny job run to its recommendation by a real worker (in this process)."""
    spec = small_job(n_trials=2, epochs=1, families=["constant", "cosine"], confirm_seeds=0)
    job = store.submit(spec)
    Worker(store, device="cpu", poll_s=0.05).run(once=True)
    job = store.get(job.id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    return job


def _study_id(http: httpx.Client, name: str, **kwargs: object) -> int:
    studies = http.get("/api/studies", **kwargs)  # type: ignore[arg-type]
    assert studies.status_code == 200, studies.text
    ids = {s["study_name"]: s["study_id"] for s in studies.json()["study_summaries"]}
    assert name in ids, sorted(ids)
    return ids[name]


def test_every_optuna_dashboard_path_needs_the_token_reads_and_writes(
    store: JobStore, finished: JobRecord
) -> None:
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with client(store, api_token=TOKEN) as http:
        study_id = _study_id(http, finished.study_name, headers=bearer)
        refused = {
            "GET /api/studies": http.get("/api/studies"),
            "GET /api/meta": http.get("/api/meta"),
            "GET /dashboard": http.get("/dashboard"),
            "GET /static/bundle.js": http.get("/static/bundle.js"),
            "GET /csv/<id>": http.get(f"/csv/{study_id}"),
            "DELETE /api/studies/<id>": http.delete(f"/api/studies/{study_id}"),
            "POST /api/trials/<id>/tell": http.post("/api/trials/1/tell", json={"state": "Fail"}),
            "PUT /api/studies/<id>/note": http.put(
                f"/api/studies/{study_id}/note", json={"version": 1, "body": "x"}
            ),
            "POST /incompatible-rdb-schema": http.post("/incompatible-rdb-schema"),
            "wrong bearer": http.get("/api/studies", headers={"Authorization": "Bearer guess"}),
        }
        for what, answer in refused.items():
            assert answer.status_code == 401, (what, answer.status_code, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer" and TOKEN not in answer.text
        # nothing was written: the study and its trials are all there
        assert _study_id(http, finished.study_name, headers=bearer) == study_id
        detail = http.get(f"/api/studies/{study_id}", headers=bearer).json()
        assert [t["state"] for t in detail["trials"]] == ["Complete", "Complete"]

        # A browser navigating there is sent to the login, then back.
        page = http.get("/dashboard/studies/1", headers={"Accept": "text/html"})
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=/dashboard/studies/1"
        login = http.post("/login", data={"token": TOKEN, "next": "/dashboard"})
        assert login.status_code == 303 and TOKEN_COOKIE in login.cookies
        assert _study_id(http, finished.study_name) == study_id  # the cookie lets it in
        for sender in ("cross-site", "same-site"):  # another site's page, or another port's
            forged = http.delete(f"/api/studies/{study_id}", headers={"Sec-Fetch-Site": sender})
            assert forged.status_code == 403 and sender in forged.json()["detail"]
        assert _study_id(http, finished.study_name) == study_id
        note = {"version": 1, "body": "from the dashboard's own page"}
        own = http.put(
            f"/api/studies/{study_id}/note", json=note, headers={"Sec-Fetch-Site": "same-origin"}
        )
        assert own.status_code == 204, own.text
        html = http.get("/dashboard", headers={"Accept": "text/html"})
        assert html.status_code == 200 and "/static/bundle.js" in html.text
        assert http.get("/static/bundle.js").status_code == 200


def test_the_jobs_study_is_listed_and_the_job_links_to_its_page(
    store: JobStore, finished: JobRecord
) -> None:
    with client(store) as http:  # no token: loopback-only, like the rest of the API
        study_id = _study_id(http, finished.study_name)
        link = http.get(f"/jobs/{finished.id}/optuna")
        assert link.status_code == 303
        assert link.headers["location"] == f"/dashboard/studies/{study_id}"
        page = http.get(link.headers["location"])
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        detail = http.get(f"/api/studies/{study_id}").json()
        assert detail["name"] == finished.study_name and len(detail["trials"]) == 2
        forged = http.delete(f"/api/studies/{study_id}", headers={"Sec-Fetch-Site": "cross-site"})
        assert forged.status_code == 403
        queued = store.submit(small_job(n_trials=2))
        pending = http.get(f"/jobs/{queued.id}/optuna")
        assert pending.status_code == 404 and "queued" in pending.json()["detail"]


OPTUNA_DASHBOARD_SAMPLES = (
    "/dashboard",
    "/dashboard/studies/1",
    "/api/meta",
    "/api/studies",
    "/api/studies/1",
    "/api/trials/1/tell",
    "/static/bundle.js",
    "/csv/1",
    "/favicon.ico",
    "/artifacts/1/abc",
    "/incompatible-rdb-schema",
)


def test_lrtune_keeps_its_own_paths_and_none_is_under_optuna_dashboards(
    store: JobStore,
) -> None:
    from lrtune.api.routes import dashboard

    assert all(sample.startswith(PATHS) for sample in OPTUNA_DASHBOARD_SAMPLES)
    app = create_app(ApiSettings(database_url=store.url), store=store)
    ours = list(app.openapi()["paths"]) + [route.path for route in dashboard.router.routes]
    assert ours and not [p for p in ours if p.startswith(PATHS)], "an lrtune path collides"
    without = create_app(ApiSettings(database_url=store.url, optuna_dashboard=False), store=store)
    with serve(without) as url:  # lrtune alone answers none of optuna-dashboard's paths
        for sample in OPTUNA_DASHBOARD_SAMPLES:
            assert httpx.get(f"{url}{sample}").json() == {"detail": "Not Found", "errors": []}
    with serve(app) as url:
        assert httpx.get(f"{url}/").text.count("/ui/jobs.js") == 1  # lrtune's jobs page
        assert httpx.get(f"{url}/ui/lrtune.css").status_code == 200
        unknown = httpx.get(f"{url}/no/such/page")
        assert unknown.status_code == 404 and unknown.json()["detail"] == "Not Found"
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.get(f"{url}/api/meta").status_code == 200  # optuna-dashboard's


def test_turned_off_its_paths_are_404(store: JobStore, finished: JobRecord) -> None:
    with client(store, optuna_dashboard=False) as http:
        for path in ("/dashboard", "/api/studies", "/static/bundle.js"):
            assert http.get(path).status_code == 404, path
        link = http.get(f"/jobs/{finished.id}/optuna")
        assert link.status_code == 404 and "LRTUNE_OPTUNA_DASHBOARD" in link.json()["detail"]


def test_the_api_starts_without_optuna_dashboard_and_loads_it_on_its_first_request(
    tmp_path,
) -> None:
    code = f"""
        import sys
        from fastapi.testclient import TestClient
        from lrtune.api import ApiSettings, create_app
        from lrtune.jobs import upgrade
        url = "sqlite:///{tmp_path / "jobs.db"}"
        upgrade(url)
        http = TestClient(create_app(ApiSettings(database_url=url)), base_url="http://127.0.0.1")
        assert http.get("/").status_code == 200
        started = {{"optuna", "optuna_dashboard", "bottle"}} & set(sys.modules)
        assert not started, started
        assert http.get("/api/meta").status_code == 200
        assert "optuna_dashboard" in sys.modules
    """
    # optuna (and sklearn, which optuna-dashboard imports) came with its request; never torch
    assert "torch" not in heavy_modules_after(code)
