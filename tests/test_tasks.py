"""The user's own training code as a job (lrtune.Task): in a notebook, on a worker that loaded
it, refused where no worker runs it, and failing with one line when it breaks its contract."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import task_fixtures
import yaml
from task_fixtures import RANGE_TEST, SEARCH

import lrtune
from lrtune.exceptions import InvalidInputError
from lrtune.jobs import JobStatus, JobStore
from lrtune.spec import JobSpec
from lrtune.workers.loop import Worker
from lrtune.workers.tasks import load_named

REPO = Path(__file__).resolve().parents[1]


def task_job(name: str = "Blobs", **search: object) -> JobSpec:
    """A job naming a task, as a user posts it: the task's name and the search."""
    return JobSpec.model_validate(
        {"task": {"name": name}, "range_test": RANGE_TEST, "search": SEARCH | search}
    )


def loaded_worker(store: JobStore, *paths: str, worker_id: str = "w-tasks") -> Worker:
    return Worker(store, device="cpu", worker_id=worker_id, tasks=load_named(paths))


def test_a_task_tuned_in_a_notebook_and_on_a_worker_gets_the_same_recommendation(
    store: JobStore,
) -> None:
    in_notebook = lrtune.tune(
        task_fixtures.Blobs(), search=SEARCH, range_test=RANGE_TEST, progress=False
    )
    worker = loaded_worker(store, "task_fixtures:blobs")
    with worker._presence():  # published: the store admits jobs naming the task
        job = store.submit(task_job())
    assert job.spec.search.metric == "accuracy" and job.spec.task.lrs == [0.05]
    worker.run(once=True)
    stored = store.recommendation(job.id)
    on_worker = stored.recommendation

    assert store.get(job.id).status is JobStatus.SUCCEEDED
    assert on_worker.metric == in_notebook.metric == "accuracy"
    assert on_worker.best.schedule == in_notebook.best.schedule
    assert on_worker.base_lr == in_notebook.base_lr
    assert [b.name for b in on_worker.baselines] == ["your lr as written"]
    assert "task.build_optimizer(model)" in on_worker.to_code()


def test_a_job_naming_a_task_no_live_worker_runs_is_refused_at_the_task_name(
    store: JobStore,
) -> None:
    with pytest.raises(InvalidInputError, match="no live worker or agent runs task 'Blobs'") as exc:
        store.submit(task_job())
    assert exc.value.loc == ("task", "name")


def test_only_a_worker_that_loaded_the_task_claims_its_job(store: JobStore) -> None:
    with loaded_worker(store, "task_fixtures:blobs")._presence():
        job = store.submit(task_job())
    assert store.claim("plain", 30, device="cpu", tasks=()) is None  # registry jobs only
    assert store.claim("other", 30, device="cpu", tasks=["Other"]) is None
    lease = store.claim("loaded", 30, device="cpu", tasks=["Blobs"])
    assert lease is not None and lease.job_id == job.id


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("task_fixtures:Raises", "ValueError: the validation set is not mounted"),
        ("task_fixtures:NoMetric", "Raises.evaluate() in epoch 1 returned no 'accuracy'"),
        ("task_fixtures:NanMetric", "returned accuracy = nan"),
    ],
)
def test_a_task_that_breaks_its_contract_fails_its_job_with_one_line_and_the_worker_goes_on(
    store: JobStore, path: str, reason: str
) -> None:
    worker = loaded_worker(store, path, "task_fixtures:blobs")
    name = path.split(":")[1]
    with worker._presence():
        broken = store.submit(task_job(name), reuse=False)
        fine = store.submit(task_job("Blobs"), reuse=False)
    worker.run(once=True)

    failed = store.get(broken.id)
    assert failed.status is JobStatus.FAILED
    expected = reason.replace("Raises", name)
    assert expected in failed.error and "\n" not in failed.error, failed.error
    assert store.get(fine.id).status is JobStatus.SUCCEEDED  # the worker kept serving


def test_a_factory_task_takes_the_jobs_params_and_publishes_their_schema(store: JobStore) -> None:
    worker = loaded_worker(store, "task_fixtures:Blobs")
    registry = worker.tasks["Blobs"].info
    assert registry.params_schema["properties"]["hidden"]["type"] == "integer"
    task = worker.tasks["Blobs"].make({"hidden": 8})
    assert task.hidden == 8
    with pytest.raises(InvalidInputError, match="params"):
        worker.tasks["Blobs"].make({"width": 8})


def test_lrtune_worker_with_a_task_that_does_not_import_exits_2_with_one_line(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    for path, says in [
        ("no_such_module:task", "failed to import: ModuleNotFoundError"),
        ("task_fixtures:broken_factory", "raised RuntimeError: no GPU quota"),
        ("task_fixtures", "write it as package.module:attribute"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "lrtune.cli", "worker", "--once", "--task", path,
             "--database", f"sqlite:///{tmp_path / 'jobs.db'}"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0], done.stderr


def test_a_worker_loads_the_tasks_installed_packages_declare_and_skips_a_broken_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from lrtune.workers.tasks import load_installed

    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO / "tests" / "plugin_dist"))
        try:
            with caplog.at_level("WARNING", logger="lrtune.workers"):
                installed = load_installed()
        finally:
            sys.modules.pop("lrtune_test_plugin", None)
    assert set(installed) == {"plugin_task"}
    assert installed["plugin_task"].info.metric == "val_loss"
    assert any("broken_task left out" in r.message for r in caplog.records), caplog.text


def test_a_task_job_file_submitted_through_the_cli_searches_the_tasks_metric(
    store: JobStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The file leaves the metric unset: by the store and over HTTP, the task's is searched."""
    from cli_runs import run_cli
    from live_api import serve

    from lrtune.api.config import ApiSettings
    from lrtune.api.main import create_app

    job_file = tmp_path / "job.yaml"
    job_file.write_text("task: {name: Blobs}\nsearch: {n_trials: 2}\n")
    app = create_app(ApiSettings(database_url=store.url), store=store)
    with serve(app) as url, loaded_worker(store, "task_fixtures:blobs")._presence():
        for where in (["--database", store.url], ["--url", url]):
            code, _, err = run_cli(capsys, "submit", str(job_file), "--no-reuse", *where)
            assert code == 0, err
    jobs = store.list_jobs().data
    assert len(jobs) == 2
    for job in jobs:
        assert (job.spec.search.metric, job.spec.search.direction) == ("accuracy", "maximize")


def test_lrtune_serve_passes_its_tasks_to_the_embedded_workers_and_checks_them_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cli_runs import run_cli

    from lrtune.api.config import ApiSettings
    from lrtune.cli.service import ServeOptions, _worker_argv

    options = ServeOptions(settings=ApiSettings(), tasks=("task_fixtures:blobs",))
    assert _worker_argv(options)[-2:] == ["--task", "task_fixtures:blobs"]
    for argv, says in [
        (["serve", "--task", "no_such_module:task"], "failed to import: ModuleNotFoundError"),
        (["serve", "--no-worker", "--task", "task_fixtures:blobs"], "drop --no-worker"),
    ]:
        code, _, err = run_cli(capsys, *argv)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_lrtune_serve_with_a_task_submits_its_job_at_once_and_prints_the_answer(
    tmp_path: Path,
) -> None:
    """The job is submitted as soon as the service serves: the embedded worker has published
    the task by then (a 422 'no live worker runs task' before the fix)."""
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({"task": {"name": "Blobs"}, "range_test": RANGE_TEST,
                                        "search": SEARCH}))  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "lrtune.cli", "serve", "--port", "0", "--database",
         f"sqlite:///{tmp_path / 'jobs.db'}", "--task", "task_fixtures:blobs", "--submit",
         str(job_file), "--exit-when-done"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "recommended: " in done.stdout and "# paste into your training script" in done.stdout
