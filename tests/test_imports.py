"""What a process that never trains (the HTTP API, ``lrtune list``) may import.

Each check runs in a fresh interpreter, since this test process has long imported torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "optuna", "sklearn")


def heavy_modules_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return the heavy packages it left in sys.modules."""
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_lrtune_and_validating_a_job_spec_load_no_heavy_package() -> None:
    code = """
        import lrtune
        spec = lrtune.JobSpec.model_validate({
            "model": {"name": "mlp", "params": {"hidden": [64]}},
            "dataset": {"name": "digits"},
            "optimizer": {"name": "adamw"},
            "param_groups": [{"prefix": "0.", "lr_mult": 0.1}],
            "search": {"families": ["cosine", "onecycle"], "n_trials": 5},
        })
        assert spec.fingerprint() and spec.study_name()
        assert "cosine" in lrtune.schedules.FAMILIES
        assert issubclass(lrtune.exceptions.InvalidInputError, ValueError)
    """
    assert heavy_modules_after(code) == []


def test_the_optuna_storage_loads_neither_the_job_store_nor_alembic() -> None:
    """``lrtune.optuna_storage`` (where ``tune`` opens its study) shares the job store's engine
    code, ``lrtune._rdb``, not its package: a notebook's ``tune`` loads no migrations."""
    code = """
        import sys
        import lrtune.optuna_storage
        store = ("alembic", "lrtune.jobs")
        loaded = sorted(m for m in sys.modules if m in store or m.startswith(store[0] + "."))
        loaded += sorted(m for m in sys.modules if m.startswith(store[1] + "."))
        assert loaded == [], f"importing lrtune.optuna_storage loaded {loaded}"
    """
    heavy_modules_after(code)  # fails on the assertion's message


def test_registry_names_and_builtin_params_load_no_heavy_package() -> None:
    code = """
        from lrtune import registry
        assert {"mlp", "cnn", "logreg"} <= set(registry.model_names())
        assert "digits" in registry.dataset_names()
        assert registry.model_params_schema("mlp").model_json_schema()["properties"]["hidden"]
        registry.validate_model_params("mlp", {"hidden": [32], "dropout": 0.1})
        registry.validate_dataset_params("synthetic", {"n_classes": 3})
        for bad in ({"hidden": [0]}, {"depth": 2}):
            try:
                registry.validate_model_params("mlp", bad)
            except ValueError:
                pass
            else:
                raise AssertionError(bad)
        try:
            registry.validate_model_params("resnet", {})
        except LookupError:
            pass
        else:
            raise AssertionError("an unknown model passed")
    """
    assert heavy_modules_after(code) == []


@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["--help"]])
def test_cli_commands_that_do_not_train_load_no_heavy_package(command: list[str]) -> None:
    code = f"""
        import contextlib, io
        from lrtune.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main({command!r})
            except SystemExit as exit:
                assert exit.code == 0, exit.code
    """
    assert heavy_modules_after(code) == []


def test_reading_a_stored_recommendation_loads_no_heavy_package(tmp_path: Path) -> None:
    """The service serves stored results: reading one, its verdict and snippet need no torch."""
    import lrtune

    spec = lrtune.JobSpec.model_validate(
        {
            "model": {"name": "logreg"},
            "dataset": {"name": "wine"},
            "range_test": {"seeds": 2, "num_iter": 30},
            "search": {
                "n_trials": 2,
                "epochs": 2,
                "families": ["cosine"],
                "confirm_seeds": 2,
                "baselines": [],  # a cosine finalist wins: its snippet builds a scheduler
            },
        }
    )
    stored = tmp_path / "rec.json"
    stored.write_text(lrtune.tune(spec, progress=False).model_dump_json())
    code = f"""
        from pathlib import Path
        from lrtune.recommendation import Recommendation
        rec = Recommendation.model_validate_json(Path({str(stored)!r}).read_text())
        assert rec.confirmed and rec.verdict and "CosineAnnealingLR" in rec.to_code()
        assert rec.range_test.suggestion == rec.range_test.model_dump()["suggestion"]
    """
    assert heavy_modules_after(code) == []


def test_job_store_commands_load_no_heavy_package(tmp_path: Path) -> None:
    """``lrtune submit`` and ``lrtune status`` (and the HTTP API) reach the store without torch."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    job = tmp_path / "job.yaml"
    job.write_text("model: {name: mlp}\ndataset: {name: digits}\n")
    code = f"""
        import contextlib, io
        from lrtune.cli import main
        for argv in (["submit", {str(job)!r}], ["status"], ["db", "upgrade"]):
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(argv + ["--database", {url!r}]) == 0
        from lrtune.jobs import JobStore
        assert JobStore({url!r}).list_jobs().data[0].status.value == "queued"
    """
    assert heavy_modules_after(code) == []
