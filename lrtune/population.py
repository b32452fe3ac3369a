"""Train K search trials of one job as one population: one forward and backward for all K.

A job's search trials share its seed, so they start from the same weights and read the same
batches. :func:`train_population` stacks its members' parameters and buffers (``(K, *shape)``
each; a param group's trained parameters as one flat ``(K, N)`` stack), runs the model once a
batch for all of them, fused per operator (:mod:`lrtune.stacked_forward`: K Linear layers as
one batched matmul, K convolutions as one grouped convolution), takes one backward pass and
steps them with :class:`~lrtune.functional_optim.StackedOptimizer`. Each member keeps what
:func:`train` would give it alone: its own torch optimizer (over the job's model, never
stepped: it is where the member's schedule writes each step's LR, momentum and betas, which
the stacked update reads), its schedule driver (plateau fed its own metric), its records and
``lr_steps``, its checkpoint (the format :func:`train` resumes from) and its ``on_epoch`` and
``on_end`` hooks. ``runs[i]`` is what ``train()`` returns for member ``i`` alone, to float
tolerance.

- Dropout draws one mask for all members: the mask every run of the job draws alone, from the
  same RNG stream. BatchNorm keeps per-member running statistics.
- A member that is pruned (its hook raises :class:`StopTraining`), diverges or crosses
  ``lr_threshold`` leaves at that epoch's end (the stacks are compacted); the rest go on.
- Evaluation is one stacked pass over the validation split with the dataset's own sums
  (:func:`member_scores`); a checkpoint copies the member's weights into the job's model and
  writes what :func:`train` writes.
- Resuming: members are grouped by the state their checkpoints resume from (epoch, RNG, data
  order); members with none start together from epoch 0. Each group trains as one population,
  one group after another, as their runs alone would one after another.
- Where the job cannot train this way (:func:`population_refusal`: a task's own loop or code,
  AMP, an optimizer without a stacked form, a model that cannot run stacked), or a group has
  one member, the members train one at a time with :func:`train`; the reason is logged once.

Example:
    >>> from lrtune.spec import JobSpec
    >>> from lrtune.schedules import parse_schedule
    >>> spec = JobSpec.model_validate({"model": {"name": "mlp", "params": {"hidden": [16]}},
    ...                                "dataset": {"name": "wine"}})
    >>> setup = TrainingSetup.from_spec(spec, device="cpu")
    >>> print(population_refusal(setup))
    None
    >>> members = [Member(parse_schedule({"family": "constant"}), lr) for lr in (0.01, 0.1)]
    >>> runs = train_population(setup, members, epochs=2)
    >>> [(run.status, len(run.epochs)) for run in runs]
    [('completed', 2), ('completed', 2)]
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from lrtune.batches import move_to
from lrtune.datasets import DatasetBundle
from lrtune.functional_optim import StackedOptimizer, functional_refusal
from lrtune.lr_free import LRFreeName
from lrtune.registry_task import RegistryTask
from lrtune.result import TrainingRun
from lrtune.schedules import ScheduleDriver, ScheduleSpec, drive
from lrtune.spec import UNIT_CHECK_S
from lrtune.stacked_forward import stacked_forward
from lrtune.task import TaskError, checked_scores
from lrtune.training import (
    EpochHook,
    StopReason,
    StopTraining,
    TrainingSetup,
    _plateau_value,
    _resume,
    _RunState,
    _save,
    _StopLooks,
    check_stop,
    train,
)

logger = logging.getLogger(__name__)

DEVICE_MEMORY_FRACTION = 0.5
"""A CUDA population takes at most this fraction of the device's free memory (estimated per
member from the job's footprint); the rest is left for the data, the allocator and others."""


@dataclass
class Member:
    """One run of a population: what :func:`train` takes for it alone."""

    schedule: ScheduleSpec
    base_lr: float
    on_epoch: EpochHook | None = None
    """As :func:`train`'s: raise :class:`StopTraining` in it to end this member as pruned."""
    checkpoint: Path | None = None
    """This member's checkpoint file (:func:`train`'s format): saved each epoch, resumed from."""
    on_end: Callable[[TrainingRun], None] | None = None
    """Called with the member's run as soon as it ends (pruned, diverged, below the LR
    threshold, stopped, or done), while the others may train on: a search tells its trial
    then. An exception from it propagates, as one from ``on_epoch`` does."""

    def end(self, run: TrainingRun) -> TrainingRun:
        if self.on_end is not None:
            self.on_end(run)
        return run


def population_refusal(setup: TrainingSetup, *, lr_free: LRFreeName | None = None) -> str | None:
    """Why the setup's runs cannot train as one population (None: they can).

    Only registry models train as populations (a user's task is its own code); a task's own
    loop, AMP, a learning-rate-free optimizer, an optimizer other than SGD, Adam and AdamW
    (or with ``maximize``, ``fused``...), a loss other than plain cross-entropy and MSE, and a
    model that cannot run stacked (two copies' losses and gradients are tried on one batch)
    are refused.
    """
    if lr_free is not None:
        return f"the learning-rate-free optimizer {lr_free} has no functional population form"
    if callable(getattr(setup.task, "train_epoch", None)):
        return "the task owns its training loop (train_epoch)"
    if not isinstance(setup.task, RegistryTask):
        return f"task {setup.task.name!r} is user code: populations train registry models only"
    if setup.amp:
        return "amp: a GradScaler steps one model at a time"
    model = setup.build_model()
    refusal = functional_refusal(setup.build_optimizer(model, 1.0))
    return refusal if refusal is not None else _stacked_refusal(setup, model)


def population_size(setup: TrainingSetup, cap: int) -> int:
    """How many members to train at once: ``cap`` on the CPU (and for a task's runs, which
    train one at a time anyway); on CUDA at most what :data:`DEVICE_MEMORY_FRACTION` of the
    free memory holds by the job's footprint (>= 1)."""
    if setup.device.type != "cuda" or not isinstance(setup.task, RegistryTask):
        return cap
    free, _total = torch.cuda.mem_get_info(setup.device)
    return max(1, min(cap, int(DEVICE_MEMORY_FRACTION * free // _member_bytes(setup))))


def train_population(
    setup: TrainingSetup,
    members: list[Member],
    epochs: int,
    *,
    lr_threshold: float | None = None,
    seed: int | None = None,
    stop_reason: StopReason | None = None,
    stop_check_s: float = UNIT_CHECK_S,
) -> list[TrainingRun]:
    """Train the members together; ``runs[i]`` equals (to float tolerance) what
    ``train(setup, m.schedule, m.base_lr, epochs, lr_threshold=..., on_epoch=m.on_epoch,
    checkpoint=m.checkpoint, seed=seed)`` returns for member ``m = members[i]``.

    ``stop_reason`` and a requested stop apply to the whole population: a reason given
    mid-epoch ends every member still training as pruned with it; :class:`StopRequested`
    propagates, every member's checkpoint of its last finished epoch written. An exception
    other than :class:`StopTraining` from a hook propagates after the epoch's checkpoints are
    written. When :func:`population_refusal` gives a reason, the members train one at a time
    with :func:`train` (identical results), and the reason is logged once.
    """
    refusal = population_refusal(setup) if len(members) > 1 else None
    if refusal is not None:
        logger.info("training %d runs one at a time: %s", len(members), refusal)
        return [
            m.end(_train_alone(setup, m, epochs, lr_threshold, seed, stop_reason, stop_check_s))
            for m in members
        ]
    seed = setup.spec.seed if seed is None else seed
    looks = _StopLooks(stop_check_s, stop_reason)
    with setup.kernels():
        model = setup.build_model(seed)
        initial = {name: value.clone() for name, value in model.state_dict().items()}
        seats = [_Seat.take(setup, model, i, m, epochs, seed) for i, m in enumerate(members)]
        for cohort in _cohorts(seats):
            if cohort[0].start >= epochs:
                for seat in cohort:
                    seat.member.end(seat.run)
                continue
            if len(cohort) == 1:
                seat = cohort[0]
                seat.run = seat.member.end(
                    _train_alone(
                        setup, seat.member, epochs, lr_threshold, seed, stop_reason, stop_check_s
                    )
                )
                continue
            _Population(setup, model, initial, cohort, seed).train(epochs, lr_threshold, looks)
    return [seat.run for seat in seats]


def _train_alone(
    setup: TrainingSetup,
    member: Member,
    epochs: int,
    lr_threshold: float | None,
    seed: int | None,
    stop_reason: StopReason | None,
    stop_check_s: float,
) -> TrainingRun:
    return train(
        setup,
        member.schedule,
        member.base_lr,
        epochs,
        lr_threshold=lr_threshold,
        on_epoch=member.on_epoch,
        checkpoint=member.checkpoint,
        seed=seed,
        stop_reason=stop_reason,
        stop_check_s=stop_check_s,
    )


@dataclass
class _Resumed:
    """What a member's checkpoint restored, to stack with its group's."""

    model: dict[str, Tensor]
    optimizer: dict[str, dict[str, Tensor]]  # by parameter name, torch.optim's format
    torch_rng: Tensor
    cuda_rng: Tensor | None
    data_order: Any

    def key(self) -> tuple[bytes, bytes]:
        """What members must share to train together: the RNG and the data order."""
        return _fingerprint(self.torch_rng), _fingerprint(self.data_order)


@dataclass
class _Seat:
    """One member while it trains: its own optimizer (where its schedule writes), driver, run."""

    position: int
    member: Member
    optimizer: torch.optim.Optimizer
    driver: ScheduleDriver
    run: TrainingRun = field(default_factory=TrainingRun)
    start: int = 0
    resumed: _Resumed | None = None

    @classmethod
    def take(
        cls,
        setup: TrainingSetup,
        model: nn.Module,
        position: int,
        member: Member,
        epochs: int,
        seed: int,
    ) -> _Seat:
        """The member's seat over ``model``'s parameters, resumed from its checkpoint if any
        (``model``'s tensors are put back as they were)."""
        optimizer = setup.build_optimizer(model, member.base_lr)
        driver = drive(
            member.schedule,
            optimizer,
            setup.steps_per_epoch,
            epochs,
            group_multipliers=setup.group_multipliers,
        )
        optimizer.step()  # no gradients: changes nothing; the scheduler sees the usual order
        seat = cls(position, member, optimizer, driver)
        if member.checkpoint is not None and member.checkpoint.exists():
            seat.resume(setup, model, seed)
        return seat

    def resume(self, setup: TrainingSetup, model: nn.Module, seed: int) -> None:
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        order = setup.data_order(seed)
        state = _RunState(model, self.optimizer, self.driver, order, None, setup.device, setup.task)
        assert self.member.checkpoint is not None
        self.start = _resume(self.member.checkpoint, state, self.run)
        names = {id(p): n for n, p in model.named_parameters()}
        self.resumed = _Resumed(
            model={k: v.clone() for k, v in model.state_dict().items()},
            optimizer={names[id(p)]: dict(s) for p, s in self.optimizer.state.items()},
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state(setup.device)
            if setup.device.type == "cuda"
            else None,
            data_order=order.state_dict(),
        )
        self.optimizer.state = defaultdict(dict)
        model.load_state_dict(initial)


def _cohorts(seats: list[_Seat]) -> list[list[_Seat]]:
    """The seats grouped by the state they start from, fresh ones first."""
    groups: dict[tuple[Any, ...], list[_Seat]] = {}
    for seat in seats:
        key = (seat.start,) + (() if seat.resumed is None else seat.resumed.key())
        groups.setdefault(key, []).append(seat)
    return list(groups.values())


def _fingerprint(value: Any) -> bytes:
    if isinstance(value, Tensor):
        return value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    return repr(value).encode()


def _group_key(group: int) -> str:
    return f"group {group}"


class _Segments:
    """One param group's trained parameters as consecutive segments of one flat tensor."""

    def __init__(self, shapes: list[tuple[str, torch.Size]]) -> None:
        self.names = [name for name, _ in shapes]
        self.shapes = [shape for _, shape in shapes]
        self.sizes = [shape.numel() for shape in self.shapes]

    def flatten(self, tensors: Mapping[str, Tensor], batched: bool = True) -> Tensor:
        """The group's tensors (each ``(K, *shape)``, or ``shape`` unbatched) as one, each
        copied once into its segment (a transposed gradient too)."""
        first = tensors[self.names[0]]
        lead = first.shape[:1] if batched else ()
        flat = first.new_empty(*lead, sum(self.sizes))
        for name, segment in self.split(flat, batched).items():
            segment.copy_(tensors[name].detach())
        return flat

    def split(self, flat: Tensor, batched: bool = True) -> dict[str, Tensor]:
        """Views of ``flat`` (``(K, N)``, or ``(N,)`` unbatched), one per parameter."""
        lead = flat.shape[:1] if batched else ()
        parts = flat.split(self.sizes, dim=-1)
        return {
            name: part.view(*lead, *shape)
            for name, part, shape in zip(self.names, parts, self.shapes, strict=True)
        }


class _Population:
    """Members that start from one state, their tensors stacked (see the module)."""

    def __init__(
        self,
        setup: TrainingSetup,
        model: nn.Module,
        initial: Mapping[str, Tensor],
        seats: list[_Seat],
        seed: int,
    ) -> None:
        self.setup = setup
        self.model = model
        self.seats = seats
        self.order = setup.data_order(seed)
        names = {id(p): n for n, p in model.named_parameters()}
        self.groups = [
            _Segments([(names[id(p)], p.shape) for p in group["params"] if p.requires_grad])
            for group in seats[0].optimizer.param_groups
        ]
        self.trained = [name for group in self.groups for name in group.names]
        self.optim = StackedOptimizer(
            type(seats[0].optimizer),
            {_group_key(g): g for g, group in enumerate(self.groups) if group.names},
        )
        self._stack(initial, seed)

    def _stack(self, initial: Mapping[str, Tensor], seed: int) -> None:
        """Stack the members' weights, buffers and optimizer states (``initial``: a fresh
        member's); set the RNG and the data order where the members start."""
        resumed = [seat.resumed for seat in self.seats]
        states = [initial if r is None else r.model for r in resumed]
        self.flat = {
            _group_key(g): torch.stack([group.flatten(s, batched=False) for s in states])
            for g, group in enumerate(self.groups)
            if group.names
        }
        self.frozen = {
            name: torch.stack([s[name] for s in states])
            for name, _ in self.model.named_parameters()
            if name not in self.trained
        }
        self.buffers = {
            name: torch.stack([s.get(name, value) for s in states]).detach()
            for name, value in self.model.named_buffers()
        }
        self._view_params()
        first = resumed[0]
        if first is None:
            torch.manual_seed(seed)
            return
        self.optim.load_member_states(
            [self._flat_optimizer_state(r.optimizer) for r in resumed if r is not None]
        )
        torch.set_rng_state(first.torch_rng)
        if first.cuda_rng is not None:
            torch.cuda.set_rng_state(first.cuda_rng, self.setup.device)
        self.order.load_state_dict(first.data_order)

    def _view_params(self) -> None:
        """Each trained parameter as a leaf view of its group's flat stack (so one update of
        the stack moves them all), the frozen ones as they are."""
        self.params = dict(self.frozen)
        for g, group in enumerate(self.groups):
            if not group.names:
                continue
            for name, view in group.split(self.flat[_group_key(g)]).items():
                self.params[name] = view.requires_grad_()

    def _flat_optimizer_state(
        self, by_name: Mapping[str, Mapping[str, Tensor]]
    ) -> dict[str, dict[str, Tensor]]:
        """A member's torch.optim state by parameter name, flattened per group."""
        flat: dict[str, dict[str, Tensor]] = {}
        for g, group in enumerate(self.groups):
            first = by_name.get(group.names[0], {}) if group.names else {}
            if not first:
                continue
            flat[_group_key(g)] = {
                key: first[key]
                if key == "step"
                else group.flatten({n: by_name[n][key] for n in group.names}, batched=False)
                for key in first
            }
        return flat

    def _flat_grads(self, grads: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {
            _group_key(g): group.flatten(grads)
            for g, group in enumerate(self.groups)
            if group.names
        }

    def _losses(self, batch: Any) -> Tensor:
        """Each member's training loss on ``batch``, shape ``(K,)``."""
        inputs, targets = move_to(batch, self.setup.device)
        outputs = stacked_forward(self.model, self.params, self.buffers, inputs, len(self.seats))
        return member_losses(self.setup.task.criterion, outputs, targets)

    def train(self, epochs: int, lr_threshold: float | None, looks: _StopLooks) -> None:
        """Train every member up to ``epochs``, members leaving as their runs end."""
        for epoch in range(self.seats[0].start, epochs):
            check_stop(f"before epoch {epoch + 1}")  # every member's last epoch is saved
            try:
                losses = self._train_epoch(epoch, looks.at(epoch))
            except StopTraining as stop:  # stop_reason said why, mid-epoch
                for seat in self.seats:
                    seat.run.status, seat.run.reason = "pruned", str(stop)
                    seat.member.end(seat.run)
                return
            records = self._evaluate_and_save(epoch, losses)
            self._leave(self._report(epoch, records, lr_threshold))
            if not self.seats:
                return
        for seat in self.seats:
            seat.member.end(seat.run)

    def _train_epoch(self, epoch: int, look: Callable[[], None]) -> list[float | None]:
        """Each member's mean training loss of one epoch, None where a loss was not finite
        (its ``lr_steps`` then cut back to end at that batch, as :func:`train` does)."""
        self.model.train()
        steps_before = [len(seat.run.lr_steps) for seat in self.seats]
        trained = [self.params[name] for name in self.trained]
        step_losses: list[Tensor] = []  # read once, at the end: no device sync a step
        for batch in self.order.epoch(epoch):
            look()
            member_groups = [seat.optimizer.param_groups for seat in self.seats]
            for seat, groups in zip(self.seats, member_groups, strict=True):
                seat.run.lr_steps.append([float(g["lr"]) for g in groups])
            losses = self._losses(batch)
            grads = dict(zip(self.trained, torch.autograd.grad(losses.sum(), trained), strict=True))
            self.optim.step(self.flat, self._flat_grads(grads), member_groups)
            for seat in self.seats:
                seat.driver.after_batch()
            step_losses.append(losses.detach())
        count = len(step_losses)
        by_step = torch.stack(step_losses) if step_losses else torch.zeros(0, len(self.seats))
        finite_run = torch.isfinite(by_step).cumprod(0).sum(0)  # steps before a non-finite loss
        sums, passed = torch.stack([by_step.double().sum(0), finite_run.double()]).tolist()
        means: list[float | None] = []
        for seat, before, loss_sum, steps in zip(
            self.seats, steps_before, sums, passed, strict=True
        ):
            if steps < count:
                del seat.run.lr_steps[before + int(steps) + 1 :]
                means.append(None)
            else:
                means.append(loss_sum / max(count, 1))
        return means

    def _evaluate_and_save(
        self, epoch: int, losses: list[float | None]
    ) -> list[dict[str, float] | None]:
        """Each member's epoch end up to its checkpoint, as :func:`train` does it: its record,
        or None for a member that diverged (its run then says so)."""
        records: list[dict[str, float] | None] = []
        scores = member_scores(self.setup.task.data, self.model, self.params, self.buffers)
        for row, (seat, train_loss) in enumerate(zip(self.seats, losses, strict=True)):
            run = seat.run
            if train_loss is None:
                run.status, run.reason = (
                    "diverged",
                    f"non-finite training loss in epoch {epoch + 1}",
                )
                records.append(None)
                continue
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                **checked_scores(self.setup.task, scores[row], epoch),
            }
            record["epoch"], record["train_loss"] = epoch, train_loss
            run.epochs.append(record)
            if not math.isfinite(record.get("val_loss", 0.0)):
                run.status = "diverged"
                run.reason = f"non-finite validation loss in epoch {epoch + 1}"
                records.append(None)
                continue
            metric = self.setup.metric
            if not math.isfinite(record[metric]):
                raise TaskError(
                    f"{self.setup.task.name}.evaluate() in epoch {epoch + 1} returned "
                    f"{metric} = {record[metric]}"
                )
            seat.driver.after_epoch(_plateau_value(self.setup, record))
            if seat.member.checkpoint is not None:
                self._load_member(row)
                self._save(row, epoch)
            records.append(record)
        return records

    def _report(
        self, epoch: int, records: list[dict[str, float] | None], lr_threshold: float | None
    ) -> list[int]:
        """Call each member's hook with its record; the rows of the members whose runs end."""
        ended = []
        for row, (seat, record) in enumerate(zip(self.seats, records, strict=True)):
            if record is None:
                ended.append(row)
                continue
            if seat.member.on_epoch is not None:
                try:
                    seat.member.on_epoch(epoch, record)
                except StopTraining as stop:
                    seat.run.status = "pruned"
                    seat.run.reason = str(stop) or f"pruned after epoch {epoch + 1}"
                    ended.append(row)
                    continue
            if lr_threshold is not None and all(lr < lr_threshold for lr in seat.driver.last_lrs()):
                seat.run.status = "lr_threshold"
                seat.run.reason = (
                    f"every group's LR fell below {lr_threshold:g} after epoch {epoch + 1}"
                )
                ended.append(row)
        return ended

    @torch.no_grad()
    def _load_member(self, row: int) -> None:
        """Copy member ``row``'s weights and buffers into the job's model."""
        for name, param in self.model.named_parameters():
            param.copy_(self.params[name][row])
        for name, buffer in self.model.named_buffers():
            buffer.copy_(self.buffers[name][row])

    def _save(self, row: int, epoch: int) -> None:
        """Member ``row``'s checkpoint, exactly as :func:`train` writes it (the model holds
        its weights: :meth:`_load_member`)."""
        seat = self.seats[row]
        optimizer = seat.optimizer
        params = dict(self.model.named_parameters())
        for g, group in enumerate(self.groups):
            flat = self.optim.member_state(row, _group_key(g))
            for name in group.names if flat else ():
                optimizer.state[params[name]] = {
                    key: value if key == "step" else group.split(value, batched=False)[name].clone()
                    for key, value in flat.items()
                }
        setup = self.setup
        state = _RunState(
            self.model, optimizer, seat.driver, self.order, None, setup.device, setup.task
        )
        try:
            assert seat.member.checkpoint is not None
            _save(seat.member.checkpoint, epoch, state, seat.run)
        finally:
            optimizer.state = defaultdict(dict)

    def _leave(self, rows: list[int]) -> None:
        """Drop the members at ``rows`` from the stacks."""
        if not rows:
            return
        for row in rows:
            self.seats[row].member.end(self.seats[row].run)
        keep = [row for row in range(len(self.seats)) if row not in rows]
        self.seats = [self.seats[row] for row in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.setup.device)
        self.flat = {key: value.index_select(0, index) for key, value in self.flat.items()}
        self.frozen = {name: value.index_select(0, index) for name, value in self.frozen.items()}
        self.buffers = {name: value.index_select(0, index) for name, value in self.buffers.items()}
        self._view_params()
        self.optim.keep(index)


@torch.no_grad()
def member_scores(
    bundle: DatasetBundle,
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
) -> list[dict[str, float]]:
    """Each member's scores on the validation split, as ``RegistryTask.evaluate`` gives them
    for that member alone (``val_loss`` and the dataset's metric; :meth:`DatasetBundle.evaluate`'s
    batches of 1024, sums in float64), from one stacked forward pass a batch in eval mode."""
    features, targets = bundle.val.tensors
    members = len(next(iter(params.values())))
    sums = torch.zeros(members, 2, dtype=torch.float64, device=features.device)
    model.eval()
    try:
        for start in range(0, len(features), 1024):
            batch_y = targets[start : start + 1024]
            outputs = stacked_forward(model, params, buffers, features[start : start + 1024])
            if bundle.task == "classification":
                loss = _cross_entropies(outputs, batch_y).sum(1)
                metric = (outputs.argmax(-1) == batch_y).sum(1)
            else:
                loss = metric = (
                    functional.mse_loss(outputs, batch_y.expand_as(outputs), reduction="none")
                    .reshape(members, -1)
                    .sum(1)
                )
            sums += torch.stack([loss.double(), metric.double()], dim=1)
    finally:
        model.train()
    count = len(targets) if bundle.task == "classification" else targets.numel()
    return [
        {"val_loss": loss_sum / count, bundle.metric_name: metric_sum / count}
        for loss_sum, metric_sum in sums.tolist()
    ]


def _cross_entropies(outputs: Tensor, targets: Tensor) -> Tensor:
    """Each member's per-sample cross-entropy, ``(K, B)``, of ``outputs`` ``(K, B, C)`` against
    the ``targets`` ``(B,)`` they share: one cross-entropy over ``(K, C, B)`` (members as its
    batch, the samples as its extra dimension; :func:`stacked_forward`'s output is stored that
    way, so the transpose is no copy) against the targets broadcast, not copied."""
    members, batch = outputs.shape[:2]
    return functional.cross_entropy(
        outputs.transpose(1, 2), targets.expand(members, batch), reduction="none"
    )


def _plain(criterion: nn.CrossEntropyLoss) -> bool:
    """Cross-entropy as a mean over the samples: no class weights, label smoothing or
    ignored class."""
    return (
        criterion.weight is None and criterion.label_smoothing == 0 and criterion.ignore_index < 0
    )


def member_losses(criterion: nn.Module, outputs: Tensor, targets: Tensor) -> Tensor:
    """Each member's mean loss, shape ``(K,)``, from ``outputs`` ``(K, B, ...)`` against the
    ``targets`` they share: what ``criterion(outputs[k], targets)`` gives member ``k``.

    Raises:
        TypeError: ``criterion`` is not a plain ``nn.CrossEntropyLoss`` or ``nn.MSELoss``.
    """
    members = outputs.shape[0]
    if type(criterion) is nn.CrossEntropyLoss and _plain(criterion) and targets.dim() == 1:
        losses = _cross_entropies(outputs, targets)
    elif type(criterion) is nn.MSELoss:
        losses = functional.mse_loss(outputs, targets.expand_as(outputs), reduction="none")
    else:
        raise TypeError(f"{type(criterion).__name__} has no per-member form")
    return losses.reshape(members, -1).mean(1)


def _stacked_refusal(setup: TrainingSetup, model: nn.Module) -> str | None:
    """Why two stacked copies of ``model`` cannot compute their losses and gradients on the
    job's first batch (None: they can). The RNG, the model and its buffers are left alone."""
    params = {
        name: torch.stack([value, value]).detach().requires_grad_(value.requires_grad)
        for name, value in model.named_parameters()
    }
    buffers = {name: torch.stack([value, value]) for name, value in model.named_buffers()}
    devices = [setup.device] if setup.device.type == "cuda" else []
    try:
        batch = next(iter(setup.data_order(setup.spec.seed).epoch(0)))
        inputs, targets = move_to(batch, setup.device)
        with torch.random.fork_rng(devices=devices):
            outputs = stacked_forward(model.train(), params, buffers, inputs, 2)
            losses = member_losses(setup.task.criterion, outputs, targets)
            trained = [value for value in params.values() if value.requires_grad]
            torch.autograd.grad(losses.sum(), trained)  # every trained parameter is used
    except Exception as exc:  # any op without a batching rule, any shape it cannot take
        first_line = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return f"the model cannot train stacked ({first_line})"
    return None


def _member_bytes(setup: TrainingSetup) -> int:
    """One member's device memory by the job's footprint (its weights, gradients, optimizer
    state, working copies and one batch's activations)."""
    from lrtune.footprint import BYTES_PER_VALUE, WORKING_COPIES, estimate

    bundle = setup.bundle
    cost = estimate(setup.spec, (bundle.input_shape, bundle.output_dim), None)
    if cost is not None:
        return max(1, cost.model_bytes + cost.activation_bytes)
    parameters = sum(p.numel() for p in setup.build_model().parameters())
    return max(1, parameters * (4 + WORKING_COPIES) * BYTES_PER_VALUE)
