"""``/v1/datasets``: the datasets a job may name, and datasets uploaded to the service.

``GET /v1/datasets`` lists the registry: the API's own (:mod:`lrtune.registry`: built-ins and
plugins installed beside it) and what the live workers registered (a plugin installed only on
the workers). ``uploaded`` is one of them: a job names an upload as ``{"name": "uploaded",
"params": {"id": "<its id>"}}``.

``POST /v1/datasets`` takes a multipart form: ``file`` (an ``.npz`` of arrays ``x`` and ``y``,
or a CSV with a header row), ``target`` (a CSV's target column; default its column named
``target``), ``task`` (to override the task inferred from ``y``) and ``name`` (a label). The
body may be up to ``LRTUNE_MAX_UPLOAD_BYTES`` (413 above); the checks of
:mod:`lrtune.upload_parsing` answer 422 at the form field to fix. The data is stored in the
job store's database under the SHA-256 of its canonical form: 201 the first time, 200 with
the same id when the same data is uploaded again. Nothing uploaded is executed or unpickled.

``GET /v1/datasets/uploads`` lists the uploads, ``GET``/``DELETE /v1/datasets/{id}`` reads or
deletes one (409 while an unfinished job uses it).

Example:
    >>> [route.path for route in router.routes]  # doctest: +NORMALIZE_WHITESPACE
    ['/datasets', '/datasets', '/datasets/uploads', '/datasets/{dataset_id}',
     '/datasets/{dataset_id}']
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Request, Response, UploadFile

from lrtune.api.deps import ReadAuth, SettingsDep, StoreDep, WriteAuth
from lrtune.api.errors import FieldInvalid
from lrtune.api.routes._docs import error_responses
from lrtune.api.routes._registry import registry_list
from lrtune.api.routes.jobs import NO_NUL
from lrtune.api.schemas import RegistryList
from lrtune.jobs.records import DatasetUpload, DatasetUploadList
from lrtune.upload_parsing import UploadError, parse_upload

UPLOAD_PATH = "/datasets"
"""Where uploads are posted (under ``/v1``): the body cap there is ``max_upload_bytes``."""

router = APIRouter(prefix=UPLOAD_PATH, tags=["registry"])

DatasetId = Annotated[
    str, Path(max_length=64, pattern=NO_NUL, description="the upload's id (SHA-256 hex)")
]

_UPLOAD_EXAMPLES: dict[str, Any] = {
    "examples": {
        "npz": {
            "summary": "An .npz of x (n, C, H, W) images and y class labels",
            "value": {"file": "(images.npz: numpy.savez(f, x=x, y=y))", "name": "digits-8x8"},
        },
        "csv": {
            "summary": "A CSV with a header row, predicting its column `species`",
            "value": {"file": "(iris.csv)", "target": "species"},
        },
    }
}


@router.get("", summary="List datasets", responses=error_responses(401, 503))
def list_datasets(store: StoreDep, _: ReadAuth) -> RegistryList:
    """Every dataset name a job may use, and its params' JSON schema (null for a plugin)."""
    return registry_list("dataset", store.known_registry())


@router.post(
    "",
    status_code=201,
    summary="Upload a dataset",
    responses={
        201: {"description": "Stored; `Location` is its path"},
        200: {"model": DatasetUpload, "description": "The same data was stored already"},
        **error_responses(401, 413, 422, 503),
    },
    openapi_extra={"requestBody": {"content": {"multipart/form-data": _UPLOAD_EXAMPLES}}},
)
def upload_dataset(
    file: Annotated[
        UploadFile,
        File(description="an .npz with arrays x and y (numpy.savez), or a CSV with a header"),
    ],
    request: Request,
    response: Response,
    store: StoreDep,
    settings: SettingsDep,
    _: WriteAuth,
    target: Annotated[
        str | None,
        Form(
            max_length=256,
            pattern=NO_NUL,
            description="a CSV's target column (default: its column named `target`)",
        ),
    ] = None,
    task: Annotated[
        Literal["classification", "regression"] | None,
        Form(description="default: an integer y is classification, a float y regression"),
    ] = None,
    name: Annotated[
        str | None, Form(min_length=1, max_length=120, pattern=NO_NUL, description="a label")
    ] = None,
) -> DatasetUpload:
    """Check and store a dataset; a job then names it as `uploaded` with its `id`."""
    cap = settings.max_upload_bytes
    data = file.file.read(cap + 1)
    try:
        arrays = parse_upload(data, target=target or None, task=task, max_bytes=cap)
    except UploadError as exc:
        raise FieldInvalid(["body", exc.field], str(exc), "invalid_upload") from None
    upload, created = store.uploads.save(arrays, name=name or _label(file.filename))
    response.status_code = 201 if created else 200
    response.headers["Location"] = request.url_for("get_dataset", dataset_id=upload.id).path
    return upload


@router.get("/uploads", summary="List uploaded datasets", responses=error_responses(401, 503))
def list_uploads(store: StoreDep, _: ReadAuth) -> DatasetUploadList:
    """The uploaded datasets, newest first."""
    return store.uploads.list_uploads()


@router.get(
    "/{dataset_id}",
    name="get_dataset",
    summary="Get an uploaded dataset",
    responses=error_responses(401, 404, 503),
)
def get_dataset(dataset_id: DatasetId, store: StoreDep, _: ReadAuth) -> DatasetUpload:
    """An uploaded dataset's shapes and task (not its data)."""
    return store.uploads.get(dataset_id)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    summary="Delete an uploaded dataset",
    responses=error_responses(401, 404, 409, 503),
)
def delete_dataset(dataset_id: DatasetId, store: StoreDep, _: WriteAuth) -> Response:
    """Delete an upload; refused with 409 while a queued or running job uses it."""
    store.uploads.delete(dataset_id)
    return Response(status_code=204)


def _label(filename: str | None) -> str | None:
    """A label from the uploaded file's name: what a text column can hold."""
    label = (filename or "").replace("\x00", "")[:120]
    return label or None
