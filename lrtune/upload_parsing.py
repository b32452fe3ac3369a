"""Uploaded datasets: parse an ``.npz`` or CSV a user sent, check it, and give it one id.

Nothing from the upload is executed or unpickled. An ``.npz`` (``numpy.savez``, compressed or
not) must hold exactly the arrays ``x`` and ``y``; each member's ``.npy`` header is read and
checked first (no object or structured dtype, a header under numpy's size limit, and the
array's size, shape times itemsize, within ``max_bytes``) and only then is the array read, with
``allow_pickle=False``, so a forged header or a zip bomb is refused before it costs memory. A
CSV needs a header row; ``target`` names the column to predict (default: the column named
``target``, :data:`DEFAULT_CSV_TARGET`) and every other column is a numeric feature.

The checks (every failure an :class:`UploadError` naming the ``field`` to fix):

- ``x``: a bool, integer or float array of ``ndim`` 2, 3 or 4: ``(n, F)`` features, ``(n, T)``
  integer token ids for an ``embedding`` model, or ``(n, C, L)`` / ``(n, C, H, W)`` signals and
  images (channels first); at least :data:`MIN_SAMPLES` samples and at most
  :data:`MAX_SAMPLE_VALUES` values per sample; every value finite (also once cast to float32);
- ``y``: one value per sample. An integer or bool ``y`` is a classification target (``task``
  may say ``regression`` instead), a float ``y`` a regression one; classification needs 2 to
  :data:`MAX_CLASSES` classes with at least 2 samples each (the split is stratified), and
  its labels become class indices ``0..K-1`` in sorted order.

The result, :class:`UploadedArrays`, is canonical: ``x`` float32 in C order, ``y`` int64 class
indices or float32 values. Its :attr:`~UploadedArrays.id` is the SHA-256 of that canonical
form and the task, so the same data uploaded twice (in any container, dtype or order of
members) gets the same id. :meth:`UploadedArrays.to_npz` is how it is stored, and
:func:`parse_npz` reads it back.

Example:
    >>> import io, numpy as np
    >>> x = np.arange(40, dtype=np.float64).reshape(20, 2)
    >>> y = np.array([3, 7] * 10)
    >>> buffer = io.BytesIO()
    >>> np.savez(buffer, x=x, y=y)
    >>> arrays = parse_upload(buffer.getvalue(), max_bytes=1 << 20)
    >>> arrays.task, arrays.x.dtype, arrays.n_classes, arrays.y[:4].tolist()
    ('classification', dtype('float32'), 2, [0, 1, 0, 1])
    >>> csv = b"a,b,label\\n" + b"".join(b"%d,%d,%d\\n" % (i, 2 * i, i % 2) for i in range(20))
    >>> parse_upload(csv, target="label", max_bytes=1 << 20).x.shape
    (20, 2)
    >>> parse_upload(csv, target="species", max_bytes=1 << 20)
    Traceback (most recent call last):
    ...
    lrtune.upload_parsing.UploadError: the CSV has no column 'species': its columns are a, b, label
    >>> parse_upload(csv, max_bytes=1 << 20)
    Traceback (most recent call last):
    ...
    lrtune.upload_parsing.UploadError: the CSV has no column named 'target' and the upload \
names no target column: name one of a, b, label as target
    >>> parse_upload(csv.replace(b"label", b"target"), max_bytes=1 << 20).n_classes
    2
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lrtune.exceptions import InvalidInputError

Task = Literal["classification", "regression"]

MIN_SAMPLES = 10
"""Fewest samples an upload may hold (a train and a validation part need some each)."""
MAX_CLASSES = 1000
"""Most classes a classification upload may have."""
MAX_LABEL_CHARS = 256
"""Longest class name a CSV's target column may hold."""
DEFAULT_CSV_TARGET = "target"
"""A CSV's target column when the upload names none."""
MAX_SAMPLE_VALUES = 2**24
"""Most values one sample's features may hold (the sequential model's activation cap)."""
MAX_HEADER_BYTES = 10_000
"""The largest ``.npy`` header read (numpy's own safety limit)."""

_ARRAYS = ("x", "y")
_NUMERIC_KINDS = "biuf"
_NPZ_MAGIC = b"PK"
_NPY_MAGIC = b"\x93NUMPY"
_TASKS: tuple[Task, ...] = ("classification", "regression")


class UploadError(InvalidInputError):
    """An upload that cannot become a dataset; ``field`` is the form field to fix
    (``file``, ``target`` or ``task``)."""

    def __init__(self, message: str, field: str = "file") -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class UploadedArrays:
    """A checked dataset in canonical form (see the module)."""

    x: np.ndarray
    y: np.ndarray
    task: Task

    @property
    def n_classes(self) -> int | None:
        """Classes of a classification target; ``None`` for regression."""
        return int(self.y.max()) + 1 if self.task == "classification" else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape: ``x.shape[1:]``."""
        return tuple(int(size) for size in self.x.shape[1:])

    @property
    def output_dim(self) -> int:
        """What a model must output: the class count, or 1 for regression."""
        return self.n_classes or 1

    @property
    def id(self) -> str:
        """SHA-256 hex of the task and the canonical arrays' dtypes, shapes and bytes."""
        digest = hashlib.sha256(f"lrtune-dataset-v1:{self.task}".encode())
        for array in (self.x, self.y):
            digest.update(f"|{array.dtype.str}{array.shape}|".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def to_npz(self) -> bytes:
        """The arrays as a compressed ``.npz`` (``x``, ``y``): how the store keeps them.

        Deflate at level 1: images and tokens shrink nearly as much as at numpy's level 6,
        in a fraction of the time, and float noise hardly shrinks at any level.
        """
        from numpy.lib import format as npy_format

        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for name, array in (("x", self.x), ("y", self.y)):
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    npy_format.write_array(member, array, allow_pickle=False)
        return buffer.getvalue()


def parse_upload(
    data: bytes, *, target: str | None = None, task: str | None = None, max_bytes: int
) -> UploadedArrays:
    """Parse and check an ``.npz`` or CSV upload (told apart by its first bytes).

    ``target`` names a CSV's target column (an ``.npz`` has none; a CSV's default is its
    column named :data:`DEFAULT_CSV_TARGET`, when it has one); ``task`` overrides the task
    inferred from ``y``; ``max_bytes`` caps the decoded arrays.

    Raises:
        UploadError: the upload is not a dataset lrtune can use; the message says what to fix.
    """
    if task is not None and task not in _TASKS:
        raise UploadError(f"task must be one of {', '.join(_TASKS)}, got {task!r}", "task")
    if data.startswith(_NPY_MAGIC):
        raise UploadError(
            "this is a single .npy array: upload an .npz holding x and y "
            "(numpy.savez(file, x=x, y=y))"
        )
    if data.startswith(_NPZ_MAGIC):
        if target is not None:
            raise UploadError("an .npz upload takes no target: its y array is the target", "target")
        x, y = parse_npz(data, max_bytes)
    else:
        x, y = parse_csv(data, target, max_bytes, task=task)
    return check_arrays(x, y, task=task)


def parse_npz(data: bytes, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """The arrays ``x`` and ``y`` of an ``.npz``, each header checked before its array is read.

    Raises:
        UploadError: not a readable ``.npz`` of ``x`` and ``y`` within ``max_bytes``.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            if sorted(members) != sorted(_ARRAYS):
                found = ", ".join(sorted(members)) or "nothing"
                raise UploadError(
                    f"the .npz must hold exactly the arrays x and y, it holds {found}: "
                    "save it with numpy.savez(file, x=x, y=y)"
                )
            budget = max_bytes
            arrays = []
            for name in _ARRAYS:
                array = _read_member(archive, members[name], name, budget)
                budget -= array.nbytes
                arrays.append(array)
    except UploadError:
        raise
    # What zipfile and zlib raise on a damaged archive (a bad offset is a ValueError, an
    # unknown compression method a NotImplementedError).
    except (
        zipfile.BadZipFile,
        EOFError,
        OSError,
        zlib.error,
        ValueError,
        NotImplementedError,
    ) as exc:
        raise UploadError(f"not a readable .npz (truncated or corrupt?): {exc}") from None
    return arrays[0], arrays[1]


def _read_member(archive: zipfile.ZipFile, member: str, name: str, budget: int) -> np.ndarray:
    with archive.open(member) as stream:
        header = _read_header(stream, name)
        shape, fortran_order, dtype = header
        if dtype.hasobject or dtype.names is not None or dtype.kind not in _NUMERIC_KINDS:
            raise UploadError(
                f"{name} has dtype {dtype}: use a bool, integer or float array "
                "(no object, string, complex or structured dtypes)"
            )
        if any(size < 0 for size in shape):
            raise UploadError(f"{name}.npy has a header with a negative size in shape {shape}")
        size = math.prod(shape) * dtype.itemsize  # Python ints: a forged shape cannot overflow
        if size > budget:
            raise UploadError(
                f"{name} has shape {shape} of {dtype}, {size} bytes: the arrays may hold "
                f"{budget} bytes more at most (LRTUNE_MAX_UPLOAD_BYTES); upload fewer samples"
            )
        raw = stream.read(size + 1)
    if len(raw) != size:
        raise UploadError(
            f"{name} is truncated or has trailing bytes: its header says {size} bytes of data, "
            f"the file holds {len(raw) if len(raw) <= size else 'more'}"
        )
    array = np.frombuffer(raw, dtype=dtype)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _read_header(stream: io.BufferedIOBase, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            return npy_format.read_array_header_1_0(stream, max_header_size=MAX_HEADER_BYTES)
        if version == (2, 0):
            return npy_format.read_array_header_2_0(stream, max_header_size=MAX_HEADER_BYTES)
    except ValueError as exc:
        raise UploadError(f"{name}.npy has an unreadable header: {exc}") from None
    raise UploadError(f"{name}.npy is in .npy format {version}: save it with numpy 1.x or 2.x")


def parse_csv(
    data: bytes, target: str | None, max_bytes: int, *, task: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Features and target of a CSV with a header row; ``target`` names the target column
    (``None``: the column named :data:`DEFAULT_CSV_TARGET`).

    Features must be numbers. The target may be numbers or class names (text; unless ``task``
    is ``regression``), which become class indices in the names' sorted order. Numbers are
    parsed by :func:`numpy.loadtxt` (C speed, no Python object per cell); names are read row by
    row, so memory stays proportional to the body: at most :data:`MAX_CLASSES` names of at most
    :data:`MAX_LABEL_CHARS` characters each.

    Raises:
        UploadError: not UTF-8, no header, no such column, a cell that is not a number.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UploadError(
            "the file is neither an .npz (a zip of x.npy and y.npy) nor CSV text in UTF-8: "
            f"{exc.reason} at byte {exc.start}"
        ) from None
    try:
        header = [cell.strip() for cell in next(csv.reader(io.StringIO(text)), [])]
    except csv.Error as exc:
        raise UploadError(f"the CSV's header row cannot be read: {exc}") from None
    if not any(header):
        raise UploadError("the CSV is empty: it needs a header row and one row per sample")
    if target is None:
        if DEFAULT_CSV_TARGET not in header:
            raise UploadError(
                f"the CSV has no column named {DEFAULT_CSV_TARGET!r} and the upload names no "
                f"target column: name one of {', '.join(header)} as target",
                "target",
            )
        target = DEFAULT_CSV_TARGET
    if target not in header:
        raise UploadError(
            f"the CSV has no column {target!r}: its columns are {', '.join(header)}", "target"
        )
    if len(header) < 2:
        raise UploadError("the CSV needs at least one feature column besides the target")
    rows = text.count("\n")
    if rows * (len(header) - 1) * 4 > max_bytes:
        raise UploadError(
            f"the CSV's {rows} rows of {len(header) - 1} features exceed {max_bytes} bytes as "
            "float32 (LRTUNE_MAX_UPLOAD_BYTES): upload fewer rows"
        )
    target_at = header.index(target)
    feature_at = [at for at in range(len(header)) if at != target_at]
    try:
        features = _load_columns(text, feature_at, np.float32)
    except (ValueError, csv.Error) as exc:  # find the first bad cell and its line, to say it
        raise UploadError(_first_problem(text, header, target_at) or f"the CSV: {exc}") from None
    try:
        values = _load_columns(text, [target_at], np.float64).reshape(-1)
    except ValueError:  # class names: streamed into class indices, never a "<U{longest}" array
        if task == "regression":
            raise UploadError(
                f"a regression target must be numbers, column {target!r} holds text"
            ) from None
        try:
            return features, _class_names(text, target_at, target, len(features))
        except csv.Error as exc:
            raise UploadError(f"the CSV cannot be read: {exc}") from None
    return features, _csv_target(values)


def _load_columns(text: str, columns: list[int], dtype: type) -> np.ndarray:
    with warnings.catch_warnings():  # no rows: the sample count check says so
        warnings.simplefilter("ignore", UserWarning)
        return np.loadtxt(
            io.StringIO(text),
            delimiter=",",
            skiprows=1,
            usecols=columns,
            dtype=dtype,
            ndmin=2,
            quotechar='"',
            comments=None,
        )


def _first_problem(text: str, header: list[str], target_at: int) -> str | None:
    """What is wrong with the first row that numpy could not read (a slow scan, in Python)."""
    rows = csv.reader(io.StringIO(text))
    next(rows)
    try:
        return _first_bad_row(rows, header, target_at)
    except csv.Error as exc:
        return f"the CSV cannot be read on line {rows.line_num}: {exc}"


def _first_bad_row(rows: Iterator[list[str]], header: list[str], target_at: int) -> str | None:
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(header):
            return (
                f"CSV line {line} has {len(row)} cells, the header {len(header)}: "
                "every row needs one value per column"
            )
        for at, (cell, column) in enumerate(zip(row, header, strict=True)):
            if at == target_at:
                continue
            try:
                float(cell)
            except ValueError:
                return (
                    f"CSV line {line}, column {column!r}: {cell.strip()[:40]!r} is not a "
                    "number (features must be numeric)"
                )
    return None


def _class_names(text: str, target_at: int, target: str, samples: int) -> np.ndarray:
    """The class indices (sorted names' order) of a target column of names, read row by row:
    memory is one int64 per row and the distinct names, each at most :data:`MAX_LABEL_CHARS`."""
    codes = np.empty(samples, dtype=np.int64)
    names: dict[str, int] = {}
    rows = csv.reader(io.StringIO(text))
    next(rows)
    at = 0
    for row in rows:
        if not row:
            continue
        if len(row) <= target_at or at == samples:
            raise UploadError(
                f"CSV line {rows.line_num} has {len(row)} cells or lies past the rows numpy "
                "read: every row needs one value per column, and no line breaks inside cells"
            )
        name = row[target_at]
        if len(name) > MAX_LABEL_CHARS:
            raise UploadError(
                f"CSV line {rows.line_num}, column {target!r}: a class name of {len(name)} "
                f"characters; class names may have at most {MAX_LABEL_CHARS}",
                "target",
            )
        code = names.setdefault(name, len(names))
        if len(names) > MAX_CLASSES:
            raise UploadError(
                f"column {target!r} has more than {MAX_CLASSES} distinct class names: "
                f"classification needs 2 to {MAX_CLASSES} (a numeric target must be numbers "
                "in every row)",
                "target",
            )
        codes[at] = code
        at += 1
    if at != samples:
        raise UploadError(f"the CSV has {samples} rows of features but {at} class names")
    order = sorted(names)
    rank = np.empty(len(order), dtype=np.int64)
    rank[[names[name] for name in order]] = np.arange(len(order))
    counts = np.bincount(codes, minlength=len(order))
    rare = [name for name in order if counts[names[name]] < 2]
    if rare and len(order) >= 2:
        raise UploadError(
            f"classes {', '.join(rare[:5])} have a single sample: each class needs at least 2 "
            "(the train/validation split is stratified)"
        )
    return rank[codes]


def _csv_target(values: np.ndarray) -> np.ndarray:
    if values.size and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype(np.int64)
    return values


def check_arrays(x: np.ndarray, y: np.ndarray, *, task: str | None = None) -> UploadedArrays:
    """Check features ``x`` and target ``y`` (see the module) and make them canonical.

    Raises:
        UploadError: a check failed; the message says which and what to fix.
    """
    x, y = np.asarray(x), np.asarray(y)
    _check_x(x)
    if y.ndim != 1 or len(y) != len(x):
        raise UploadError(
            f"y must be 1-D with one value per sample of x: x has {len(x)} "
            f"samples, y has shape {y.shape}"
        )
    if task is None:
        task = "regression" if y.dtype.kind == "f" else "classification"
    if task not in _TASKS:
        raise UploadError(f"task must be one of {', '.join(_TASKS)}, got {task!r}", "task")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf: refused
        features = np.ascontiguousarray(x, dtype=np.float32)
    if not np.all(np.isfinite(features)):
        bad = int(np.count_nonzero(~np.isfinite(features)))
        raise UploadError(
            f"x holds {bad} NaN or infinite values (or values too large for float32): "
            "fill or drop them before uploading"
        )
    if task == "classification":
        return UploadedArrays(features, _class_indices(y), "classification")
    if y.dtype.kind not in _NUMERIC_KINDS:
        raise UploadError(f"a regression target must be numbers, y has dtype {y.dtype}")
    values = np.ascontiguousarray(y, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise UploadError("y holds NaN or infinite values: fill or drop those samples")
    return UploadedArrays(features, values, "regression")


def _check_x(x: np.ndarray) -> None:
    if x.dtype.hasobject or x.dtype.kind not in _NUMERIC_KINDS:
        raise UploadError(f"x has dtype {x.dtype}: use a bool, integer or float array")
    if x.ndim not in (2, 3, 4):
        raise UploadError(
            f"x has shape {x.shape}: use (n, features), (n, tokens), (n, C, L) or (n, C, H, W)"
        )
    if len(x) < MIN_SAMPLES:
        raise UploadError(f"x has {len(x)} samples: upload at least {MIN_SAMPLES}")
    per_sample = int(np.prod(x.shape[1:]))
    if not 1 <= per_sample <= MAX_SAMPLE_VALUES:
        raise UploadError(f"x has {per_sample} values per sample: use 1 to {MAX_SAMPLE_VALUES}")


def _class_indices(y: np.ndarray) -> np.ndarray:
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise UploadError(
                "a classification target must be class labels (integers or names), y holds "
                "fractional or non-finite values: upload an integer y, or say task=regression"
            )
    elif y.dtype.kind not in "biuU":
        raise UploadError(f"a classification target must be integers or names, not {y.dtype}")
    classes, indices, counts = np.unique(y, return_inverse=True, return_counts=True)
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise UploadError(
            f"y has {len(classes)} classes: classification needs 2 to {MAX_CLASSES} "
            "(a float y is read as a regression target)"
        )
    rare = classes[counts < 2]
    if len(rare):
        shown = ", ".join(str(label) for label in rare[:5].tolist())
        raise UploadError(
            f"classes {shown} have a single sample: each class needs at least 2 "
            "(the train/validation split is stratified)"
        )
    return np.ascontiguousarray(indices.reshape(-1), dtype=np.int64)
