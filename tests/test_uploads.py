"""Dataset uploads: ``POST /v1/datasets`` over real HTTP on real SQLite and PostgreSQL stores,
fuzzed with bad files; the table's migration; a job on an uploaded image dataset run by a real
worker process to its recommendation.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from live_api import serve
from test_api import TOKEN, Start, assert_field_error

from lrtune.api import ApiSettings, create_app
from lrtune.jobs import JobStatus, JobStore, tables, upgrade
from lrtune.jobs.db import get_engine
from lrtune.jobs.revision import current_revision, head_revision
from lrtune.jobs.store import MAX_PAGE
from lrtune.spec import JobSpec
from lrtune.upload_parsing import UploadError, check_arrays, parse_upload

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def start(jobs_url: str) -> Iterator[Start]:
    """Start an API on the test's job store with the given settings fields; returns a client."""
    with contextlib.ExitStack() as stack:

        def start_api(**fields: Any) -> httpx.Client:
            app = create_app(ApiSettings(database_url=jobs_url, **fields))
            url = stack.enter_context(serve(app))
            return stack.enter_context(httpx.Client(base_url=url, timeout=60))

        yield start_api


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One API on SQLite for the tests of refused uploads, which never reach the database."""
    url = f"sqlite:///{tmp_path_factory.mktemp('checker') / 'jobs.db'}"
    upgrade(url)
    with (
        serve(create_app(ApiSettings(database_url=url))) as base,
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        yield client


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def three_blobs(n: int = 60, features: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return rng.normal(size=(n, features)) + y[:, None], y


def post(api: httpx.Client, data: bytes, filename: str = "d.npz", **form: str) -> httpx.Response:
    return api.post("/v1/datasets", files={"file": (filename, data)}, data=form)


def forged_npy(header: bytes, body: bytes = b"") -> bytes:
    """A version-1.0 ``.npy`` with ``header`` as its header dict (padded as numpy pads it)."""
    padded = header + b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(padded)) + padded + body


def zipped(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(f"{name}.npy", content)
    return buffer.getvalue()


def y_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(20) % 2)
    return buffer.getvalue()


# --- the checks, as the API answers them ---------------------------------------------------


def test_an_npz_upload_is_stored_once_and_listed(start: Start) -> None:
    api = start()
    x, y = three_blobs()
    first = post(api, npz(x=x, y=y), name="blobs")
    assert first.status_code == 201, first.text
    upload = first.json()
    assert upload["task"] == "classification" and upload["x_shape"] == [60, 4]
    assert upload["n_classes"] == 3 and upload["name"] == "blobs"
    assert upload["dataset"] == {"name": "uploaded", "params": {"id": upload["id"]}}
    # The same data in another dtype and container (compressed, float32) is the same dataset.
    buffer = io.BytesIO()
    np.savez_compressed(buffer, y=y.astype(np.int32), x=x.astype(np.float32))
    again = post(api, buffer.getvalue(), name="other label")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == upload["id"] and again.json()["name"] == "blobs"
    assert api.get(first.headers["Location"]).json() == upload
    listed = api.get("/v1/datasets/uploads").json()
    assert [u["id"] for u in listed["data"]] == [upload["id"]] and listed["count"] == 1
    registry = api.get("/v1/datasets").json()["data"]
    schema = next(e for e in registry if e["name"] == "uploaded")["params_schema"]
    assert "id" in schema["required"]


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: npz(x=np.array([object()] * 20, dtype=object), y=np.arange(20) % 2), "dtype"),
        (lambda: npz(x=np.ones((20, 2), dtype=np.complex64), y=np.arange(20) % 2), "complex"),
        (lambda: npz(x=np.array([["a", "b"]] * 20), y=np.arange(20) % 2), "dtype <U1"),
        (lambda: npz(x=np.ones((20, 2)), y=np.array(["a", "b"] * 10)), "dtype <U1"),
        (lambda: npz(x=np.ones((20, 2)), y=np.arange(20) % 2)[:-40], "truncated or corrupt"),
        (lambda: npz(x=np.ones((20, 2)), y=np.arange(20) % 2)[:200], "truncated or corrupt"),
        (lambda: npz(x=np.ones((20, 2)), w=np.arange(20)), "exactly the arrays x and y"),
        (lambda: npz(x=np.ones((20, 2))), "exactly the arrays x and y"),
        (lambda: npz(x=np.ones(20), y=np.arange(20) % 2), "shape (20,)"),
        (lambda: npz(x=np.ones((20, 2)), y=np.arange(19) % 2), "one value per sample"),
        (lambda: npz(x=np.ones((5, 2)), y=np.arange(5) % 2), "at least 10"),
        (lambda: npz(x=np.ones((20, 2)), y=np.zeros(20, dtype=int)), "1 classes"),
        (lambda: npz(x=np.ones((20, 2)), y=np.r_[np.zeros(19, int), 1]), "single sample"),
        (lambda: npz(x=np.r_[np.ones((19, 2)), [[np.nan, 1]]], y=np.arange(20) % 2), "NaN"),
        (lambda: npz(x=np.full((20, 2), 1e300), y=np.arange(20) % 2), "float32"),
        (lambda: npz(x=np.ones((20, 2)), y=np.r_[np.ones(19), np.inf]), "NaN or infinite"),
        (lambda: y_npy(), "single .npy"),
        # A header claiming a terabyte array: refused from the header, before any read.
        (
            lambda: zipped(
                x=forged_npy(
                    b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 131072), }"
                ),
                y=y_npy(),
            ),
            "upload fewer samples",
        ),
        # Shapes whose product overflows int64, or is negative (a read of "all the rest").
        (
            lambda: zipped(
                x=forged_npy(
                    b"{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }"
                ),
                y=y_npy(),
            ),
            "upload fewer samples",
        ),
        (
            lambda: zipped(
                x=forged_npy(b"{'descr': '<f8', 'fortran_order': False, 'shape': (-1, 2), }"),
                y=y_npy(),
            ),
            "negative size",
        ),
        # A header over numpy's safe size, and a pickled object array behind a forged header.
        (
            lambda: zipped(
                x=forged_npy(
                    b"{'descr': '<f8', 'fortran_order': False, 'shape': (2,), "
                    + b"'pad': '"
                    + b"A" * 20_000
                    + b"'}"
                ),
                y=y_npy(),
            ),
            "unreadable header",
        ),
        (
            lambda: zipped(
                x=forged_npy(
                    b"{'descr': '|O', 'fortran_order': False, 'shape': (20,), }",
                    b"\x80\x04cos\nsystem\n.",
                ),
                y=y_npy(),
            ),
            "dtype object",
        ),
        (
            lambda: zipped(
                x=forged_npy(
                    b"{'descr': '<f8', 'fortran_order': False, 'shape': (20, 2), }", b"\0" * 100
                ),
                y=y_npy(),
            ),
            "truncated",
        ),
    ],
)
def test_bad_npz_uploads_are_422_saying_what_to_fix(
    checker: httpx.Client, make: Any, needle: str
) -> None:
    response = post(checker, make())
    detail = assert_field_error(response, ["body", "file"])
    assert needle in detail


def test_a_zip_bomb_is_refused_without_being_inflated() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(
                forged_npy(b"{'descr': '<f8', 'fortran_order': False, 'shape': (400000000,), }")
            )
            for _ in range(64):
                member.write(b"\0" * (1 << 20))
        archive.writestr("y.npy", y_npy())
    assert len(buffer.getvalue()) < 1 << 20
    with pytest.raises(UploadError, match="upload fewer samples"):
        parse_upload(buffer.getvalue(), max_bytes=8 << 20)


RSS_PROBE = """
import resource, sys
from lrtune.upload_parsing import UploadError, parse_upload
rows, width = int(sys.argv[1]), int(sys.argv[2])
wide = b"w" * width
body = b"a,label\\n" + b"1," + wide + b"\\n2," + wide + b"\\n" + b"3,v\\n4,v\\n" * rows
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    answer = f"{parse_upload(body, target='label', max_bytes=64 << 20).n_classes} classes"
except UploadError as exc:
    answer = str(exc)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(len(body), grown * 1024, answer)
"""


def parse_in_a_subprocess(rows: int, width: int) -> tuple[int, int, str]:
    """The body's size, the parse's peak RSS growth (bytes) and its answer, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(rows), str(width)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    size, grown, answer = done.stdout.strip().split(" ", 2)
    return int(size), int(grown), answer


def test_a_csv_of_class_names_costs_memory_proportional_to_its_body() -> None:
    # Two 250-character names among 300,000 short rows: 2.4 MB that numpy's fixed-width text
    # array made 600 MB ("<U250" per row); read row by row it costs a few bytes a row.
    size, grown, answer = parse_in_a_subprocess(rows=150_000, width=250)
    assert answer == "2 classes"
    assert grown < 16 * size, f"parsing a {size}-byte CSV grew the process by {grown} bytes"
    size, grown, answer = parse_in_a_subprocess(rows=150_000, width=100_000)
    assert "class names may have at most 256" in answer and grown < 16 * size


def mutations(seed: int, count: int) -> Iterator[tuple[bytes, str | None]]:
    """Valid uploads (an .npz, a compressed one, a CSV) with random bytes changed, inserted or
    cut off; each with the target its kind takes."""
    rng = random.Random(seed)
    x, y = three_blobs(30, 3)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=x, y=y)
    csv = ("a,b,t\n" + "".join(f"{i},{i / 7:.3f},{i % 2}\n" for i in range(30))).encode()
    bases = [(npz(x=x, y=y), None), (buffer.getvalue(), None), (csv, "t")]
    for _ in range(count):
        base, target = rng.choice(bases)
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            roll = rng.random()
            if roll < 0.5 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif roll < 0.75:
                data = data[: rng.randrange(len(data) + 1)]
            else:
                at = rng.randrange(len(data) + 1)
                data[at:at] = rng.randbytes(rng.randint(1, 16))
        yield bytes(data), target


def test_mutated_uploads_parse_or_are_refused_with_an_upload_error() -> None:
    refused = 0
    for data, target in mutations(seed=0, count=3000):
        try:
            parse_upload(data, target=target, max_bytes=1 << 20)
        except UploadError:
            refused += 1
    assert refused > 2900  # nearly all are damaged; anything but an UploadError fails the test


def test_mutated_uploads_over_http_are_never_a_server_error(start: Start) -> None:
    api = start()
    for data, target in mutations(seed=1, count=60):
        response = post(api, data, **({"target": target} if target else {}))
        assert response.status_code in (200, 201, 422), response.text
        assert "Traceback" not in response.text


def test_a_body_that_is_not_multipart_is_a_422_at_the_body(start: Start) -> None:
    api = start()
    boundary = "387f40bf197e09a85726c59872521530"
    response = api.post(
        "/v1/datasets",
        content=f"--{boundary}\r\n[[-5.5e-72], {{}}]--{boundary}--\r\n".encode(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body"]
    assert "multipart/form-data" in response.json()["detail"]


CSV = b"f1,f2,label\n" + b"".join(
    b"%d,%.2f,%s\n" % (i, i / 3, b"ab"[i % 2 : i % 2 + 1]) for i in range(30)
)


def test_a_csv_upload_takes_its_target_column_and_class_names(start: Start) -> None:
    response = post(start(), CSV, "d.csv", target="label")
    assert response.status_code == 201, response.text
    assert response.json()["x_shape"] == [30, 2] and response.json()["n_classes"] == 2
    regression = CSV.replace(b",a\n", b",0.5\n").replace(b",b\n", b",1.5\n")
    answer = post(start(), regression, "r.csv", target="label").json()
    assert answer["task"] == "regression" and answer["n_classes"] is None


def test_a_csv_whose_column_is_named_target_needs_no_target_field(start: Start) -> None:
    api = start()
    named = CSV.replace(b"f1,f2,label", b"f1,f2,target")
    response = post(api, named, "d.csv")
    assert response.status_code == 201, response.text
    assert response.json()["x_shape"] == [30, 2] and response.json()["n_classes"] == 2
    # The same data with the column named explicitly is the same upload.
    again = post(api, named, "d.csv", target="target")
    assert (again.status_code, again.json()["id"]) == (200, response.json()["id"])
    # An explicit target wins over a column named `target`: here the same data again.
    other = named.replace(b"f1,f2,target", b"target,f2,label")
    explicit = post(api, other, "o.csv", target="label")
    assert (explicit.status_code, explicit.json()["id"]) == (200, response.json()["id"])


@pytest.mark.parametrize(
    ("data", "form", "field", "needle"),
    [
        (CSV, {"target": "species"}, "target", "its columns are f1, f2, label"),
        (CSV, {}, "target", "no column named 'target' and the upload names no target column"),
        (CSV.replace(b"1,0.33", b"1,oops"), {"target": "label"}, "file", "'oops' is not a number"),
        (CSV.replace(b"1,0.33", b"nan,1"), {"target": "label"}, "file", "NaN"),
        (CSV + b"1,2\n", {"target": "label"}, "file", "has 2 cells"),
        (b"\xff\xfe" + CSV, {"target": "label"}, "file", "nor CSV text in UTF-8"),
        (b"", {"target": "label"}, "file", "empty"),
        (CSV, {"target": "label", "task": "regression"}, "file", "regression target must be"),
        (
            b"f,label\n" + b"".join(b"%d,c%d\n" % (i, i) for i in range(1001)),
            {"target": "label"},
            "target",
            "more than 1000 distinct class names",
        ),
        (CSV + b"1,2," + b"w" * 300 + b"\n", {"target": "label"}, "target", "at most 256"),
        (npz(x=np.ones((20, 2)), y=np.arange(20) % 2), {"target": "y"}, "target", "no target"),
    ],
)
def test_bad_csv_uploads_are_422_at_the_field_to_fix(
    checker: httpx.Client, data: bytes, form: dict[str, str], field: str, needle: str
) -> None:
    detail = assert_field_error(post(checker, data, "d.csv", **form), ["body", field])
    assert needle in detail


def test_an_upload_over_its_cap_is_413_naming_the_setting(start: Start) -> None:
    api = start(max_body_bytes=4096, max_upload_bytes=64 << 10)
    x, y = three_blobs(n=200, features=8)  # 12.8 kB: over the body cap, within the upload cap
    assert post(api, npz(x=x, y=y)).status_code == 201
    big = npz(x=np.ones((20_000, 8)), y=np.arange(20_000) % 2)
    response = post(api, big)
    assert response.status_code == 413
    assert "LRTUNE_MAX_UPLOAD_BYTES" in response.json()["detail"]
    assert "65536 bytes" in response.json()["detail"]
    # Sent in chunks, without a Content-Length: refused once the count passes the cap.
    request = httpx.Request("POST", "/v1/datasets", files={"file": ("big.npz", big)})
    body = request.read()
    chunks = (body[at : at + 8192] for at in range(0, len(body), 8192))
    headers = {"content-type": request.headers["content-type"]}
    chunked = api.post("/v1/datasets", content=chunks, headers=headers)
    assert chunked.status_code == 413 and "LRTUNE_MAX_UPLOAD_BYTES" in chunked.text
    # Compressed within the body cap, but its arrays decode larger than the cap: 422.
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=np.zeros((20_000, 8)), y=np.arange(20_000) % 2)
    assert len(buffer.getvalue()) < 64 << 10
    assert "LRTUNE_MAX_UPLOAD_BYTES" in assert_field_error(
        post(api, buffer.getvalue()), ["body", "file"]
    )
    # The larger cap is the upload route's only.
    jobs = api.post(
        "/v1/jobs", content=b"{" + b" " * 5000 + b"}", headers={"content-type": "application/json"}
    )
    assert jobs.status_code == 413 and "LRTUNE_MAX_BODY_BYTES" in jobs.json()["detail"]


def test_uploading_and_deleting_need_the_token(start: Start) -> None:
    api = start(api_token=TOKEN)
    x, y = three_blobs()
    assert post(api, npz(x=x, y=y)).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    created = api.post("/v1/datasets", files={"file": ("d.npz", npz(x=x, y=y))}, headers=auth)
    assert created.status_code == 201
    assert api.delete(f"/v1/datasets/{created.json()['id']}").status_code == 401
    assert api.delete(f"/v1/datasets/{created.json()['id']}", headers=auth).status_code == 204


# --- jobs on uploads ---------------------------------------------------------------------------

CONV = [
    {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
    {"type": "relu"},
    {"type": "maxpool", "kernel_size": 2},
    {"type": "flatten"},
    {"type": "linear", "out_features": 10},
]


def digit_images(n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets

    x, y = sklearn.datasets.load_digits(return_X_y=True)
    return (x[:n] / 16.0).reshape(n, 1, 8, 8).astype(np.float32), y[:n]


def image_job(upload_id: str, layers: list[dict[str, Any]] = CONV) -> dict[str, Any]:
    return {
        "model": {"name": "sequential", "params": {"layers": layers}},
        "dataset": {"name": "uploaded", "params": {"id": upload_id, "val_fraction": 0.25}},
        "batch_size": 32,
        "range_test": {"seeds": 1, "num_iter": 20},
        "search": {
            "n_trials": 2,
            "epochs": 1,
            "families": ["cosine"],
            "confirm_seeds": 0,
            "finalists": 1,
            "baselines": False,
            "pruner": "none",
        },
    }


def test_a_job_on_an_upload_is_checked_against_its_stored_shapes(start: Start) -> None:
    api = start()
    x, y = digit_images()
    upload_id = post(api, npz(x=x, y=y)).json()["id"]
    assert api.post("/v1/jobs", json=image_job(upload_id)).status_code == 201
    flat = [{"type": "linear", "out_features": 10}]  # acts on W: outputs (1, 8, 10)
    detail = assert_field_error(
        api.post("/v1/jobs", json=image_job(upload_id, flat)), ["body", "model", "params", "layers"]
    )
    assert "(1, 8, 10)" in detail
    unknown = api.post("/v1/jobs", json=image_job("f" * 64))
    assert "upload it first" in assert_field_error(unknown, ["body", "dataset", "params", "id"])


def test_an_upload_a_queued_job_uses_cannot_be_deleted(start: Start, jobs_url: str) -> None:
    api = start()
    x, y = three_blobs()
    upload_id = post(api, npz(x=x, y=y)).json()["id"]
    job = image_job(upload_id, [{"type": "linear", "out_features": 3}])
    job_id = api.post("/v1/jobs", json=job).json()["id"]
    refused = api.delete(f"/v1/datasets/{upload_id}")
    assert refused.status_code == 409 and job_id in refused.json()["detail"]
    api.post(f"/v1/jobs/{job_id}/cancel")
    assert api.delete(f"/v1/datasets/{upload_id}").status_code == 204
    assert api.delete(f"/v1/datasets/{upload_id}").status_code == 404
    assert api.get(f"/v1/datasets/{upload_id}").status_code == 404
    assert api.get("/v1/datasets/uploads").json()["count"] == 0


def test_deleting_an_upload_while_jobs_on_it_are_posted_leaves_no_job_without_it(
    start: Start, jobs_url: str
) -> None:
    # Each round posts jobs on a new upload and deletes it at the same moment, over HTTP: the
    # delete refuses (409, a job was admitted first) or wins (204, and every post is a 422
    # naming the upload). It used to leave queued jobs whose upload was gone (39 in 376).
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    api = start()
    for round_ in range(30):
        x, y = three_blobs(seed=round_)
        upload_id = post(api, npz(x=x, y=y)).json()["id"]
        job = image_job(upload_id, [{"type": "linear", "out_features": 3}])
        barrier = Barrier(5)

        def submit(spec: dict[str, Any] = job, wait: Barrier = barrier) -> httpx.Response:
            wait.wait()
            return api.post("/v1/jobs", params={"reuse": "false"}, json=spec)

        def delete(upload: str = upload_id, wait: Barrier = barrier) -> httpx.Response:
            wait.wait()
            return api.delete(f"/v1/datasets/{upload}")

        with ThreadPoolExecutor(5) as pool:
            posts = [pool.submit(submit) for _ in range(4)]
            deleted = pool.submit(delete).result()
            answers = [future.result() for future in posts]
        assert deleted.status_code in (204, 409), deleted.text
        admitted = [answer.json()["id"] for answer in answers if answer.status_code == 201]
        for answer in answers:
            if answer.status_code != 201:
                assert upload_id in assert_field_error(answer, ["body", "dataset", "params", "id"])
        if deleted.status_code == 204:
            assert not admitted, f"round {round_}: jobs {admitted} queued on a deleted upload"
        for job_id in admitted:
            api.post(f"/v1/jobs/{job_id}/cancel")
    store = JobStore(jobs_url)
    uploads = {upload.id for upload in store.uploads.list_uploads().data}
    for record in store.list_jobs(JobStatus.QUEUED, limit=MAX_PAGE).data:
        assert record.spec.dataset.params["id"] in uploads, f"job {record.id} has no upload"


def test_a_job_its_upload_cannot_feed_is_refused_at_submit(start: Start) -> None:
    api = start()
    x, y = three_blobs()  # 60 samples of 4 features, 3 classes
    upload_id = post(api, npz(x=x, y=y)).json()["id"]
    cnn = {**image_job(upload_id), "model": {"name": "cnn"}}
    detail = assert_field_error(api.post("/v1/jobs", json=cnn), ["body", "model", "params"])
    assert "8x8 single-channel images" in detail and "(4,)" in detail
    wine = {**cnn, "dataset": {"name": "wine"}}
    assert "8x8" in assert_field_error(api.post("/v1/jobs", json=wine), ["body", "model", "params"])
    linear = image_job(upload_id, [{"type": "linear", "out_features": 3}])
    split = {"id": upload_id, "val_fraction": 0.1, "max_samples": 20}  # 2 validation samples
    unsplittable = {**linear, "dataset": {"name": "uploaded", "params": split}}
    loc = ["body", "dataset", "params", "val_fraction"]
    detail = assert_field_error(api.post("/v1/jobs", json=unsplittable), loc)
    assert "18 train and 2 validation samples" in detail and "3 classes" in detail
    assert api.post("/v1/jobs", json=linear).status_code == 201


def test_the_store_reads_an_upload_back_as_the_bundle_from_arrays_makes(store: JobStore) -> None:
    from lrtune.datasets import from_arrays

    x, y = digit_images(100)
    upload, created = store.uploads.save(check_arrays(x, y), name="digits")
    assert created
    stored = store.uploads.bundle(upload.id, {"val_fraction": 0.3, "seed": 2})
    direct = from_arrays(x, y, val_fraction=0.3, seed=2)
    assert stored.input_shape == direct.input_shape == (1, 8, 8) and stored.output_dim == 10
    for mine, theirs in zip(
        stored.train.tensors + stored.val.tensors,
        direct.train.tensors + direct.val.tensors,
        strict=True,
    ):
        assert (mine == theirs).all()


@pytest.mark.slow
def test_a_worker_process_runs_a_conv_job_on_uploaded_images_to_a_recommendation(
    start: Start, jobs_url: str
) -> None:
    api = start()
    x, y = digit_images()
    upload_id = post(api, npz(x=x, y=y), name="digit images").json()["id"]
    job = api.post("/v1/jobs", json=image_job(upload_id)).json()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LRTUNE_TORCH_THREADS": "1"}
    # The worker gets nothing but the database URL: the images come from the database.
    done = subprocess.run(
        [sys.executable, "-m", "lrtune.cli", "worker", "--database", jobs_url, "--once"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    finished = api.get(f"/v1/jobs/{job['id']}").json()
    assert finished["status"] == "succeeded", finished["error"]
    answer = api.get(f"/v1/jobs/{job['id']}/recommendation").json()
    assert answer["recommendation"]["base_lr"] > 0
    # Its winner warm-starts jobs on the same upload only: every upload is named "uploaded".
    store = JobStore(jobs_url)
    same = image_job(upload_id)
    same["dataset"]["params"]["val_fraction"] = 0.3
    assert len(store.warm_start_candidates(JobSpec.model_validate(same))) == 1
    other = post(api, npz(x=x[::-1].copy(), y=y[::-1].copy())).json()["id"]
    assert store.warm_start_candidates(JobSpec.model_validate(image_job(other))) == []


# --- the migration -----------------------------------------------------------------------------


def test_migration_0006_adds_the_uploads_table_and_its_downgrade_drops_it(
    empty_jobs_url: str,
) -> None:
    from alembic import command

    from lrtune.jobs.revision import _config

    upgrade(empty_jobs_url, "0005")
    assert not sa.inspect(get_engine(empty_jobs_url)).has_table(tables.Upload.__tablename__)
    upgrade(empty_jobs_url)
    assert current_revision(empty_jobs_url) == head_revision()
    store = JobStore(empty_jobs_url)
    upload, _ = store.uploads.save(check_arrays(*three_blobs()))
    assert store.uploads.arrays(upload.id).x.shape == (60, 4)
    engine = get_engine(empty_jobs_url)
    with engine.begin() as conn:
        config = _config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0005")
    assert current_revision(empty_jobs_url) == "0005"
    assert not sa.inspect(engine).has_table(tables.Upload.__tablename__)
    upgrade(empty_jobs_url)
    assert JobStore(empty_jobs_url).uploads.list_uploads().count == 0


def test_the_client_uploads_a_file_bytes_or_arrays_and_deletes(
    start: Start, tmp_path: Path
) -> None:
    from lrtune.client import Client
    from lrtune.exceptions import ConflictError, InvalidInputError, NotFoundError

    api = start()
    x, y = three_blobs()
    with Client(str(api.base_url)) as client:
        from_arrays = client.upload_dataset((x, y), name="blobs")
        path = tmp_path / "blobs.npz"
        path.write_bytes(npz(x=x, y=y))
        assert client.upload_dataset(path).id == from_arrays.id
        csv = client.upload_dataset(CSV, target="label")
        assert (csv.x_shape, csv.n_classes) == ([30, 2], 2)
        with pytest.raises(InvalidInputError, match=r"its columns are.*body\.target"):
            client.upload_dataset(CSV, target="nope")
        layers = [{"type": "linear", "out_features": 2}]
        model = {"name": "sequential", "params": {"layers": layers}}
        job = client.submit({"model": model, "dataset": csv.dataset})
        assert job.spec.dataset.params["id"] == csv.id
        with pytest.raises(ConflictError, match=job.id):
            client.delete_dataset(csv.id)
        client.cancel(job.id)
        client.delete_dataset(csv.id)
        with pytest.raises(NotFoundError):
            client.delete_dataset(csv.id)


@pytest.mark.parametrize(
    ("form", "field"),
    [({"name": "a\x00b"}, "name"), ({"name": "n" * 121}, "name"), ({"task": "ranking"}, "task")],
)
def test_bad_form_fields_are_422_at_the_field(
    checker: httpx.Client, form: dict[str, str], field: str
) -> None:
    x, y = three_blobs()
    assert_field_error(post(checker, npz(x=x, y=y), **form), ["body", field])
