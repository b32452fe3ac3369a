"""Tune the LR schedule of a Hugging Face ``Trainer``: a tiny BERT on synthetic tokens.

A 2-layer BERT (built from a config: nothing is downloaded) learns whether token 7 appears
in a sequence of 8 random tokens. :class:`lrtune.integrations.hf.TrainerTask` runs every
epoch of the range test, the search and the confirmation runs through the Trainer the factory
builds (its collator, accumulation, clipping and evaluation), and
:func:`~lrtune.integrations.hf.apply_recommendation` puts the
answer back in the Trainer. Small settings: it runs in about 20 seconds on one CPU core.

Run: ``python examples/hf_task.py`` (needs ``pip install transformers accelerate``).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import optuna
import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer

import lrtune
from lrtune.integrations.hf import (
    TrainerTask,
    apply_recommendation,
    quiet_training_args,
)

SEQUENCE_LENGTH = 8
VOCAB_SIZE = 12  # token 7 appears in about half of the sequences
MARKER_TOKEN = 7


class MarkerTokens(torch.utils.data.Dataset):
    """``n`` random token sequences, labelled 1 where :data:`MARKER_TOKEN` appears."""

    def __init__(self, n: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, VOCAB_SIZE, (n, SEQUENCE_LENGTH), generator=generator)
        self.labels = (self.input_ids == MARKER_TOKEN).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


TRAIN = MarkerTokens(192, seed=0)
VALIDATION = MarkerTokens(128, seed=1)


def accuracy(prediction: object) -> dict[str, float]:
    """``compute_metrics``: the share of sequences classified right."""
    logits, labels = prediction.predictions, prediction.label_ids  # type: ignore[attr-defined]
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def tiny_bert(seed: int) -> BertForSequenceClassification:
    """A 2-layer BERT sequence classifier with hidden size 32, initialised from ``seed``."""
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=SEQUENCE_LENGTH,
        num_labels=2,
    )
    return BertForSequenceClassification(config)


def marker_trainer(seed: int) -> Trainer:
    """The factory lrtune calls: a new Trainer whose model starts from ``seed``."""
    args = quiet_training_args(
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        learning_rate=1e-3,
        weight_decay=0.01,
        max_grad_norm=1.0,
        use_cpu=True,
        seed=seed,
    )
    return Trainer(
        model=tiny_bert(seed),
        args=args,
        train_dataset=TRAIN,
        eval_dataset=VALIDATION,
        compute_metrics=accuracy,
    )


SEARCH = {
    "n_trials": 4,
    "epochs": 3,
    "families": ["constant", "cosine"],
    "finalists": 1,
    "confirm_seeds": 2,
    "max_confirm_seeds": 2,
    "baselines": ["constant_at_suggestion"],
}
RANGE_TEST = {"seeds": 2, "num_iter": 20}


def main() -> None:
    torch.set_num_threads(1)  # a model this small trains fastest on one thread
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = TrainerTask(marker_trainer, metric="accuracy", direction="maximize", name="tiny_bert")
    print(f"task {task.name}: metric {task.metric} ({task.direction})")
    rec = lrtune.tune(task, search=SEARCH, range_test=RANGE_TEST, device="cpu", progress=False)
    print(rec.verdict)
    print(
        f"recommended: {rec.schedule.family} at lr {rec.base_lr:.3g}, {rec.metric} {rec.value:.3f}"
    )
    print(rec.to_code())

    trainer = marker_trainer(seed=0)  # trains 3 epochs (HF's default), as the search did
    trainer.optimizer, trainer.lr_scheduler = apply_recommendation(trainer, rec)
    trainer.train()
    print(f"retrained as recommended: eval_accuracy {trainer.evaluate()['eval_accuracy']:.3f}")


if __name__ == "__main__":
    main()
