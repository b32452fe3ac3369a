"""One admission path: ``POST /v1/jobs`` and ``lrtune submit --database`` refuse the same specs.

Each refused spec gets a 422 at the field to change over HTTP and one ``lrtune: error:`` line
with the same message and exit 2 from the CLI, and neither stores a job; a full queue is 429
over HTTP and exit 2 from the CLI. Both admit a model that only a live worker registered.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cli_runs import run_cli
from live_api import register_plugin_worker, serve

from lrtune.api import ApiSettings, create_app
from lrtune.exceptions import InvalidInputError, QueueFullError
from lrtune.jobs import JobStore
from lrtune.spec import JobSpec
from lrtune.upload_parsing import check_arrays

WINE = {"name": "wine"}
DIGITS = {"name": "digits"}
NO_FIT = [
    {"type": "reshape", "shape": [1, 8, 8]},
    {"type": "conv2d", "out_channels": 4, "kernel_size": 9},
    {"type": "flatten"},
    {"type": "linear", "out_features": 10},
]

REFUSED: dict[str, tuple[dict[str, Any], list[str | int]]] = {
    "unknown model": ({"model": {"name": "resnet9000"}, "dataset": WINE}, ["model", "name"]),
    "unknown dataset": (
        {"model": {"name": "mlp"}, "dataset": {"name": "imagenet"}},
        [
            "dataset",
            "name",
        ],
    ),
    "NUL in a model name": ({"model": {"name": "mlp\u0000"}, "dataset": WINE}, ["model", "name"]),
    "NUL in a param": (
        {"model": {"name": "mlp", "params": {"act": "relu\u0000"}}, "dataset": WINE},
        ["model", "params", "act"],
    ),
    "invalid model params": (
        {"model": {"name": "mlp", "params": {"hidden": "wide"}}, "dataset": WINE},
        ["model", "params"],
    ),
    "a layer that does not fit the data": (
        {"model": {"name": "sequential", "params": {"layers": NO_FIT}}, "dataset": DIGITS},
        ["model", "params", "layers", 1, "conv2d", "kernel_size"],
    ),
    "unknown upload": (
        {"model": {"name": "mlp"}, "dataset": {"name": "uploaded", "params": {"id": "f" * 64}}},
        ["dataset", "params", "id"],
    ),
    "too large": (
        {
            "model": {"name": "mlp", "params": {"hidden": [4096] * 8}},
            "dataset": WINE,
            "optimizer": {"name": "adam"},
            "range_test": {"seeds": 16},
        },
        [],
    ),
}


@pytest.fixture
def api(jobs_url: str, store: JobStore) -> Iterator[httpx.Client]:
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve(create_app(ApiSettings(database_url=jobs_url))))
        yield stack.enter_context(httpx.Client(base_url=url, timeout=60))


def submit_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, jobs_url: str, body: dict[str, Any]
) -> tuple[int, str, str]:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(body))
    return run_cli(capsys, "submit", str(path), "--database", jobs_url)


@pytest.mark.parametrize(("body", "loc"), REFUSED.values(), ids=REFUSED.keys())
def test_http_and_the_cli_refuse_the_same_spec_with_the_same_message(
    api: httpx.Client,
    store: JobStore,
    tmp_path: Path,
    jobs_url: str,
    capsys: pytest.CaptureFixture[str],
    body: dict[str, Any],
    loc: list[str | int],
) -> None:
    refused = api.post("/v1/jobs", json=body)
    assert refused.status_code == 422, refused.text
    error = refused.json()["errors"][0]
    assert error["loc"][: len(loc) + 1] == ["body", *loc]

    code, out, err = submit_file(capsys, tmp_path, jobs_url, body)
    assert (code, out) == (2, "")
    assert err == f"lrtune: error: {error['msg']}\n"
    assert store.count() == 0


def test_the_store_names_the_field_to_change(store: JobStore) -> None:
    body, loc = REFUSED["a layer that does not fit the data"]
    with pytest.raises(InvalidInputError, match="larger than the input") as refused:
        store.submit(JobSpec.model_validate(body))
    assert list(refused.value.loc) == loc and refused.value.kind == "invalid_params"


def test_a_model_only_a_live_worker_registered_is_admitted_both_ways(
    api: httpx.Client,
    store: JobStore,
    tmp_path: Path,
    jobs_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = {"model": {"name": "worker_only_mlp"}, "dataset": WINE}
    assert api.post("/v1/jobs", json=body).status_code == 422
    assert submit_file(capsys, tmp_path, jobs_url, body)[0] == 2
    register_plugin_worker(store, {"worker_only_mlp": {"type": "object"}}, "gpu-box-1", "cuda:0")
    assert api.post("/v1/jobs", json=body).status_code == 201
    code, out, _ = submit_file(capsys, tmp_path, jobs_url, {**body, "seed": 1})
    assert code == 0 and store.get(out.strip()).spec.model.name == "worker_only_mlp"


def test_a_full_queue_is_refused_both_ways(
    tmp_path: Path,
    jobs_url: str,
    store: JobStore,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LRTUNE_MAX_QUEUED_JOBS", "1")
    body = {"model": {"name": "logreg"}, "dataset": WINE}
    assert submit_file(capsys, tmp_path, jobs_url, body)[0] == 0
    code, _, err = submit_file(capsys, tmp_path, jobs_url, {**body, "seed": 1})
    assert code == 2 and "LRTUNE_MAX_QUEUED_JOBS=1" in err and err.count("\n") == 1
    with serve(
        create_app(ApiSettings.from_env().model_copy(update={"database_url": jobs_url}))
    ) as url:
        full = httpx.post(f"{url}/v1/jobs", json={**body, "seed": 2})
    assert full.status_code == 429 and full.headers["retry-after"] == "30"
    with pytest.raises(QueueFullError):
        JobStore(jobs_url, settings=ApiSettings.from_env()).submit(JobSpec.model_validate(body))
    assert store.count() == 1


def test_token_ids_beyond_the_embedding_are_refused_both_ways(
    api: httpx.Client,
    store: JobStore,
    tmp_path: Path,
    jobs_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tokens = np.arange(40 * 6, dtype=np.float32).reshape(40, 6) % 60  # ids 0..59
    upload, _ = store.uploads.save(check_arrays(tokens, np.arange(40) % 2))
    layers = [
        {"type": "embedding", "num_embeddings": 50, "embedding_dim": 8},
        {"type": "sequence_pool"},
        {"type": "linear", "out_features": 2},
    ]
    body = {
        "model": {"name": "sequential", "params": {"layers": layers}},
        "dataset": {"name": "uploaded", "params": {"id": upload.id}},
    }
    refused = api.post("/v1/jobs", json=body)
    assert refused.status_code == 422, refused.text
    error = refused.json()["errors"][0]
    assert error["loc"] == ["body", "model", "params", "layers", 0, "embedding", "num_embeddings"]
    assert "59" in error["msg"] and "at least 60" in error["msg"]
    code, _, err = submit_file(capsys, tmp_path, jobs_url, body)
    assert (code, err) == (2, f"lrtune: error: {error['msg']}\n")

    layers[0]["num_embeddings"] = 60
    assert api.post("/v1/jobs", json=body).status_code == 201
