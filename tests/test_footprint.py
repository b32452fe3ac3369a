"""Jobs that cannot fit are refused: at submit over real HTTP and through ``lrtune submit
--database`` (the estimate against ``LRTUNE_MAX_JOB_GB``), and by a worker whose device has less
free memory than the estimate; the estimate checked against a real range test's peak memory.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from live_api import serve
from test_api import assert_field_error
from test_jobs_cli import run

from lrtune.api import ApiSettings, create_app
from lrtune.jobs import JobStatus, JobStore, upgrade
from lrtune.jobs.settings import StoreSettings
from lrtune.spec import JobSpec

# The three examples (defect 5 of issue 15), each admitted before the estimate.
WIDE_CONV = {
    "model": {
        "name": "sequential",
        "params": {
            "layers": [
                {"type": "reshape", "shape": [1, 8, 8]},
                {"type": "conv2d", "out_channels": 65536, "kernel_size": 3, "padding": 1},
                {"type": "relu"},
                {"type": "global_pool"},
                {"type": "linear", "out_features": 10},
            ]
        },
    },
    "dataset": {"name": "digits"},
    "batch_size": 256,
}
DEEP_MLP = {
    "model": {"name": "mlp", "params": {"hidden": [4096] * 8}},
    "dataset": {"name": "digits"},
    "optimizer": {"name": "adam"},
    "range_test": {"seeds": 16},
}
DIGITS_MLP = {"model": {"name": "mlp", "params": {"hidden": [64]}}, "dataset": {"name": "digits"}}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[httpx.Client]:
    """An API on a fresh SQLite store, with a large upload cap for the wide upload."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    settings = ApiSettings(database_url=url, max_upload_bytes=64 << 20, max_body_bytes=64 << 20)
    with serve(create_app(settings)) as base, httpx.Client(base_url=base, timeout=120) as client:
        yield client


def test_jobs_that_cannot_fit_are_refused_with_the_estimate_and_the_cap(
    api: httpx.Client,
) -> None:
    detail = assert_field_error(api.post("/v1/jobs", json=WIDE_CONV), ["body", "batch_size"])
    assert "GB of memory, more than the cap of 8 GB (LRTUNE_MAX_JOB_GB)" in detail
    assert "smaller batch_size" in detail

    detail = assert_field_error(
        api.post("/v1/jobs", json=DEEP_MLP), ["body", "range_test", "seeds"]
    )
    assert "the job needs about 45.5 GB of memory, more than the cap of 8 GB" in detail
    assert "117,776,394 parameters" in detail

    # An upload of 3.3M features: a [4096] hidden layer over it is 13.5 billion parameters.
    buffer = io.BytesIO()
    x = np.zeros((12, 3_300_000), dtype=np.uint8)
    x[:, 0] = np.arange(12)
    np.savez_compressed(buffer, x=x, y=np.arange(12) % 2)
    upload = api.post("/v1/datasets", files={"file": ("wide.npz", buffer.getvalue())})
    assert upload.status_code == 201, upload.text
    wide = {
        "model": {"name": "mlp", "params": {"hidden": [4096]}},
        "dataset": {"name": "uploaded", "params": {"id": upload.json()["id"]}},
        "range_test": {"seeds": 1},
    }
    detail = assert_field_error(api.post("/v1/jobs", json=wide), ["body", "model", "params"])
    assert "13,516,812,290 parameters" in detail
    assert "use a smaller model" in detail
    assert api.get("/v1/jobs").json()["data"] == []


def test_a_normal_job_is_admitted(api: httpx.Client) -> None:
    assert api.post("/v1/jobs", json=DIGITS_MLP).status_code == 201


def test_the_compute_cap_refuses_at_the_search(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    settings = ApiSettings(database_url=url, max_job_tflops=0.01)
    with serve(create_app(settings)) as base, httpx.Client(base_url=base, timeout=60) as client:
        response = client.post("/v1/jobs", json=DIGITS_MLP)
    detail = assert_field_error(response, ["body", "search", "n_trials"])
    assert "TFLOPs of training, more than the cap of 0.01 TFLOPs (LRTUNE_MAX_JOB_TFLOPS)" in detail


def test_cli_submit_to_the_database_refuses_a_job_that_cannot_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    job = tmp_path / "deep.json"
    job.write_text(json.dumps(DEEP_MLP))
    code, out, err = run(capsys, "submit", str(job), "--database", url)
    assert code == 2, (out, err)
    assert "45.5 GB of memory, more than the cap of 8 GB (LRTUNE_MAX_JOB_GB)" in err
    assert "Traceback" not in err
    assert JobStore(url).count() == 0


def test_a_worker_fails_a_job_its_free_memory_cannot_hold(tmp_path: Path) -> None:
    from lrtune.workers.loop import Worker

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    job = JobStore(url).submit(JobSpec.model_validate(DIGITS_MLP))
    settings = StoreSettings(database_url=url, worker_free_memory_gb=1e-4)  # 100 kB
    worker = Worker(JobStore(url, settings=settings), device="cpu")
    worker.run(max_jobs=1, once=True)
    finished = JobStore(url).get(job.id)
    assert finished.status is JobStatus.FAILED
    assert "but cpu has 0.0001 GB free" in (finished.error or "")


MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from lrtune.spec import JobSpec
    from lrtune.training import TrainingSetup
    from lrtune.tuner import range_test
    torch.set_num_threads(1)
    setup = TrainingSetup.from_spec(JobSpec.model_validate(json.loads(sys.argv[1])), "cpu")
    setup.task.data  # the data on the device, as the worker holds it
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    before = rss()
    range_test(setup, progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "peak": peak}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc")
def test_the_estimate_is_within_a_factor_2_of_a_range_tests_peak_memory() -> None:
    spec: dict[str, Any] = {
        "model": {"name": "mlp", "params": {"hidden": [2048, 2048, 2048]}},
        "dataset": {"name": "digits"},
        "optimizer": {"name": "adam"},
        "batch_size": 32,
        "range_test": {"seeds": 4, "num_iter": 5},
    }
    from lrtune.footprint import estimate

    cost = estimate(JobSpec.model_validate(spec), ((64,), 10), 1797)
    assert cost is not None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    measured = json.loads(done.stdout.splitlines()[-1])
    used = measured["peak"] - measured["before"]
    print(f"estimate {cost.memory_bytes / 1e6:.0f} MB, measured {used / 1e6:.0f} MB")
    assert cost.memory_bytes / 2 <= used <= cost.memory_bytes * 2
