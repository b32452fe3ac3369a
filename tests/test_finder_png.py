"""``GET /v1/jobs/{id}/finder.png`` over real HTTP, on jobs a real worker runs (SQLite and
PostgreSQL): 404 with a hint before the first point, the growing curve while the range test
runs, the finished plot after, each a PNG that decodes, with an ETag that answers 304.

The PNGs go to ``test-artifacts/dashboard/`` (gitignored): look at them.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx
import pytest
from live_api import serve
from PIL import Image
from small_jobs import small_job
from test_imports import heavy_modules_after

from lrtune.api import ApiSettings, create_app
from lrtune.jobs import JobStatus, JobStore
from lrtune.plots import PNG_SIGNATURE
from lrtune.workers.loop import Worker

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard"
# Long enough to be caught running (several half-second progress reports), short to search.
LONG_RANGE_TEST = {"seeds": 3, "num_iter": 1500, "diverge_threshold": 1e9}
LIVE_SIZE, FINISHED_SIZE = (700, 450), (850, 450)  # the finished plot's legend is beside it


def _decoded(response: httpx.Response, size: tuple[int, int]) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content[:8] == PNG_SIGNATURE
    image = Image.open(io.BytesIO(response.content))
    image.load()  # decodes every row: a truncated or corrupt PNG raises
    assert image.format == "PNG" and image.size == size
    return image


def _wait_for(predicate, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_the_plot_is_404_then_grows_while_the_range_test_runs_then_is_the_finished_one(
    store: JobStore,
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    spec = small_job({"range_test": LONG_RANGE_TEST}, n_trials=2, epochs=1, families=["constant"])
    spec = spec.model_copy(update={"search": spec.search.model_copy(update={"confirm_seeds": 0})})
    job = store.submit(spec)
    app = create_app(ApiSettings(database_url=store.url), store=store)
    with serve(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        path = f"/v1/jobs/{job.id}/finder.png"
        before = http.get(path)
        assert before.status_code == 404
        assert (
            "queued" in before.json()["detail"]
            and f"/v1/jobs/{job.id}/finder" in (before.json()["detail"])
        )
        assert http.get("/v1/jobs/no-such-job/finder.png").status_code == 404

        worker = Worker(store, device="cpu", poll_s=0.05)
        thread = threading.Thread(target=worker.run, kwargs={"once": True}, daemon=True)
        thread.start()
        running: list[httpx.Response] = []

        def caught_running() -> bool:
            answer = http.get(path)
            if answer.status_code == 200 and store.get(job.id).status is JobStatus.FINDING:
                running.append(answer)
            return len(running) >= 2 and running[-1].headers["etag"] != running[0].headers["etag"]

        _wait_for(caught_running)
        first, grown = running[0], running[-1]
        _decoded(first, LIVE_SIZE)
        _decoded(grown, LIVE_SIZE)
        (ARTIFACTS / "finder-running.png").write_bytes(grown.content)
        thread.join(timeout=300)
        assert store.get(job.id).status is JobStatus.SUCCEEDED, store.get(job.id).error

        final = http.get(path)
        _decoded(final, FINISHED_SIZE)
        (ARTIFACTS / "finder-finished.png").write_bytes(final.content)
        assert final.headers["etag"] not in {r.headers["etag"] for r in running}
        assert final.content != grown.content
        unchanged = http.get(path, headers={"If-None-Match": final.headers["etag"]})
        assert unchanged.status_code == 304 and not unchanged.content
        assert unchanged.headers["etag"] == final.headers["etag"]
        stale = http.get(path, headers={"If-None-Match": grown.headers["etag"]})
        assert stale.status_code == 200 and stale.content[:8] == PNG_SIGNATURE


def test_the_finished_plot_marks_every_rule_the_chosen_one_and_shades_the_bounds(
    store: JobStore,
) -> None:
    from lrtune.study_view import open_reader, read_finder

    spec = small_job(n_trials=2, epochs=1, families=["constant"], confirm_seeds=0)
    job = store.submit(spec)
    Worker(store, device="cpu", poll_s=0.05).run(once=True)
    result, bounds = read_finder(open_reader(store.url), job.study_name)
    assert result is not None and bounds is not None
    ax = result.plot(bounds=bounds).axes[0]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert ax.get_xscale() == "log"
    assert "median" in labels and "25-75% of seeds" in labels and "seeds" in labels
    assert f"chosen {result.suggestion:.2g}" in labels
    assert f"search range {bounds.low:.2g}-{bounds.high:.2g}" in labels
    marked = [name for name, s in result.suggestions.items() if s.lr is not None]
    assert all(any(label.startswith(f"{name} ") for label in labels) for name in marked)


def test_the_png_is_documented_as_image_png_and_the_api_starts_without_matplotlib(
    tmp_path: Path,
) -> None:
    app = create_app(ApiSettings(database_url=f"sqlite:///{tmp_path / 'jobs.db'}"))
    operation = app.openapi()["paths"]["/v1/jobs/{job_id}/finder.png"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"image/png"}
    assert {"304", "404"} <= set(operation["responses"])
    code = f"""
        from lrtune.api import ApiSettings, create_app
        create_app(ApiSettings(database_url="sqlite:///{tmp_path / "jobs.db"}"))
        import sys
        assert "matplotlib" not in sys.modules, "matplotlib is for the first plot request"
    """
    assert heavy_modules_after(code) == []


@pytest.mark.parametrize("accept", ["image/png", "*/*"])
def test_a_job_that_failed_before_its_range_test_gets_a_404_that_says_so(
    store: JobStore, accept: str
) -> None:
    job = store.submit(small_job(n_trials=2))
    store.cancel(job.id)
    with serve(create_app(ApiSettings(database_url=store.url), store=store)) as url:
        answer = httpx.get(f"{url}/v1/jobs/{job.id}/finder.png", headers={"Accept": accept})
    assert answer.status_code == 404 and "cancelled" in answer.json()["detail"]
