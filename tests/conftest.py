from __future__ import annotations

import os

import pytest
import torch

# Tests train tiny models; one thread avoids oversubscribing the two cores CI has.
torch.set_num_threads(int(os.environ.get("LRTUNE_TORCH_THREADS", "1")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def artifacts_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Workers' checkpoints (``LRTUNE_ARTIFACT_DIR``, inherited by worker processes) go to a
    temporary folder, not ``./lrtune-artifacts`` in the repository, unless the caller set it."""
    os.environ.setdefault("LRTUNE_ARTIFACT_DIR", str(tmp_path_factory.mktemp("artifacts")))


@pytest.fixture
def blobs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A separable 3-class problem as 24 batches of 32."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 3
    y = torch.randint(0, 3, (768,), generator=g)
    x = centers[y] + torch.randn(768, 8, generator=g)
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, 768, 32)]


POSTGRES_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# Each checkout running the suite at once (parallel work trees, CI beside a developer) names
# its own scratch database, since the tests drop and create tables in it.
# Under pytest-xdist (make test's -n 2), each worker process has its own as well.
POSTGRES_TEST_DB = os.environ.get("LRTUNE_TEST_POSTGRES_DB", "lrtune_test") + (
    f"_{os.environ['PYTEST_XDIST_WORKER']}" if "PYTEST_XDIST_WORKER" in os.environ else ""
)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A URL to a scratch database on the PostgreSQL of LRTUNE_TEST_POSTGRES_URL.

    CI sets the variable and a failure to connect is an error; without it, the default local
    server is tried and its absence skips the PostgreSQL tests.
    """
    import sqlalchemy as sa

    configured = os.environ.get("LRTUNE_TEST_POSTGRES_URL")
    admin = sa.engine.make_url(configured or POSTGRES_DEFAULT)
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": POSTGRES_TEST_DB}
            )
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{POSTGRES_TEST_DB}"'))
    except sa.exc.OperationalError as exc:
        if configured:
            raise
        pytest.skip(f"no PostgreSQL at {admin.render_as_string()}: {exc.orig}")
    finally:
        engine.dispose()
    return admin.set(database=POSTGRES_TEST_DB).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An Optuna RDB storage URL: a fresh SQLite file, or the scratch PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lrtune.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def empty_jobs_url(storage_url: str) -> str:
    """A job store URL with none of lrtune's tables yet (SQLite: a new file)."""
    from lrtune.jobs import tables
    from lrtune.jobs.db import get_engine

    if storage_url.startswith("postgresql"):
        with get_engine(storage_url).begin() as conn:
            for table in [*tables.Base.metadata.tables, tables.VERSION_TABLE]:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table} CASCADE")
    return storage_url


@pytest.fixture
def jobs_url(empty_jobs_url: str) -> str:
    """A job store URL with an empty, current schema."""
    from lrtune.jobs import upgrade

    upgrade(empty_jobs_url)
    return empty_jobs_url


@pytest.fixture
def store(jobs_url: str):
    """A job store on :func:`jobs_url`."""
    from lrtune.jobs import JobStore

    return JobStore(jobs_url)


@pytest.fixture(scope="session")
def onecycle_recommendation():
    """A real onecycle recommendation of a tiny job tuned for 6 epochs (logistic regression on
    wine; finalists only, so no baseline wins)."""
    from small_jobs import small_job

    from lrtune.tuner import tune

    spec = small_job(n_trials=2, epochs=6, families=["onecycle"], confirm_seeds=1, baselines=[])
    return tune(spec, progress=False)
