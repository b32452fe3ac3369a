"""Token ids out of an embedding's range are known at upload, and refused before a worker runs.

An upload stores the range of its features' values (``x_min``, ``x_max``, ``x_integral``), on
SQLite and PostgreSQL; :func:`lrtune.registry.check_token_range` checks a ``sequential``
model's input embeddings against it without torch, and the model built by torch fails on the
same data for the same reason (what a worker would have met).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from lrtune.exceptions import InvalidInputError
from lrtune.jobs import JobStore, upgrade
from lrtune.jobs.db import get_engine
from lrtune.jobs.revision import current_revision, head_revision
from lrtune.registry import check_token_range
from lrtune.upload_parsing import check_arrays

VOCABULARY = 50


def token_data(largest: int, n: int = 40, steps: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of ``steps`` token ids in ``[0, largest]`` (``largest`` occurs), two classes."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, largest + 1, size=(n, steps)).astype(np.float32)
    x[0, 0] = largest
    return x, np.arange(n) % 2


def embedding_model(
    vocabulary: int = VOCABULARY, before: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "layers": [
            *(before or []),
            {"type": "embedding", "num_embeddings": vocabulary, "embedding_dim": 8},
            {"type": "sequence_pool"},
            {"type": "linear", "out_features": 2},
        ]
    }


# --- the stored range, on SQLite and PostgreSQL --------------------------------------------------


def test_an_upload_stores_its_value_range_and_the_record_carries_it(jobs_url: str) -> None:
    store = JobStore(jobs_url)
    upload, created = store.uploads.save(check_arrays(*token_data(largest=60)))
    assert created
    assert (upload.x_min, upload.x_max, upload.x_integral) == (0.0, 60.0, True)
    listed = store.uploads.list_uploads().data[0]
    assert (listed.x_min, listed.x_max, listed.x_integral) == (0.0, 60.0, True)
    assert store.uploads.get(upload.id).model_dump(mode="json")["x_max"] == 60.0

    real = np.linspace(-1.5, 2.25, 40 * 3, dtype=np.float32).reshape(40, 3)
    other, _ = store.uploads.save(check_arrays(real, np.arange(40) % 2))
    assert (other.x_min, other.x_max, other.x_integral) == (-1.5, 2.25, False)


def test_migration_0007_leaves_older_uploads_unchecked_until_uploaded_again(
    empty_jobs_url: str,
) -> None:
    from alembic import command

    from lrtune.jobs.revision import _config

    url = empty_jobs_url
    upgrade(url, "0006")
    arrays = check_arrays(*token_data(largest=60))
    with get_engine(url).begin() as conn:  # a row as lrtune at revision 0006 stored it
        conn.execute(
            sa.text(
                "INSERT INTO lrtune_uploads (id, kind, name, task, x_shape, n_classes, bytes, "
                "data) VALUES (:id, 'dataset', 'old', 'classification', :shape, 2, :bytes, "
                ":data)"
            ),
            {
                "id": arrays.id,
                "shape": "[40, 6]",
                "bytes": len(arrays.to_npz()),
                "data": arrays.to_npz(),
            },
        )
    assert upgrade(url) == head_revision()
    store = JobStore(url)
    old = store.uploads.get(arrays.id)
    assert (old.x_min, old.x_max, old.x_integral) == (None, None, None)  # not checked
    check_token_range("sequential", embedding_model(), old.x_max, old.x_min, old.x_integral)

    again, created = store.uploads.save(arrays, name="again")  # the same data: the same row
    assert not created and again.name == "old"
    assert (again.x_min, again.x_max, again.x_integral) == (0.0, 60.0, True)
    assert store.uploads.get(arrays.id).x_max == 60.0  # stored, not only returned

    with get_engine(url).begin() as conn:
        config = _config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    assert current_revision(url) == "0006"
    columns = {c["name"] for c in sa.inspect(get_engine(url)).get_columns("lrtune_uploads")}
    assert not {"x_min", "x_max", "x_integral"} & columns
    upgrade(url)
    assert JobStore(url).uploads.get(arrays.id).x_max is None


# --- the check -----------------------------------------------------------------------------------


def test_a_token_id_at_or_above_num_embeddings_is_refused_with_the_field_and_the_fix() -> None:
    check_token_range("sequential", embedding_model(), VOCABULARY - 1.0, 0.0, True)
    with pytest.raises(InvalidInputError) as refused:
        check_token_range("sequential", embedding_model(), float(VOCABULARY), 0.0, True)
    assert refused.value.loc == ("layers", 0, "embedding", "num_embeddings")
    message = str(refused.value)
    assert f"largest token id is {VOCABULARY}," in message
    assert f"ids 0..{VOCABULARY - 1}" in message
    assert f"set num_embeddings to at least {VOCABULARY + 1}" in message


@pytest.mark.parametrize(
    ("x_min", "integral", "says"),
    [(-1.0, True, "smallest value is -1"), (0.0, False, "fractional values")],
)
def test_negative_or_fractional_values_fed_to_an_embedding_are_refused(
    x_min: float, integral: bool, says: str
) -> None:
    with pytest.raises(InvalidInputError, match=says) as refused:
        check_token_range("sequential", embedding_model(), 3.0, x_min, integral)
    assert refused.value.loc == ("layers", 0, "embedding")


def test_only_embeddings_the_input_reaches_unchanged_are_checked() -> None:
    reshaped = embedding_model(before=[{"type": "flatten"}, {"type": "reshape", "shape": [6]}])
    with pytest.raises(InvalidInputError) as refused:
        check_token_range("sequential", reshaped, 99.0)
    assert refused.value.loc == ("layers", 2, "embedding", "num_embeddings")

    in_residual = {
        "layers": [
            {
                "type": "residual",
                "layers": [
                    {"type": "embedding", "num_embeddings": 10, "embedding_dim": 1},
                    {"type": "flatten"},
                ],
            },
            {"type": "linear", "out_features": 2},
        ]
    }
    with pytest.raises(InvalidInputError) as refused:
        check_token_range("sequential", in_residual, 10.0)
    assert refused.value.loc == (
        "layers",
        0,
        "residual",
        "layers",
        0,
        "embedding",
        "num_embeddings",
    )

    after_linear = embedding_model(before=[{"type": "linear", "out_features": 6}])
    check_token_range("sequential", after_linear, 1e6, -5.0, False)  # computed values: no check


def test_other_models_unknown_names_and_unrecorded_ranges_are_not_checked() -> None:
    check_token_range("mlp", {"hidden": [8]}, 1e9, -1.0, False)
    check_token_range("a_plugin_only_workers_have", {"anything": 1}, 1e9)
    check_token_range("sequential", embedding_model(), None)


def test_what_the_check_refuses_is_what_the_built_model_fails_on() -> None:
    import torch

    from lrtune.registry import build_model

    x, _ = token_data(largest=VOCABULARY)
    model = build_model("sequential", ((6,), 2), embedding_model(), seed=0)
    with pytest.raises(InvalidInputError, match="outside"):
        model(torch.from_numpy(x))
    fits = token_data(largest=VOCABULARY - 1)[0]
    assert model(torch.from_numpy(fits)).shape == (40, 2)
    check_token_range("sequential", embedding_model(), float(fits.max()), 0.0, True)
