"""lrtune.integrations.hf: a Hugging Face Trainer as an lrtune task, and the answer back in one.

Every model is a tiny BERT built from a config (nothing is downloaded) on synthetic tokens.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer

import lrtune
from lrtune.exceptions import InvalidInputError
from lrtune.integrations.hf import (
    EpochSteppedScheduler,
    TrainerTask,
    apply_recommendation,
    eval_metric_name,
    quiet_training_args,
)
from lrtune.schedules import parse_schedule, preview
from lrtune.training import StopRequested, StopTraining

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SEQUENCE_LENGTH, VOCAB_SIZE = 8, 12
TRAIN_SIZE, BATCH_SIZE, ACCUMULATION = 80, 16, 2  # 5 batches: optimizer steps of 2, 2 and 1


class Tokens(torch.utils.data.Dataset):
    """Random token sequences, labelled 1 where token 7 appears (about half of them)."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, VOCAB_SIZE, (n, SEQUENCE_LENGTH), generator=generator)
        self.labels = (self.input_ids == 7).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


TRAIN, VALIDATION = Tokens(TRAIN_SIZE, 0), Tokens(32, 1)


def accuracy(prediction: object) -> dict[str, float]:
    logits, labels = prediction.predictions, prediction.label_ids  # type: ignore[attr-defined]
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def tiny_bert(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=SEQUENCE_LENGTH,
    )
    return BertForSequenceClassification(config)


def make_trainer(seed: int, epochs: float = 1, optimizers: tuple = (None, None)) -> Trainer:
    """A Trainer with HF's own linear warm-up/decay scheduler, accumulation and clipping."""
    args = quiet_training_args(
        per_device_train_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=ACCUMULATION,
        learning_rate=1e-3,
        lr_scheduler_type="linear",
        warmup_steps=2,
        weight_decay=0.01,
        max_grad_norm=1.0,
        num_train_epochs=epochs,
        use_cpu=True,
        seed=seed,
    )
    return Trainer(
        model=tiny_bert(seed),
        args=args,
        train_dataset=TRAIN,
        eval_dataset=VALIDATION,
        compute_metrics=accuracy,
        optimizers=optimizers,
    )


def token_task() -> TrainerTask:
    return TrainerTask(make_trainer, metric="accuracy", direction="maximize", name="tokens")


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared 2-core machine, 2 threads ran these tiny models 4x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lrs_used_per_step(optimizer: torch.optim.Optimizer) -> list[list[float]]:
    """Every group's LR at each optimizer.step() from now on (filled as steps happen)."""
    used: list[list[float]] = []
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: used.append([g["lr"] for g in opt.param_groups])
    )
    return used


def test_metric_names_and_direction():
    assert eval_metric_name("accuracy") == "eval_accuracy"
    assert eval_metric_name("eval_accuracy") == "eval_accuracy"
    assert eval_metric_name("val_loss") == "eval_loss"
    assert TrainerTask(make_trainer).direction == "minimize"  # eval_loss
    with pytest.raises(InvalidInputError, match="direction"):
        TrainerTask(make_trainer, metric="f1")


def test_one_epoch_steps_once_per_optimizer_step_at_lrtunes_lr():
    task = token_task()
    model = task.build_model(0, CPU)
    optimizer = task.build_optimizer(model)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]  # HF's groups
    assert task.steps_per_epoch == 3  # 5 micro-batches, accumulation 2: HF's count
    used = lrs_used_per_step(optimizer)
    for group in optimizer.param_groups:
        group["lr"] = 0.01
    set_by_lrtune: list[float] = [0.01]

    def on_step(loss=None):
        lr = 0.01 * (len(set_by_lrtune) + 1)  # what HF's linear schedule would never give
        for group in optimizer.param_groups:
            group["lr"] = lr
        set_by_lrtune.append(lr)

    loss = task.train_epoch(model, optimizer, on_step, seed=0, epoch=0, device=CPU)

    assert len(set_by_lrtune) - 1 == 3  # once per optimizer step, the short last one too
    assert [step[0] for step in used] == pytest.approx(set_by_lrtune[:3])
    assert all(len(set(step)) == 1 for step in used)
    assert torch.isfinite(torch.tensor(loss))
    scores = task.evaluate(model, CPU)
    assert {"eval_loss", "eval_accuracy", "val_loss"} <= set(scores)
    assert scores["val_loss"] == scores["eval_loss"]
    assert "epoch" not in scores and "eval_runtime" not in scores

    task.train_epoch(model, optimizer, on_step, seed=0, epoch=1, device=CPU)  # the next epoch
    assert len(used) == 6 and used[3][0] == pytest.approx(set_by_lrtune[3])
    assert not list(Path(".").glob("trainer_output*"))


def test_data_order_is_per_seed_and_epoch():
    task = token_task()
    task.build_model(0, CPU)

    def order(seed: int, epoch: int) -> torch.Tensor:
        return torch.cat([batch["input_ids"] for batch in task.train_batches(seed, epoch)])

    assert torch.equal(order(0, 0), order(0, 0))
    assert not torch.equal(order(0, 0), order(0, 1))
    assert not torch.equal(order(0, 0), order(1, 0))


@pytest.mark.parametrize("stop", [StopTraining("pruned"), StopRequested("sigterm")])
def test_what_on_step_raises_ends_the_epoch_as_itself(stop):
    task = token_task()
    model = task.build_model(0, CPU)
    optimizer = task.build_optimizer(model)
    calls: list[int] = []

    def on_step(loss=None):
        calls.append(1)
        if len(calls) == 2:
            raise stop

    with pytest.raises(type(stop)) as raised:
        task.train_epoch(model, optimizer, on_step, seed=0, epoch=0, device=CPU)
    assert raised.value is stop
    assert len(calls) == 2  # the epoch stopped there
    calls.clear()
    task.train_epoch(model, optimizer, lambda loss=None: None, seed=0, epoch=1, device=CPU)


class StreamedTokens(torch.utils.data.IterableDataset):
    """TRAIN as a stream: no length, so the task must be told its steps an epoch."""

    def __iter__(self):
        return (TRAIN[i] for i in range(len(TRAIN)))


def test_an_iterable_dataset_trains_the_steps_per_epoch_it_is_given():
    def streamed_trainer(seed: int) -> Trainer:
        trainer = make_trainer(seed)
        trainer.train_dataset = StreamedTokens()
        return trainer

    with pytest.raises(InvalidInputError, match="steps_per_epoch"):
        TrainerTask(streamed_trainer).build_model(0, CPU)
    task = TrainerTask(streamed_trainer, steps_per_epoch=2)
    model = task.build_model(0, CPU)
    optimizer = task.build_optimizer(model)
    steps: list[int] = []
    task.train_epoch(
        model, optimizer, lambda loss=None: steps.append(1), seed=0, epoch=0, device=CPU
    )
    assert len(steps) == 2


def test_a_factory_that_returns_the_same_model_is_refused():
    trainer = make_trainer(0)
    task = TrainerTask(lambda seed: trainer)
    task.build_model(0, CPU)
    with pytest.raises(InvalidInputError, match="new Trainer and model"):
        task.build_model(1, CPU)


def test_a_model_the_task_did_not_build_is_refused():
    task = token_task()
    with pytest.raises(Exception, match="build_model"):
        task.build_optimizer(tiny_bert(0))


def training_setup(task: TrainerTask):
    from lrtune.task import task_job
    from lrtune.training import TrainingSetup

    return TrainingSetup.from_spec(task_job(task), device="cpu", task=task)


def test_lrtunes_loop_marks_a_diverged_trainer_run():
    from lrtune.training import train

    setup = training_setup(token_task())
    run = train(setup, parse_schedule({"family": "constant"}), base_lr=1e4, epochs=2)
    assert run.status == "diverged"  # eval_loss is NaN: val_loss tells lrtune
    assert len(run.lr_steps) == 3


def test_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path):
    from lrtune.training import train

    setup = training_setup(token_task())
    cosine = parse_schedule({"family": "cosine", "T_max": 2})
    whole = train(setup, cosine, base_lr=3e-3, epochs=2)

    def stop_after_first(epoch, record):
        raise StopRequested("sigterm")

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(StopRequested):
        train(
            setup, cosine, base_lr=3e-3, epochs=2, checkpoint=checkpoint, on_epoch=stop_after_first
        )
    resumed = train(setup, cosine, base_lr=3e-3, epochs=2, checkpoint=checkpoint)

    assert resumed.resumed_from == 1
    assert resumed.lr_steps == whole.lr_steps
    for key in ("train_loss", "eval_loss", "eval_accuracy"):
        assert resumed.epochs[-1][key] == pytest.approx(whole.epochs[-1][key], rel=1e-5)


@pytest.fixture(scope="module")
def recommendation():
    torch.set_num_threads(1)
    search = {
        "n_trials": 2,
        "epochs": 2,
        "families": ["constant", "cosine"],
        "finalists": 1,
        "confirm_seeds": 1,
        "max_confirm_seeds": 1,
        "baselines": [],
    }
    return lrtune.tune(
        token_task(),
        search=search,
        range_test={"seeds": 1, "num_iter": 10},
        device="cpu",
        progress=False,
    )


def test_tune_a_trainer_end_to_end(recommendation):
    rec = recommendation
    assert isinstance(rec, lrtune.recommendation.Recommendation)
    assert rec.metric == "eval_accuracy" and rec.direction == "maximize"
    assert rec.best is not None and rec.base_lr > 0
    assert rec.steps_per_epoch == 3
    assert "optimizer = " in rec.to_code()


@pytest.fixture(scope="module")
def stand_in_recommendation():
    """A real Recommendation, from a fast registry job, made to say what the test needs:
    two param groups (the second at half group 0's LR), 3 steps an epoch, 2 epochs."""
    from lrtune.spec import JobSpec
    from lrtune.tuner import tune

    spec = JobSpec.model_validate(
        {
            "model": {"name": "logreg"},
            "dataset": {"name": "wine"},
            "range_test": {"seeds": 1, "num_iter": 10},
            "search": {
                "n_trials": 1,
                "epochs": 2,
                "families": ["constant"],
                "confirm_seeds": 0,
                "baselines": [],
            },
        }
    )
    rec = tune(spec, progress=False).model_copy(deep=True)
    rec.group_multipliers, rec.steps_per_epoch = [1.0, 0.5], 3
    return rec


@pytest.mark.parametrize(
    "schedule",
    [
        {"family": "cosine", "T_max": 6, "warmup": {"steps": 2}},  # stepped per batch
        {"family": "step", "step_size": 1, "gamma": 0.5},  # per epoch: wrapped
    ],
)
def test_apply_recommendation_gives_the_recommended_lr_every_step(
    stand_in_recommendation, schedule, tmp_path
):
    rec = stand_in_recommendation.model_copy(deep=True)
    rec.finalists[0].schedule = parse_schedule(schedule)
    rec.finalists[0].base_lr = 0.004
    rec.recommended = 0
    saved = tmp_path / "rec.json"
    saved.write_text(rec.model_dump_json())
    epochs = rec.spec.search.epochs

    optimizers = apply_recommendation(make_trainer(0, epochs=epochs), saved)
    trainer = make_trainer(0, epochs=epochs, optimizers=optimizers)
    used = lrs_used_per_step(optimizers[0])
    trainer.train()

    expected = preview(
        rec.best.schedule,
        [0.004 * m for m in rec.group_multipliers],
        rec.steps_per_epoch,
        epochs,
        group_multipliers=rec.group_multipliers,
    )
    assert len(used) == rec.steps_per_epoch * epochs
    assert [lr for step in used for lr in step] == pytest.approx(expected.ravel().tolist())
    assert used[0][1] == pytest.approx(used[0][0] / 2)  # the groups keep their ratio
    interval = rec.best.schedule.interval
    assert isinstance(optimizers[1], EpochSteppedScheduler) == (interval == "epoch")


@pytest.mark.parametrize("lr_free", ["prodigy", "schedule_free"])
def test_apply_recommendation_builds_a_learning_rate_free_winner(stand_in_recommendation, lr_free):
    pytest.importorskip("prodigyopt" if lr_free == "prodigy" else "schedulefree")
    rec = stand_in_recommendation.model_copy(deep=True)
    rec.finalists[0].lr_free = lr_free
    rec.recommended = 0
    rec.group_multipliers = [1.0, 1.0]  # Prodigy takes one LR for every group
    trainer = make_trainer(0, epochs=rec.spec.search.epochs)
    trainer.optimizer, trainer.lr_scheduler = apply_recommendation(trainer, rec)
    assert type(trainer.optimizer).__module__.split(".")[0] in ("prodigyopt", "schedulefree")
    assert len(trainer.optimizer.param_groups) == 2
    assert math.isfinite(trainer.train().training_loss)  # HF trains with it as it is


def test_apply_recommendation_warns_when_the_run_differs(stand_in_recommendation):
    rec = stand_in_recommendation.model_copy(deep=True)
    with pytest.warns(UserWarning, match="pass steps_per_epoch= and epochs="):
        apply_recommendation(make_trainer(0, epochs=5), rec)
    with pytest.raises(InvalidInputError, match="a Recommendation, the path of its JSON"):
        apply_recommendation(make_trainer(0), "no-such-file.json")


@pytest.mark.slow
def test_the_example_tunes_a_tiny_bert():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "hf_task.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "recommended:" in done.stdout and "optimizer = " in done.stdout


def test_importing_lrtune_does_not_import_transformers():
    code = "import sys, lrtune; print('transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
