"""Uploaded datasets in the job store: content-addressed rows holding their own bytes.

:class:`DatasetUploads` (a :class:`~lrtune.jobs.JobStore`'s ``uploads``) keeps the arrays an
upload was checked into (:class:`lrtune.upload_parsing.UploadedArrays`) in ``lrtune_uploads``, as an
``.npz`` in a binary column, so that any worker reads them with nothing but the database URL.

Contract:

- :meth:`DatasetUploads.save` stores arrays under their id (the SHA-256 of their canonical
  form), with the range of the features' values (:func:`value_range`: what a submit checks an
  embedding's vocabulary against); saving the same data again stores nothing and returns the
  first row (its name too), filling in the range if the row predates it.
- A job names an upload as ``{"name": "uploaded", "params": {"id": ...}}``
  (:data:`UPLOADED`); :meth:`DatasetUploads.bundle` reads it back, checked again, and splits
  it like a built-in dataset.
- :meth:`DatasetUploads.delete` refuses (:class:`~lrtune.exceptions.ConflictError`) while an
  unfinished job names the upload; finished jobs keep their results after it is gone.
- A delete and a job's admission never interleave: the delete locks the upload's row before it
  looks for jobs that use it, and :meth:`~lrtune.jobs.JobStore.submit` locks it (shared, with
  :func:`hold_upload`) in the transaction that inserts the job, so either the delete sees the
  job (409) or the submit finds the upload gone (:class:`~lrtune.exceptions.NotFoundError`).
  On SQLite both are IMMEDIATE transactions, which hold the whole database.

Example:
    >>> import tempfile, pathlib, numpy as np
    >>> from lrtune.jobs import JobStore
    >>> from lrtune.upload_parsing import check_arrays
    >>> store = JobStore(f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'jobs.db'}")
    >>> arrays = check_arrays(np.arange(60.0).reshape(20, 3), np.arange(20) % 2)
    >>> upload, created = store.uploads.save(arrays, name="toy")
    >>> created, upload.task, upload.x_shape, upload.n_classes
    (True, 'classification', [20, 3], 2)
    >>> upload.x_min, upload.x_max, upload.x_integral
    (0.0, 59.0, True)
    >>> store.uploads.save(arrays, name="again")[1]
    False
    >>> store.uploads.bundle(upload.id, {"val_fraction": 0.25}).input_shape
    (3,)
    >>> store.uploads.delete(upload.id)
    >>> store.uploads.get(upload.id)
    Traceback (most recent call last):
    ...
    lrtune.exceptions.NotFoundError: no uploaded dataset ... in the job store
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.engine import Engine

from lrtune.exceptions import ConflictError, NotFoundError
from lrtune.jobs import tables
from lrtune.jobs.db import session
from lrtune.jobs.records import DatasetUpload, DatasetUploadList, JobStatus
from lrtune.upload_parsing import UploadedArrays, check_arrays, parse_npz

if TYPE_CHECKING:
    from lrtune.datasets import DatasetBundle

UPLOADED = "uploaded"
"""The dataset name a job spec gives an uploaded dataset (its ``params.id`` says which)."""
MAX_LISTED = 1000
_STORED_ARRAYS_CAP = 1 << 32  # stored arrays were checked against the upload cap already
_RANGE_CHUNK_VALUES = 1 << 20  # value_range reads this many values at a time

_UNFINISHED = [status.value for status in JobStatus if not status.finished]


class DatasetUploads:
    """The uploaded datasets of the store on ``engine`` (see the module's contract)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def save(self, arrays: UploadedArrays, name: str | None = None) -> tuple[DatasetUpload, bool]:
        """Store checked arrays; return the row and whether it is new (else the same data was
        already there, and the row is the first upload's)."""
        upload_id = arrays.id
        existing = self._row(upload_id)
        if existing is not None:
            return self._with_range(existing, arrays), False
        blob = arrays.to_npz()
        row = tables.Upload(
            id=upload_id,
            kind="dataset",
            name=name,
            task=arrays.task,
            x_shape=list(arrays.x.shape),
            n_classes=arrays.n_classes,
            **value_range(arrays.x),
            bytes=len(blob),
            data=blob,
        )
        try:
            with session(self._engine, write=True) as s:
                s.add(row)
        except ConflictError:  # the same data uploaded at the same moment: one row wins
            existing = self._row(upload_id)
            if existing is None:
                raise
            return existing, False
        stored = self._row(upload_id)
        assert stored is not None
        return stored, True

    def get(self, upload_id: str) -> DatasetUpload:
        """The upload's row (not its data).

        Raises:
            NotFoundError: no upload has this id.
        """
        found = self._row(upload_id)
        if found is None:
            raise NotFoundError(f"no uploaded dataset {upload_id!r} in the job store")
        return found

    def list_uploads(self) -> DatasetUploadList:
        """The uploads, newest first (at most :data:`MAX_LISTED`)."""
        query = (
            select(tables.Upload)
            .where(tables.Upload.kind == "dataset")
            .order_by(tables.Upload.created_at.desc(), tables.Upload.id)
            .limit(MAX_LISTED)
        )
        with session(self._engine, write=False) as s:
            rows = [_record(row) for row in s.scalars(query)]
        return DatasetUploadList(data=rows, count=len(rows))

    def arrays(self, upload_id: str) -> UploadedArrays:
        """The upload's arrays, read from its stored ``.npz`` and checked again.

        Raises:
            NotFoundError: no upload has this id.
        """
        query = select(tables.Upload.data, tables.Upload.task).where(
            tables.Upload.id == upload_id, tables.Upload.kind == "dataset"
        )
        with session(self._engine, write=False) as s:
            found = s.execute(query).first()
        if found is None:
            raise NotFoundError(f"no uploaded dataset {upload_id!r} in the job store")
        x, y = parse_npz(found.data, max_bytes=_STORED_ARRAYS_CAP)
        return check_arrays(x, y, task=found.task)

    def bundle(self, upload_id: str, params: Mapping[str, Any] | None = None) -> DatasetBundle:
        """The upload as a train/validation bundle, split by ``params``
        (:class:`~lrtune.params.UploadedParams` without ``id``; imports torch)."""
        from lrtune.datasets import bundle_of

        return bundle_of(self.arrays(upload_id), UPLOADED, dict(params or {}))

    def delete(self, upload_id: str) -> None:
        """Delete the upload.

        Raises:
            NotFoundError: no upload has this id.
            ConflictError: an unfinished job uses it (cancel it, or wait until it finishes).
        """
        with session(self._engine, write=True) as s:
            if s.get(tables.Upload, upload_id, with_for_update=True) is None:
                raise NotFoundError(f"no uploaded dataset {upload_id!r} in the job store")
            users = _unfinished_jobs_using(s, upload_id)
            if users:
                raise ConflictError(
                    f"uploaded dataset {upload_id} is used by unfinished job(s) "
                    f"{', '.join(users[:5])}: cancel them or wait until they finish"
                )
            s.execute(delete(tables.Upload).where(tables.Upload.id == upload_id))

    def _with_range(self, upload: DatasetUpload, arrays: UploadedArrays) -> DatasetUpload:
        """The row, its value range filled in from ``arrays`` if it was stored without one
        (before revision 0007)."""
        if upload.x_max is not None:
            return upload
        found = value_range(arrays.x)
        query = update(tables.Upload).where(
            tables.Upload.id == upload.id, tables.Upload.x_max.is_(None)
        )
        with session(self._engine, write=True) as s:
            s.execute(query.values(**found))
        return upload.model_copy(update=found)

    def _row(self, upload_id: str) -> DatasetUpload | None:
        with session(self._engine, write=False) as s:
            row = s.get(tables.Upload, upload_id)
            return _record(row) if row is not None and row.kind == "dataset" else None


def value_range(x: np.ndarray) -> dict[str, Any]:
    """The smallest and largest value of checked features ``x`` (finite float32) and whether
    all are whole numbers, as the row's ``x_min``, ``x_max`` and ``x_integral``.

    Read a chunk of rows at a time, so a large upload costs no full-size temporary copy.

    Example:
        >>> value_range(np.array([[0.0, 3.0], [7.0, 2.0]], dtype=np.float32))
        {'x_min': 0.0, 'x_max': 7.0, 'x_integral': True}
        >>> value_range(np.array([[-1.5]], dtype=np.float32))
        {'x_min': -1.5, 'x_max': -1.5, 'x_integral': False}
    """
    flat = x.reshape(len(x), -1)
    if flat.size == 0:
        return {"x_min": None, "x_max": None, "x_integral": None}
    rows = max(1, _RANGE_CHUNK_VALUES // max(1, flat.shape[1]))
    low, high, integral = np.inf, -np.inf, True
    for start in range(0, len(flat), rows):
        chunk = flat[start : start + rows]
        low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        integral = integral and bool(np.array_equal(np.floor(chunk), chunk))
    return {"x_min": low, "x_max": high, "x_integral": integral}


def hold_upload(s: Any, dataset: Mapping[str, Any]) -> None:
    """In a job's admission transaction: share-lock the upload that a spec's ``dataset`` (as
    JSON) names, so that no delete removes it until the job is stored (see the module).

    Raises:
        NotFoundError: the dataset names an upload that is not in the store (or was deleted).
    """
    upload_id = (dataset.get("params") or {}).get("id")
    if dataset.get("name") != UPLOADED or not isinstance(upload_id, str):
        return
    query = (
        select(tables.Upload.id)
        .where(tables.Upload.id == upload_id, tables.Upload.kind == "dataset")
        .with_for_update(read=True)
    )
    if s.execute(query).first() is None:
        raise NotFoundError(f"no uploaded dataset {upload_id!r} in the job store")


def uses_upload(dataset: Mapping[str, Any], upload_id: str) -> bool:
    """Whether a spec's ``dataset`` (as stored JSON) names the upload ``upload_id``."""
    params = dataset.get("params") or {}
    return dataset.get("name") == UPLOADED and params.get("id") == upload_id


def dataset_identity(dataset: Mapping[str, Any]) -> str:
    """What makes a spec's ``dataset`` (as JSON) the same data as another's, params aside: its
    name, and for an uploaded dataset the upload's id (every upload is named ``uploaded``)."""
    if dataset.get("name") != UPLOADED:
        return str(dataset.get("name"))
    return f"{UPLOADED}:{(dataset.get('params') or {}).get('id')}"


def _unfinished_jobs_using(s: Any, upload_id: str) -> list[str]:
    # Few jobs are unfinished at a time, so their specs are read and matched here: a JSON path
    # query would differ between SQLite and PostgreSQL.
    query = select(tables.Job.id, tables.Job.spec).where(tables.Job.status.in_(_UNFINISHED))
    return [
        row.id for row in s.execute(query) if uses_upload(row.spec.get("dataset", {}), upload_id)
    ]


def _record(row: tables.Upload) -> DatasetUpload:
    return DatasetUpload(
        id=row.id,
        name=row.name,
        task=row.task,
        x_shape=list(row.x_shape),
        n_classes=row.n_classes,
        x_min=row.x_min,
        x_max=row.x_max,
        x_integral=row.x_integral,
        bytes=row.bytes,
        created_at=row.created_at,
    )
