"""Trials on a CUDA device: data kept on the GPU, mixed precision checkpointed, one device read
an epoch, running out of memory failing the unit with the reason, a CUDA worker end to end.

Every test here is ``gpu``-marked and skips without CUDA (tests/conftest.py). On a GPU
machine: ``pytest -m gpu``. tests/test_device_training.py checks on the CPU what a CPU can
show of the same code.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from small_jobs import small_job
from torch import nn

from lrtune import registry, training
from lrtune._optuna import ATTR_FAIL_REASON
from lrtune.jobs import JobStatus, JobStore
from lrtune.registry import register_model
from lrtune.schedules import drive, parse_schedule
from lrtune.spec import JobSpec
from lrtune.training import StopTraining, TrainingSetup, train
from lrtune.tuner import DeviceOutOfMemory, prepare_study, run_trials
from lrtune.workers.loop import Worker

pytestmark = pytest.mark.gpu

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _spec(**extra: Any) -> JobSpec:
    return JobSpec.model_validate(
        {"model": {"name": "mlp", "params": {"hidden": [64]}}, "dataset": {"name": "digits"}}
        | {"batch_size": 32, "device": "cuda"}
        | extra
    )


def _host_to_device_copies(run: Any) -> int:
    """How many host-to-device memcpys the CUDA profiler sees while ``run()`` runs."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        run()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if "HtoD" in e.key)


def test_data_that_fits_stays_on_the_gpu_and_batches_are_not_copied_from_the_host() -> None:
    setup = TrainingSetup.from_spec(_spec())
    host = TrainingSetup.from_spec(_spec())
    host.data = host.bundle  # as if it did not fit: batches copied from host memory
    schedule, epochs = parse_schedule({"family": "constant"}), 2
    batches = setup.steps_per_epoch * epochs

    assert all(t.is_cuda for t in (*setup.task.data.train.tensors, *setup.task.data.val.tensors))
    resident = _host_to_device_copies(lambda: train(setup, schedule, 0.05, epochs))
    copied = _host_to_device_copies(lambda: train(host, schedule, 0.05, epochs))

    assert copied >= 2 * batches  # the measure sees per-batch copies (features and targets)
    # The model's initial weights and one data order an epoch; never one copy per batch.
    assert resident < batches, (resident, copied)


def test_an_amp_trial_checkpoints_its_grad_scaler_and_a_resumed_run_restores_it(
    tmp_path: Path,
) -> None:
    setup = TrainingSetup.from_spec(_spec(amp=True))
    assert setup.amp
    schedule, checkpoint = parse_schedule({"family": "cosine", "T_max": 4}), tmp_path / "t.pt"

    def stop_after_epoch_1(epoch: int, record: dict[str, float]) -> None:
        if epoch == 1:
            raise KeyboardInterrupt  # as a SIGTERM would, after the epoch's checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(setup, schedule, 0.05, 4, checkpoint=checkpoint, on_epoch=stop_after_epoch_1)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["grad_scaler"]["scale"] > 0 and "cuda_rng" in saved

    saved["grad_scaler"]["scale"] = 1024.0  # a scale a fresh GradScaler (65536) never has
    torch.save(saved, checkpoint)
    model = setup.build_model()
    optimizer = setup.build_optimizer(model, 0.05)
    driver = drive(schedule, optimizer, setup.steps_per_epoch, 4)
    scaler = torch.amp.GradScaler("cuda")
    state = training._RunState(
        model, optimizer, driver, setup.data_order(0), scaler, setup.device, setup.task
    )
    assert training._resume(checkpoint, state, training.TrainingRun()) == 2
    assert scaler.get_scale() == 1024.0

    resumed = train(setup, schedule, 0.05, 4, checkpoint=checkpoint)
    assert resumed.status == "completed" and resumed.resumed_from == 2
    assert all(math.isfinite(e["val_loss"]) for e in resumed.epochs)


def test_an_amp_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    setup = TrainingSetup.from_spec(_spec(amp=True))
    schedule, checkpoint = parse_schedule({"family": "cosine", "T_max": 4}), tmp_path / "t.pt"
    whole = train(setup, schedule, 0.05, 4)

    def stop(epoch: int, record: dict[str, float]) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(setup, schedule, 0.05, 4, checkpoint=checkpoint, on_epoch=stop)
    resumed = train(setup, schedule, 0.05, 4, checkpoint=checkpoint)

    assert resumed.lr_steps == whole.lr_steps
    for a, b in zip(resumed.epochs, whole.epochs, strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def _syncs(run: Any) -> int:
    """How many synchronizing CUDA calls ``run()`` makes (torch's sync debug mode)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def test_an_epoch_reads_the_device_once_to_train_and_once_to_evaluate() -> None:
    setup = TrainingSetup.from_spec(_spec())
    model = setup.build_model()
    optimizer = setup.build_optimizer(model, 0.05)
    schedule = parse_schedule({"family": "cosine", "T_max": 3})
    driver = drive(schedule, optimizer, setup.steps_per_epoch, 3)
    state = training._RunState(
        model, optimizer, driver, setup.data_order(0), None, setup.device, setup.task
    )
    run = training.TrainingRun()
    training._train_epoch(setup, state, 0, 0, run)  # warm-up: lazy inits
    setup.evaluate(model, 0)

    assert _syncs(lambda: training._train_epoch(setup, state, 0, 0, run)) == 1
    assert _syncs(lambda: setup.evaluate(model, 0)) == 1


def test_a_run_that_diverges_on_the_gpu_is_recorded_in_its_epoch() -> None:
    setup = TrainingSetup.from_spec(_spec(optimizer={"momentum": 0.0}))
    run = train(setup, parse_schedule({"family": "constant"}), 1e4, 4)
    assert run.status == "diverged" and "non-finite" in run.reason


class _Widening(nn.Module):
    """Trains as a linear model; evaluating it asks the GPU for terabytes (a real CUDA OOM)."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            x.new_empty(2**41)  # 8 TiB of float32
        return self.linear(x)


@pytest.fixture
def widening_model(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(registry._models, "_registered", dict(registry._models._registered))

    @register_model("widening")
    def build(input_shape: tuple[int, ...], output_dim: int, **params: Any) -> nn.Module:
        return _Widening(math.prod(input_shape), output_dim)

    return "widening"


def test_a_trial_that_runs_the_gpu_out_of_memory_fails_with_the_reason(
    widening_model: str,
) -> None:
    spec = small_job(
        {"model": {"name": widening_model}, "device": "cuda"}, n_trials=2, baselines=False
    )
    study = prepare_study(spec, None, progress=False)

    with pytest.raises(DeviceOutOfMemory, match="CUDA out of memory on cuda"):
        run_trials(study, TrainingSetup.from_spec(spec), progress=False)

    failed = study.trials[0]
    assert failed.state == TrialState.FAIL
    assert "CUDA out of memory" in failed.user_attrs[ATTR_FAIL_REASON]
    assert "lower batch_size (now 32)" in failed.user_attrs[ATTR_FAIL_REASON]
    assert study.trials[1].state == TrialState.WAITING
    train(TrainingSetup.from_spec(small_job()), parse_schedule({"family": "constant"}), 0.1, 1)


def test_a_cuda_worker_fails_a_job_that_runs_the_gpu_out_of_memory(
    widening_model: str, jobs_url: str
) -> None:
    store = JobStore(jobs_url)
    job = store.submit(
        small_job({"model": {"name": widening_model}, "device": "cuda"}, confirm_seeds=0)
    )
    assert Worker(store, device="cuda", lease_s=20).run(once=True) == 1
    failed = store.get(job.id)
    assert failed.status is JobStatus.FAILED and "CUDA out of memory" in failed.error


def test_a_cuda_worker_runs_a_cuda_job_with_amp_end_to_end(jobs_url: str, tmp_path: Path) -> None:
    store = JobStore(jobs_url)
    job = store.submit(
        small_job({"device": "cuda", "amp": True}, n_trials=3, epochs=2, confirm_seeds=1)
    )
    worker = Worker(store, device="cuda", lease_s=20, artifact_dir=tmp_path, poll_s=0.1)

    assert worker.run(once=True) == 1

    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert store.recommendation(job.id).provenance.device.startswith("cuda")
    assert list(tmp_path.rglob("*.pt")) == []  # checkpoints of finished units are removed


def test_a_pruned_gpu_run_stops_without_error() -> None:
    setup = TrainingSetup.from_spec(_spec())

    def prune(epoch: int, record: dict[str, float]) -> None:
        raise StopTraining("pruned")

    run = train(setup, parse_schedule({"family": "constant"}), 0.05, 3, on_epoch=prune)
    assert run.status == "pruned" and len(run.epochs) == 1


# --- the user's own task on CUDA ---------------------------------------------------------------


class _CudaTask:
    """A task that asserts where lrtune puts it: the model built on the device it is given,
    batches moved there by its own loss, AMP in its own epoch loop."""

    name, metric, direction = "cuda-blobs", "accuracy", "maximize"

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(256, 8, generator=generator)
        self.y = (self.x[:, 0] > 0).long()
        self.devices: set[str] = set()

    def build_model(self, seed: int, device: torch.device) -> nn.Module:
        self.devices.add(device.type)
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2)).to(device)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train_batches(self, seed: int, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(224, generator=torch.Generator().manual_seed(seed * 100 + epoch))
        return [(self.x[i], self.y[i]) for i in order.split(32)]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        inputs, targets = (t.to(device) for t in batch)
        return nn.functional.cross_entropy(model(inputs), targets)

    def train_epoch(self, model, optimizer, on_step, *, seed, epoch, device):  # type: ignore[no-untyped-def]
        scaler = torch.amp.GradScaler("cuda")
        for batch in self.train_batches(seed, epoch):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16):
                loss = self.loss(model, batch)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            on_step(loss)
        return None

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        with torch.no_grad():
            outputs = model(self.x[224:].to(device))
        return {"accuracy": float((outputs.argmax(1).cpu() == self.y[224:]).float().mean())}


def test_a_users_task_on_cuda_gets_the_device_and_trains_with_its_own_amp_loop() -> None:
    import lrtune

    task = _CudaTask()
    rec = lrtune.tune(
        task,
        device="cuda",
        search={"n_trials": 3, "epochs": 2, "families": ["constant", "cosine"]},
        range_test={"seeds": 2, "num_iter": 30},
        progress=False,
    )
    assert "cuda" in task.devices  # (task_job reads its LRs from one build on the CPU)
    assert rec.metric == "accuracy" and rec.confirmed
