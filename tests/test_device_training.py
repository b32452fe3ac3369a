"""How trials use their device, checked on the CPU: data sliced where it lies in the
DataLoader's order, one device read an epoch, ``amp`` and ``cuda_fast_kernels`` off CUDA, and
running out of device memory failing the unit and the job with the reason.

The same code runs on CUDA; tests/test_gpu.py checks there what only a GPU can show."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from small_jobs import small_job
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

from lrtune import registry, training
from lrtune._optuna import ATTR_FAIL_REASON
from lrtune.batches import LoaderOrderRows, batch_loss, move_to
from lrtune.jobs import JobStatus, JobStore
from lrtune.optuna_storage import open_storage
from lrtune.registry import register_model
from lrtune.schedules import ScheduleSpec, drive, parse_schedule
from lrtune.spec import JobSpec
from lrtune.training import TrainingSetup, cuda_kernels, train
from lrtune.tuner import DeviceOutOfMemory, prepare_study, range_test, run_trials
from lrtune.workers.loop import Worker

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize(("rows", "batch_size"), [(10, 5), (11, 5), (13, 5), (7, 16)])
def test_loader_order_rows_are_the_dataloaders_batches_and_leave_its_generator_state(
    rows: int, batch_size: int
) -> None:
    data = TensorDataset(torch.randn(rows, 3), torch.arange(rows))
    drop_last = rows % batch_size == 1
    ours, theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    sliced = LoaderOrderRows(data.tensors, batch_size, ours, drop_last)
    loader = DataLoader(data, batch_size, shuffle=True, generator=theirs, drop_last=drop_last)
    for _ in range(3):  # epochs: each draws a fresh order from the generator
        mine, expected = list(sliced), list(loader)
        assert len(mine) == len(expected) == len(sliced)
        for a, b in zip(mine, expected, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert torch.equal(ours.get_state(), theirs.get_state())


def _spec(**extra: Any) -> JobSpec:
    return JobSpec.model_validate(
        {"model": {"name": "mlp", "params": {"hidden": [16]}}, "dataset": {"name": "wine"}}
        | {"batch_size": 16, "optimizer": {"momentum": 0.0}}
        | extra
    )


def _reference_run(
    setup: TrainingSetup, schedule: ScheduleSpec, base_lr: float, epochs: int
) -> tuple[list[dict[str, float]], list[list[float]], str | None]:
    """The training loop as it was before data stayed on the device: a DataLoader, a copy per
    batch, a finiteness check (a device read) per batch, evaluation summed in Python floats."""
    model = setup.build_model()
    optimizer = setup.build_optimizer(model, base_lr)
    steps, multipliers = setup.steps_per_epoch, setup.group_multipliers
    driver = drive(schedule, optimizer, steps, epochs, group_multipliers=multipliers)
    order = torch.Generator().manual_seed(setup.spec.seed)
    torch.manual_seed(setup.spec.seed)
    criterion = setup.bundle.loss_fn()
    loader = DataLoader(
        setup.bundle.train,
        batch_size=setup.spec.batch_size,
        shuffle=True,
        generator=order,
        drop_last=len(setup.bundle.train) % setup.spec.batch_size == 1,
    )
    records: list[dict[str, float]] = []
    lr_steps: list[list[float]] = []
    for epoch in range(epochs):
        model.train()
        total, count = torch.zeros(()), 0
        for batch in loader:
            lr_steps.append([float(g["lr"]) for g in optimizer.param_groups])
            loss = batch_loss(model, move_to(batch, setup.device), criterion)
            if not torch.isfinite(loss):
                return records, lr_steps, f"non-finite training loss in epoch {epoch + 1}"
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            driver.after_batch()
            total += loss.detach()
            count += 1
        model.eval()
        loss_sum = hits = 0.0
        x, y = setup.bundle.val.tensors
        with torch.no_grad():
            out = model(x)
            loss_sum += nn.functional.cross_entropy(out, y, reduction="sum").item()
            hits += (out.argmax(dim=1) == y).sum().item()
        record = {"epoch": epoch, "train_loss": total.item() / count}
        record |= {"val_loss": loss_sum / len(y), "accuracy": hits / len(y)}
        records.append(record)
        if not math.isfinite(record["val_loss"]):
            return records, lr_steps, f"non-finite validation loss in epoch {epoch + 1}"
        driver.after_epoch(record["val_loss"])
    return records, lr_steps, None


@pytest.mark.parametrize(
    ("family", "base_lr", "outcome"),
    [
        ("cosine", 0.05, None),
        ("constant", 10.0, "training loss in epoch 3"),  # counted from 1
        ("constant", 300.0, "validation loss in epoch 1"),
    ],
)
def test_cpu_runs_are_bit_for_bit_the_dataloader_loops_also_when_they_diverge(
    family: str, base_lr: float, outcome: str | None
) -> None:
    setup = TrainingSetup.from_spec(_spec(), device="cpu")
    schedule = parse_schedule({"family": family, **({"T_max": 4} if family == "cosine" else {})})
    records, lr_steps, reason = _reference_run(setup, schedule, base_lr, 4)

    run = train(setup, schedule, base_lr, 4)

    assert json.dumps(run.epochs) == json.dumps(records)  # every float exactly, NaN too
    assert run.lr_steps == lr_steps  # a diverged run's steps end at the non-finite batch
    if outcome is None:
        assert run.status == "completed" and reason is None
    else:
        assert run.status == "diverged" and outcome in run.reason and run.reason == reason


class _ValueReads(TorchFunctionMode):
    """Records each call that reads a tensor's value into Python: on CUDA, a host sync."""

    READS = (Tensor.item, Tensor.tolist, Tensor.__bool__, Tensor.__float__, Tensor.__int__)

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in self.READS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_an_epoch_reads_tensor_values_once_to_train_and_once_to_evaluate() -> None:
    spec = _spec(model={"name": "mlp", "params": {"hidden": [16], "dropout": 0.1}}, batch_size=8)
    setup = TrainingSetup.from_spec(spec, device="cpu")
    model = setup.build_model()
    optimizer = setup.build_optimizer(model, 0.05)
    schedule = parse_schedule({"family": "onecycle", "max_lr": 0.1})
    driver = drive(schedule, optimizer, setup.steps_per_epoch, 2)
    state = training._RunState(
        model, optimizer, driver, setup.data_order(0), None, setup.device, setup.task
    )
    assert len(state.order.epoch(0)) == setup.steps_per_epoch > 10

    look = training._StopLooks(every_s=0.0, reason=lambda: None).at(0)  # looks every batch
    with _ValueReads() as epoch:
        training._train_epoch(setup, state, 0, 0, training.TrainingRun(), look)
    with _ValueReads() as evaluation:
        setup.evaluate(model, 0)

    assert epoch.reads == ["tolist"]  # not one a batch: the loss sum and the finiteness count
    assert evaluation.reads == ["tolist"]


def test_amp_on_a_cpu_device_trains_in_full_precision_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    schedule = parse_schedule({"family": "constant"})
    plain = TrainingSetup.from_spec(_spec(range_test={"num_iter": 20, "seeds": 1}), device="cpu")
    amp = TrainingSetup.from_spec(
        _spec(amp=True, cuda_fast_kernels=True, range_test={"num_iter": 20, "seeds": 1}),
        device="cpu",
    )
    with caplog.at_level(logging.INFO, logger="lrtune.registry_task"):
        run = train(amp, schedule, 0.05, 2)
        result = range_test(amp, progress=False)

    assert run == train(plain, schedule, 0.05, 2)
    unchanged = range_test(plain, progress=False)
    assert result.model_dump(mode="json")["seeds"] == unchanged.model_dump(mode="json")["seeds"]
    assert result.config.amp is False
    notes = [r.message for r in caplog.records if "amp=true needs CUDA" in r.message]
    assert notes == ["amp=true needs CUDA: training on cpu in full precision"]  # once a setup


def test_a_checkpoint_keeps_the_grad_scalers_state_and_a_resume_restores_it(
    tmp_path: Path,
) -> None:
    """What an amp trial's checkpoint does with its GradScaler, on torch's CPU GradScaler (a
    CUDA run uses the same code with a CUDA one: tests/test_gpu.py)."""
    setup = TrainingSetup.from_spec(_spec(), device="cpu")

    def state(scaler: torch.amp.GradScaler) -> training._RunState:
        model = setup.build_model()
        optimizer = setup.build_optimizer(model, 0.05)
        driver = drive(parse_schedule({"family": "constant"}), optimizer, 10, 2)
        return training._RunState(
            model, optimizer, driver, setup.data_order(0), scaler, setup.device, setup.task
        )

    trained = state(torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=3))
    for _ in range(2):  # two unskipped steps: the growth tracker counts them
        loss = batch_loss(trained.model, list(setup.bundle.train[:8]), setup.bundle.loss_fn())
        trained.scaler.scale(loss).backward()
        trained.scaler.step(trained.optimizer)
        trained.scaler.update()
    training._save(tmp_path / "t.pt", 0, trained, training.TrainingRun())

    fresh = state(torch.amp.GradScaler("cpu"))
    assert training._resume(tmp_path / "t.pt", fresh, training.TrainingRun()) == 1
    assert fresh.scaler.state_dict() == trained.scaler.state_dict()
    assert fresh.scaler.get_scale() == 512.0 and fresh.scaler.state_dict()["_growth_tracker"] == 2

    without = state(None)  # a run without amp resumes from it too, ignoring the scaler
    assert training._resume(tmp_path / "t.pt", without, training.TrainingRun()) == 1


def test_cuda_kernel_settings_are_deterministic_unless_the_job_opts_in_and_are_restored() -> None:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32)
    cuda = torch.device("cuda")  # only flags are set: no CUDA call, so this runs on a CPU
    with cuda_kernels(cuda, fast=False):
        assert (cudnn.benchmark, cudnn.deterministic) == (False, True)
        assert not cudnn.allow_tf32 and not matmul.allow_tf32
    with cuda_kernels(cuda, fast=True):
        assert (cudnn.benchmark, cudnn.deterministic) == (True, False)
        assert cudnn.allow_tf32 and matmul.allow_tf32
    with cuda_kernels(torch.device("cpu"), fast=True):
        assert (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32) == before[:3]
    assert (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32) == before


def test_a_cuda_job_spec_says_it_needs_cuda() -> None:
    assert _spec(device="cuda").needs_cuda and _spec(device="cuda:1").needs_cuda
    assert not _spec(device="auto").needs_cuda and not _spec(device="cpu").needs_cuda


# --- out of memory ---------------------------------------------------------------------------

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 TiB. GPU 0 has a total capacity of 80 GiB"


class _OutOfMemoryWhenEvaluated(nn.Module):
    """A linear model that trains, but whose evaluation raises what CUDA raises when memory
    runs out: the range test (which never evaluates) passes and each trial fails at its first
    evaluation. (The CPU allocator raises a plain RuntimeError instead, so the test raises it.)"""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            raise torch.OutOfMemoryError(CUDA_OOM)
        return self.linear(x)


@pytest.fixture
def oom_model(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(registry._models, "_registered", dict(registry._models._registered))

    @register_model("oom_when_evaluated")
    def build(input_shape: tuple[int, ...], output_dim: int, **params: Any) -> nn.Module:
        return _OutOfMemoryWhenEvaluated(math.prod(input_shape), output_dim)

    return "oom_when_evaluated"


def test_a_trial_out_of_memory_is_failed_with_the_reason_and_stops_the_search(
    oom_model: str,
) -> None:
    spec = small_job({"model": {"name": oom_model}}, n_trials=3, epochs=2, baselines=False)
    study = prepare_study(spec, None, progress=False)

    with pytest.raises(DeviceOutOfMemory, match="batch_size"):
        run_trials(study, TrainingSetup.from_spec(spec, "cpu"), progress=False)

    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]  # none re-queued
    reason = study.trials[0].user_attrs[ATTR_FAIL_REASON]
    assert reason.startswith("CPU out of memory on cpu: lower batch_size (now 32)")
    assert CUDA_OOM in reason


def test_a_worker_fails_a_job_whose_unit_runs_out_of_memory_and_does_not_retry_it(
    oom_model: str, jobs_url: str, tmp_path: Path
) -> None:
    store = JobStore(jobs_url)
    spec = small_job({"model": {"name": oom_model}}, n_trials=3, epochs=2, confirm_seeds=0)
    job = store.submit(spec)
    worker = Worker(store, device="cpu", lease_s=10, artifact_dir=tmp_path, poll_s=0.1)

    assert worker.run(once=True) == 1  # returns: the job failed, nothing is left to retry

    failed = store.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert "out of memory" in failed.error and "lower batch_size (now 32)" in failed.error
    study = optuna.load_study(study_name=failed.study_name, storage=open_storage(jobs_url))
    fails = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(fails) == 1 and "out of memory" in fails[0].user_attrs[ATTR_FAIL_REASON]
    assert len(study.trials) == 3  # the budget, no clone of the failed trial


def test_a_range_test_out_of_memory_fails_the_job_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, jobs_url: str
) -> None:
    monkeypatch.setattr(registry._models, "_registered", dict(registry._models._registered))

    class OutOfMemory(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.OutOfMemoryError(CUDA_OOM)

    register_model("oom_always")(lambda input_shape, output_dim: OutOfMemory(13, output_dim))
    store = JobStore(jobs_url)
    job = store.submit(small_job({"model": {"name": "oom_always"}}, n_trials=2))

    assert Worker(store, device="cpu", lease_s=10).run(once=True) == 1

    failed = store.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert "range test: CPU out of memory on cpu: lower batch_size (now 32)" in failed.error


# --- which worker takes a job ----------------------------------------------------------------


def test_a_cpu_worker_skips_a_job_that_needs_cuda_and_takes_the_next(store: JobStore) -> None:
    cuda_job = store.submit(_spec(device="cuda:1"))
    cpu_job = store.submit(_spec(device="auto"))

    cpu_lease = store.claim("cpu-worker", 10, device="cpu")
    assert cpu_lease is not None and cpu_lease.job_id == cpu_job.id
    assert store.claim("cpu-worker", 10, device="cpu") is None
    assert store.claim("cpu-worker", 10, job_id=cuda_job.id, device="cpu") is None
    cuda_lease = store.claim("gpu-worker", 10, device="cuda:0")
    assert cuda_lease is not None and cuda_lease.job_id == cuda_job.id

    for lease in (cpu_lease, cuda_lease):
        store.release(lease, status=JobStatus.SEARCHING)
    assert [j.id for j in store.shared_jobs(device="cpu")] == [cpu_job.id]
    assert [j.id for j in store.shared_jobs(device="cuda")] == [cuda_job.id, cpu_job.id]
    assert [j.id for j in store.shared_jobs()] == [cuda_job.id, cpu_job.id]


def test_a_cpu_worker_runs_the_cpu_job_and_leaves_the_cuda_one_queued(
    store: JobStore, tmp_path: Path
) -> None:
    cuda_job = store.submit(small_job({"device": "cuda"}, n_trials=2, epochs=1, confirm_seeds=0))
    cpu_job = store.submit(small_job(n_trials=2, epochs=1, confirm_seeds=0))

    Worker(store, device="cpu", lease_s=10, artifact_dir=tmp_path, poll_s=0.1).run(once=True)

    assert store.get(cpu_job.id).status is JobStatus.SUCCEEDED
    assert store.get(cuda_job.id).status is JobStatus.QUEUED


def test_the_migration_backfills_needs_cuda_from_stored_specs(empty_jobs_url: str) -> None:
    import sqlalchemy as sa
    from alembic import command

    from lrtune.jobs import revision, upgrade
    from lrtune.jobs.db import get_engine

    engine = get_engine(empty_jobs_url)
    with engine.begin() as conn:  # the schema before jobs said whether they need CUDA
        config = revision._config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
    jobs = sa.table(
        "lrtune_jobs",
        *(sa.column(name) for name in ("id", "spec_format_version", "fingerprint", "study_name")),
        *(sa.column(name) for name in ("status", "attempts", "fencing_token")),
        sa.column("spec", sa.JSON()),
        sa.column("progress", sa.JSON()),
    )
    devices = {"a": "cuda:1", "b": "auto", "c": "cuda", "d": "cpu"}
    with engine.begin() as conn:
        for job_id, device in devices.items():
            conn.execute(
                sa.insert(jobs).values(
                    id=job_id,
                    spec={"device": device},
                    spec_format_version=1,
                    fingerprint="f",
                    study_name=f"s-{job_id}",
                    status="queued",
                    progress={},
                    attempts=0,
                    fencing_token=0,
                )
            )

    upgrade(empty_jobs_url)

    with engine.connect() as conn:
        stored = dict(conn.execute(sa.text("SELECT id, needs_cuda FROM lrtune_jobs")).all())
    assert {k: bool(v) for k, v in stored.items()} == {"a": True, "b": False, "c": True, "d": False}
