"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

uvicorn serves the API and a real ``lrtune worker`` process runs the jobs, both on one SQLite
file. The test submits a job through the form (after a 422 shown inline), follows the job
page as the worker runs it (progress, the range test's chart, the trials, the
recommendation), copies the snippet, and measures the job page's transfer size and its time
to the first drawn chart. Another opens optuna-dashboard, which the API serves, on a finished
job's study, through the login. Screenshots and the figures go to
``test-artifacts/dashboard/`` (gitignored): look at them.

Skipped when Playwright or ``/usr/bin/chromium`` is missing, unless ``LRTUNE_BROWSER_TESTS``
is ``require`` (``.ci/run`` sets it, after installing Chromium): then their absence fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lrtune.jobs import upgrade

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"

REQUIRED = os.environ.get("LRTUNE_BROWSER_TESTS") == "require"

if REQUIRED:
    import playwright.sync_api as playwright_sync

    assert CHROMIUM.exists(), "LRTUNE_BROWSER_TESTS=require, but /usr/bin/chromium is missing"
else:
    playwright_sync = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin"),
]

# Slow enough to watch (a long range test, a few epochs per trial), small enough for CI.
JOB = {
    "name": "browser-wine",
    "model": {"params": {}},
    "dataset": {"params": {"val_fraction": 0.25}},
    "optimizer": {"name": "adamw", "weight_decay": 0.01},
    "batch_size": 16,
    "range_test": {"seeds": 3, "num_iter": 300},
    "search": {
        "n_trials": 5,
        "epochs": 4,
        "families": ["constant", "cosine", "onecycle"],
        "confirm_seeds": 2,
    },
}


def _env(url: str) -> dict[str, str]:
    return {
        **os.environ,
        "LRTUNE_DATABASE_URL": url,
        "OMP_NUM_THREADS": "1",
        "LRTUNE_TORCH_THREADS": "1",
        "LRTUNE_SSE_POLL_S": "0.25",
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    """uvicorn (the API and dashboard) and one ``lrtune worker``, on one SQLite file."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    port = _free_port()
    server = [sys.executable, "-m", "uvicorn", "lrtune.api.main:create_app", "--factory"]
    server += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    worker = [sys.executable, "-m", "lrtune.cli", "worker", "--database", url, "--lease-s", "20"]
    with (
        _process(server, _env(url), ARTIFACTS / "uvicorn.log"),
        _process(worker, _env(url), ARTIFACTS / "worker.log"),
    ):
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, (ARTIFACTS / "uvicorn.log").read_text()
            time.sleep(0.2)
        yield base


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_submit_watch_and_copy_in_a_real_browser(service: str) -> None:
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=service)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        # The form: the registry fills the selects; a bad field is a 422 shown beside it.
        page.goto(f"{service}/submit")
        page.wait_for_selector("#submit-form[data-ready='1']")
        assert page.locator("#model option[value='logreg']").count() == 1
        page.select_option("#model", "logreg")
        page.select_option("#dataset", "wine")
        bad = {**JOB, "search": {**JOB["search"], "n_trials": 0}}
        page.fill("#spec", json.dumps(bad, indent=2))
        page.click("#submit")
        error = page.wait_for_selector("#spec-errors li[data-loc='search.n_trials']")
        assert "greater than or equal" in error.inner_text()
        _shot(page, "1-submit-422")
        page.fill("#spec", json.dumps(JOB, indent=2))
        page.click("#submit")
        page.wait_for_url("**/jobs/*")
        job_id = page.url.rstrip("/").split("/")[-1]

        # Live: the page follows the job as the worker runs it.
        started = "#job-status [data-status]:not([data-status='queued'])"
        page.wait_for_selector(started, timeout=60_000)
        _shot(page, "2-job-running")
        # the finished range test's chart (a partial one, growing from the live points, comes
        # first while the range test runs)
        finished = "#finder-chart[data-drawn='1'][data-partial='0'] canvas"
        page.wait_for_selector(finished, timeout=120_000)
        assert page.locator("#suggestions tbody tr").count() >= 3
        assert "chosen" in page.locator("#finder-note").inner_text()
        page.wait_for_selector("#trials tbody tr", timeout=120_000)
        _shot(page, "3-job-searching")
        page.wait_for_selector("#rec-body:not([hidden])", timeout=240_000)
        assert page.locator("#job-status [data-status='succeeded']").count() == 1
        assert page.locator("#trials tbody tr").count() >= JOB["search"]["n_trials"]
        page.wait_for_selector("#trials-chart[data-drawn='1'] canvas")
        page.wait_for_selector("#schedule-chart[data-drawn='1'] canvas")
        assert page.locator("#confirmation tbody tr.recommended").count() == 1
        snippet = page.locator("#snippet").inner_text()
        assert "lr_scheduler" in snippet or "optim" in snippet
        page.click("#copy")
        page.wait_for_selector("#copy:text('Copied')")
        assert page.evaluate("navigator.clipboard.readText()") == snippet
        assert page.locator("#cancel").is_hidden()
        _shot(page, "4-job-succeeded")

        # The jobs list shows it finished.
        page.goto(service)
        page.wait_for_selector(f"tr[data-job='{job_id}'] [data-status='succeeded']")
        page.wait_for_selector("#optuna-note:not([hidden]) a[href='/dashboard']")
        _shot(page, "5-jobs")

        figures = _measure_job_page(browser, f"{service}/jobs/{job_id}")
        (ARTIFACTS / "figures.json").write_text(json.dumps(figures, indent=2))
        print("dashboard job page:", figures)
        assert errors == [], errors
        browser.close()


def _measure_job_page(browser, url: str) -> dict[str, float]:
    """Transfer size (bytes over the wire, cold cache) and time to the first drawn chart."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    started = time.monotonic()
    page.goto(url)
    page.wait_for_function("window.__firstChartAt !== undefined", timeout=30_000)
    wall_ms = (time.monotonic() - started) * 1000
    page.wait_for_load_state("networkidle")
    figures = page.evaluate(
        """() => {
          const nav = performance.getEntriesByType("navigation")[0];
          const res = performance.getEntriesByType("resource");
          const sum = (xs, key) => xs.reduce((a, e) => a + (e[key] || 0), 0);
          return {
            requests: res.length + 1,
            transfer_bytes: nav.transferSize + sum(res, "transferSize"),
            decoded_bytes: nav.decodedBodySize + sum(res, "decodedBodySize"),
            first_chart_ms: window.__firstChartAt,
            dom_content_loaded_ms: nav.domContentLoadedEventEnd,
            by_resource: Object.fromEntries(res.map(
              (e) => [new URL(e.name).pathname, [e.transferSize, e.decodedBodySize]])),
          };
        }"""
    )
    figures["first_chart_wall_ms"] = round(wall_ms, 1)
    context.close()
    return figures


def test_a_range_test_curve_grows_from_progress_events_behind_the_login(tmp_path: Path) -> None:
    """Progress events carrying range-test points ([lr, loss, seed]) draw a growing curve; the
    page gets in with the login cookie (EventSource sends no header), and cancels the job."""
    from live_api import serve
    from small_jobs import small_job

    from lrtune.api import ApiSettings, create_app
    from lrtune.jobs import JobStore

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = JobStore(url)
    job = store.submit(small_job(n_trials=2))
    assert store.claim("test-worker", lease_s=60, job_id=job.id) is not None  # now finding
    settings = ApiSettings(
        database_url=url, api_token="br0wser-t0ken", api_token_for_reads=True, sse_poll_s=0.1
    )
    lrs = [1e-5 * 1.1**k for k in range(120)]

    def send(start: int, stop: int) -> None:
        points = [[lrs[k], 2.0 - k / 100, s] for k in range(start, stop) for s in (0, 1)]
        progress = {"range_test_steps_done": 2 * stop, "range_test_steps_total": 2 * len(lrs)}
        store.append_event(job.id, "progress", {**progress, "points": points})

    send(0, 40)
    with (
        serve(create_app(settings, store=store)) as base,
        playwright_sync.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/jobs/{job.id}")
        page.wait_for_url("**/login?next=*")  # the API said 401
        page.fill("#token", "wrong")
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#login-error:not([hidden])")
        _shot(page, "0-login-refused")
        page.fill("#token", "br0wser-t0ken")
        page.click("#login-form button[type=submit]")
        page.wait_for_url(f"**/jobs/{job.id}")
        page.wait_for_selector("#finder-chart[data-points='80'] canvas", timeout=30_000)
        _shot(page, "6-range-test-partial")
        send(40, 120)
        page.wait_for_selector("#finder-chart[data-points='240']", timeout=30_000)
        assert "range test 240/240 steps" in page.locator("#job-progress-text").inner_text()
        assert page.locator("#job-status [data-status='finding']").count() == 1
        _shot(page, "7-range-test-grown")
        page.on("dialog", lambda dialog: dialog.accept())  # "Cancel this job?"
        page.click("#cancel")
        page.wait_for_selector("#job-status [data-status='cancelled']", timeout=30_000)
        assert page.locator("#cancel").is_hidden()
        assert store.get(job.id).status.value == "cancelled"  # through the cookie's auth
        browser.close()


def test_a_dataset_uploaded_on_the_submit_page_becomes_the_jobs_dataset(tmp_path: Path) -> None:
    """A CSV chosen in the form: a missing target column is a 422 shown under the upload, the
    right one selects the upload as the dataset, and the job submitted names it by id."""
    from live_api import serve

    from lrtune.api import ApiSettings, create_app
    from lrtune.jobs import JobStore

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = JobStore(url)
    csv = tmp_path / "blobs.csv"
    rows = [f"{i % 3 + 0.1 * i},{(i * 7) % 5},{'abc'[i % 3]}" for i in range(60)]
    csv.write_text("width,height,kind\n" + "\n".join(rows) + "\n")
    with (
        serve(create_app(ApiSettings(database_url=url), store=store)) as base,
        playwright_sync.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base}/submit")
        page.wait_for_selector("#submit-form[data-ready='1']")
        page.set_input_files("#upload-file", str(csv))
        page.fill("#upload-target", "label")
        page.click("#upload")
        refused = page.wait_for_selector("#upload-errors li[data-loc='target']")
        assert "its columns are width, height, kind" in refused.inner_text()
        page.fill("#upload-target", "kind")
        page.click("#upload")
        page.wait_for_selector("#upload-box[data-upload-id]")
        upload_id = page.get_attribute("#upload-box", "data-upload-id")
        assert "x 60×2, 3 classes" in page.locator("#upload-status").inner_text()
        assert page.eval_on_selector("#dataset", "select => select.value") == "uploaded"
        assert page.locator(f"#upload-choice option[value='{upload_id}']").count() == 1
        _shot(page, "8-submit-uploaded")
        spec = json.loads(page.input_value("#spec"))
        spec["model"] = {"params": {}}
        page.fill("#spec", json.dumps(spec))
        page.click("#submit")
        page.wait_for_url("**/jobs/*")
        job = store.get(page.url.rstrip("/").split("/")[-1])
        assert (job.spec.dataset.name, job.spec.dataset.params["id"]) == ("uploaded", upload_id)
        assert errors == [], errors
        browser.close()


def test_optuna_dashboard_shows_a_finished_jobs_study_behind_the_login(tmp_path: Path) -> None:
    """optuna-dashboard, served by the API: the browser is sent to the login first, then the
    job page's link opens the job's study there, drawn by optuna-dashboard's own page."""
    from live_api import serve
    from small_jobs import small_job

    from lrtune.api import ApiSettings, create_app
    from lrtune.jobs import JobStatus, JobStore
    from lrtune.workers.loop import Worker

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = JobStore(url)
    spec = small_job(n_trials=4, epochs=2, families=["constant", "cosine"], confirm_seeds=0)
    job = store.submit(spec)
    Worker(store, device="cpu", poll_s=0.05).run(once=True)
    assert store.get(job.id).status is JobStatus.SUCCEEDED
    settings = ApiSettings(database_url=url, api_token="0ptuna-br0wser")
    with (
        serve(create_app(settings, store=store)) as base,
        playwright_sync.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base}/dashboard")
        page.wait_for_url("**/login?next=/dashboard")  # no cookie: optuna-dashboard is shut
        page.fill("#token", "0ptuna-br0wser")
        page.click("#login-form button[type=submit]")
        page.wait_for_url(f"{base}/dashboard")
        page.wait_for_selector(f"text={job.study_name}", timeout=30_000)
        _shot(page, "8-optuna-dashboard-studies")

        page.goto(f"{base}/jobs/{job.id}")
        link = page.wait_for_selector("#optuna-link:not([hidden])")
        assert link.get_attribute("href") == f"/jobs/{job.id}/optuna"
        assert page.get_attribute("#finder-png", "href") == f"/v1/jobs/{job.id}/finder.png"
        page.wait_for_selector("#rec-body:not([hidden])")
        _shot(page, "8-job-with-its-links")
        link.click()
        page.wait_for_url("**/dashboard/studies/*")
        page.wait_for_selector(f"text={job.study_name}", timeout=30_000)
        page.wait_for_selector(".js-plotly-plot", timeout=30_000)  # its history chart
        page.wait_for_timeout(1000)  # plotly's transitions
        _shot(page, "9-optuna-dashboard-study")
        assert errors == [], errors
        browser.close()


def _lr_free_winner(store) -> str:
    """A real tiny job with all four baselines, stored with prodigy ahead on every confirmation
    seed (as a job where tuning did not beat it would be): its job id."""
    from live_api import finish_with
    from small_jobs import small_job

    from lrtune.lr_free import LR_FREE
    from lrtune.recommendation import Recommendation
    from lrtune.tuner import tune

    baselines = ["constant_at_suggestion", "optimizer_default", *LR_FREE]
    search = {"families": ["cosine"], "confirm_seeds": 2, "baselines": baselines}
    spec = small_job(n_trials=2, epochs=2, **search)
    real = tune(spec, progress=False)
    sign = 1.0 if real.direction == "maximize" else -1.0
    best = max(sign * c.mean for c in [*real.finalists, *real.baselines] if c.seed_values)

    def ahead(c):  # prodigy, better than every other candidate on every seed
        values = [s.model_copy(update={"value": sign * (best + 0.05)}) for s in c.seed_values]
        return c.model_copy(update={"seed_values": values}) if c.lr_free == "prodigy" else c

    fields = ("study_name", "range_test", "bounds", "finalists", "confirm_seeds", "steps_per_epoch")
    fields += ("group_multipliers", "n_trials", "n_confirmation", "history")
    kept = {k: getattr(real, k) for k in fields}
    rec = Recommendation.build(spec=spec, baselines=[ahead(c) for c in real.baselines], **kept)
    assert rec.best.lr_free == "prodigy", rec.verdict
    return finish_with(store, spec, rec).id


def _cancelled_after_its_search(store, url: str) -> str:
    """A job whose search trials ran, cancelled before its confirmation: its job id."""
    from small_jobs import small_job

    from lrtune.training import TrainingSetup
    from lrtune.tuner import prepare_study, run_trials

    spec = small_job(n_trials=2, epochs=2, families=["cosine"])
    job = store.submit(spec)
    study = prepare_study(spec, url, progress=False, study_name=job.study_name)
    run_trials(study, TrainingSetup.from_spec(spec), progress=False)
    store.cancel(job.id)
    return job.id


def test_a_learning_rate_free_winner_and_a_provisional_answer_on_the_job_page(
    tmp_path: Path,
) -> None:
    """The recommendation panel lists the Prodigy and schedule-free baselines in its
    confirmation table, with Prodigy the recommended row, its LR labelled a multiplier (not a
    step size); a cancelled job's best trial shows under the provisional banner."""
    from live_api import serve

    from lrtune.api import ApiSettings, create_app
    from lrtune.jobs import JobStore

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    store = JobStore(url)
    winner, cancelled = _lr_free_winner(store), _cancelled_after_its_search(store, url)
    with (
        serve(create_app(ApiSettings(database_url=url), store=store)) as base,
        playwright_sync.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        page.goto(f"{base}/jobs/{winner}")
        page.wait_for_selector("#rec-body:not([hidden])")
        page.wait_for_selector("#schedule-chart[data-drawn='1'] canvas")
        cells = "rows => rows.map(r => [r.className, ...[...r.cells].map(c => c.innerText)])"
        rows = [row[:4] for row in page.eval_on_selector_all("#confirmation tbody tr", cells)]
        by_name = {name: (cls, role, family) for cls, name, role, family in rows}
        assert by_name["prodigy"] == ("recommended", "recommended", "prodigy (cosine)"), rows
        assert by_name["schedule-free sgd"] == ("", "baseline", "schedule-free (constant)"), rows
        assert [name for cls, name, *_ in rows if cls == "recommended"] == ["prodigy"]
        summary = page.locator("#rec-summary").inner_text()
        assert "prodigy (cosine)" in summary and "LR multiplier" in summary, summary
        assert "Confirmed\nyes, on 2 seeds" in summary, summary
        assert page.locator("#rec-verdict").inner_text().startswith("tuning did not beat prodigy")
        assert page.locator("#rec-verdict-list li").count() == len(rows) - 1
        assert "LR multiplier" in page.locator("#schedule-title").inner_text()
        assert page.locator("#rec-provisional").is_hidden()
        assert "prodigyopt.Prodigy(" in page.locator("#snippet").inner_text()
        card = page.locator("#recommendation-card")
        card.screenshot(path=str(ARTIFACTS / "10-lr-free-winner.png"))

        page.goto(f"{base}/jobs/{cancelled}")
        page.wait_for_selector("#rec-body:not([hidden])")
        page.wait_for_selector("#schedule-chart[data-drawn='1'] canvas")
        banner = page.locator("#rec-provisional")
        assert banner.is_visible() and "the job was cancelled" in banner.inner_text()
        assert "not confirmed" in page.locator("#confirmation-title").inner_text()
        assert page.locator("#confirmation tbody tr.recommended").count() == 1
        assert "no (provisional)" in page.locator("#rec-summary").inner_text()
        card.screenshot(path=str(ARTIFACTS / "11-provisional.png"))
        assert errors == [], errors
        browser.close()


def _forty_trials(metric: str) -> list[dict]:
    """40 search trials as ``GET /v1/jobs/{id}/trials`` lists them: four families, most
    complete, some pruned (epochs counted from 1), two failed."""
    import math

    families = ["onecycle", "cosine", "constant", "step"]
    trials = []
    for n in range(40):
        state = "FAIL" if n in (7, 23) else "PRUNED" if n % 5 == 3 else "COMPLETE"
        epochs = 2 if state == "FAIL" else 4 if state == "PRUNED" else 10
        start, floor = 1.0 + 0.09 * (n % 7), 0.12 + 0.035 * ((n * 7) % 13)
        floor += 0.35 if state == "PRUNED" else 0.0  # behind the others when cut
        rate = 0.2 + 0.12 * ((n * 3) % 5)
        values = [floor + (start - floor) * math.exp(-rate * e) for e in range(epochs)]
        if state == "FAIL":
            values[-1] = start * 1.15  # diverged
        trials.append({
            "kind": "search", "number": n, "state": state, "family": families[n % 4],
            "params": {}, "schedule": None, "base_lr": 10 ** (-3 + 2 * ((n * 11) % 17) / 17),
            "value": values[-1], "status": state.lower(), "candidate": None, "seed": None,
            "reason": f"pruned after epoch {epochs} of 10" if state == "PRUNED" else None,
            "epochs": [{"epoch": e, metric: v} for e, v in enumerate(values)],
        })  # fmt: skip
    return trials


def _job_in_its_search(store, url: str) -> str:
    """A job whose range test (3 seeds) has run, now searching: its job id."""
    from small_jobs import small_job

    from lrtune.tuner import prepare_study

    extra = {"model": {"name": "mlp"}, "dataset": {"name": "digits"}}
    extra["range_test"] = {"seeds": 3, "num_iter": 150}
    spec = small_job(
        extra, n_trials=40, epochs=10, families=["onecycle", "cosine", "constant", "step"]
    )
    job = store.submit(spec)
    prepare_study(spec, url, progress=False, study_name=job.study_name)
    lease = store.claim("test-worker", lease_s=600, job_id=job.id)
    assert lease is not None
    store.advance(lease, "searching")
    return job.id


def test_the_trials_chart_highlights_a_hovered_trial_and_never_draws_one_red(
    tmp_path: Path,
) -> None:
    """40 trials: no legend of 40 entries but a key of the families; hovering a line
    highlights it and names its trial, family and value; a completed trial is never drawn
    in the failed colour, and the failed ones are. The range test's chart: one legend entry
    for the band, a dash of its own per seed, rule labels that do not overlap. Screenshots
    of both go to ``docs/images`` (the README shows them)."""
    from live_api import serve

    from lrtune.api import ApiSettings, create_app
    from lrtune.jobs import JobStore

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    store = JobStore(url)
    job_id = _job_in_its_search(store, url)
    metric = store.get(job_id).spec.search.metric
    trials = _forty_trials(metric)
    body = {"job_id": job_id, "status": "searching", "metric": metric, "direction": "minimize"}
    body |= {"data": trials, "count": len(trials)}
    with (
        serve(create_app(ApiSettings(database_url=url), store=store)) as base,
        playwright_sync.sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.route(f"**/v1/jobs/{job_id}/trials", lambda route: route.fulfill(json=body))
        page.goto(f"{base}/jobs/{job_id}")
        page.wait_for_selector("#trials-chart[data-drawn='1'] canvas")
        page.wait_for_selector("#finder-chart[data-drawn='1'] canvas")
        page.wait_for_timeout(300)

        # the colours: the failed red only for failed trials
        strokes = page.evaluate(
            "() => { const u = window.lrtuneCharts.trials;"
            " return u.series.slice(1).map((s, i) => s.stroke(u, i + 1)); }"
        )
        failed = "#dc2626"
        assert len(strokes) == 40
        for trial, stroke in zip(trials, strokes, strict=True):
            assert (stroke.lower() == failed) == (trial["state"] == "FAIL"), (trial, stroke)
        # no legend entry per trial: a key of the families, pruned and failed
        assert (
            page.locator("#trials-card .u-legend").count() == 0
            or not page.locator("#trials-card .u-legend").is_visible()
        )
        key = page.locator("#trials-key").inner_text()
        assert all(f in key for f in ("onecycle", "cosine", "constant", "step", "failed"))

        # hover trial #12 (complete, onecycle) at epoch 6: it is highlighted and named
        x, y = page.evaluate(
            "() => { const u = window.lrtuneCharts.trials, r = u.over.getBoundingClientRect();"
            " return [r.left + u.valToPos(6, 'x'), r.top + u.valToPos(u.data[13][5], 'y')]; }"
        )
        page.mouse.move(x, y)
        page.wait_for_selector("#trials-hover[data-trial='12']", timeout=5_000)
        hover = page.locator("#trials-hover").inner_text()
        assert "trial #12" in hover and "onecycle" in hover and "complete" in hover, hover
        assert f"{metric} epoch 6:" in hover, hover
        alphas = page.evaluate(
            "() => window.lrtuneCharts.trials.series.slice(1).map((s) => s.alpha ?? 1)"
        )
        assert alphas[12] == 1 and max(alphas[:12] + alphas[13:]) < 1, alphas
        page.locator("#trials-card").screenshot(path=str(ARTIFACTS / "12-trials-40.png"))

        # the range test: one band entry, seeds each their own dash, labels apart
        page.mouse.move(5, 5)
        legend = page.eval_on_selector_all(
            "#finder-card .u-legend .u-series",
            "rows => rows.filter(r => r.checkVisibility())"
            ".map(r => r.querySelector('.u-label').innerText)",
        )
        assert legend.count("band (25th–75th pct)") == 1 and "25th pct" not in legend, legend
        dashes = page.evaluate(
            "() => window.lrtuneCharts.finder.series.slice(1, 4).map((s) => String(s.dash))"
        )
        assert len(set(dashes)) == 3, dashes
        boxes = page.evaluate("() => window.lrtuneCharts.finder.markerLabels")
        assert len(boxes) >= 2, boxes
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                apart = a["x1"] <= b["x0"] or b["x1"] <= a["x0"] or a["y"] != b["y"]
                assert apart, (a, b)
        # hovering names each seed's loss at the cursor's LR, the nearest line highlighted
        x, y = page.evaluate(
            "() => { const u = window.lrtuneCharts.finder, r = u.over.getBoundingClientRect();"
            " const spread = (i) => Math.abs((u.data[2][i] ?? 0) - (u.data[3][i] ?? 1e9));"
            " let i = 0; u.data[0].forEach((_, j) => { if (spread(j) < 0.5 &&"
            " spread(j) > spread(i)) i = j; });"
            " const [x, y] = [u.valToPos(u.data[0][i], 'x'), u.valToPos(u.data[2][i], 'y')];"
            " return [r.left + x, r.top + y]; }"
        )
        page.mouse.move(x, y)
        page.wait_for_timeout(300)
        values = page.eval_on_selector_all(
            "#finder-card .u-legend .u-series", "rows => rows.map(r => r.innerText)"
        )
        assert [v for v in values if v.startswith("seed")] and all(
            not v.endswith("–") for v in values if v.startswith("seed")
        ), values
        page.locator("#finder-card").screenshot(path=str(ARTIFACTS / "13-range-test.png"))
        assert errors == [], errors
        browser.close()


@pytest.mark.parametrize("token", [None, "l0gin-t0ken"])
def test_log_in_shows_only_where_the_server_has_a_token(tmp_path: Path, token: str | None) -> None:
    from live_api import serve

    from lrtune.api import ApiSettings, create_app
    from lrtune.jobs import JobStore

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    settings = ApiSettings(database_url=url, api_token=token)
    with (
        serve(create_app(settings, store=JobStore(url))) as base,
        playwright_sync.sync_playwright() as p,
    ):
        assert httpx.get(f"{base}/readyz").json()["auth"] is (token is not None)
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{base}/submit")
        page.wait_for_function(
            "() => fetch('/readyz').then(() => true)"
        )  # health.js has read /readyz too
        page.wait_for_timeout(500)
        assert page.locator("header a[href='/login']").is_visible() is (token is not None)
        page.goto(f"{base}/login")
        page.wait_for_timeout(500)
        assert page.locator("#login-form").is_visible() is (token is not None)
        assert page.locator("#login-none").is_visible() is (token is None)
        browser.close()
