"""The one LR-ratio rule for param groups, and the optimizer clone a sweep steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lrtune import find_lr
from lrtune.optimizers import clone_optimizer, group_lr_ratios


def two_groups(lr_0: float, lr_1: float) -> torch.optim.Optimizer:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 3))
    return torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": lr_0},
            {"params": model[1].parameters(), "lr": lr_1},
        ],
        lr=lr_0,
    )


def test_ratios_are_to_group_0() -> None:
    assert group_lr_ratios(two_groups(1e-3, 1e-2)) == pytest.approx([1.0, 10.0])
    assert group_lr_ratios(two_groups(1e-3, 0.0)) == [1.0, 0.0]  # a frozen later group


def test_a_single_group_has_ratio_one_whatever_its_lr() -> None:
    for lr in (0.0, 1e-3, 5.0):
        assert group_lr_ratios(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=lr)) == [1.0]


def test_groups_all_at_lr_0_are_alike() -> None:
    assert group_lr_ratios(two_groups(0.0, 0.0)) == [1.0, 1.0]


def test_several_groups_with_group_0_at_lr_0_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"group 0 has lr 0\.0.*positive lr first"):
        group_lr_ratios(two_groups(0.0, 1e-2))


def test_ratios_come_from_the_configured_lr_when_a_scheduler_has_moved_it() -> None:
    optimizer = two_groups(1e-3, 1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [lambda e: 0.0, lambda e: 1.0])
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [0.0, 1e-2]
    assert group_lr_ratios(optimizer) == pytest.approx([1.0, 10.0])


def test_a_single_group_optimizer_at_lr_0_can_be_range_tested(blobs) -> None:
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    result = find_lr(model, blobs, optimizer, num_iter=40, progress=False)
    assert result.group_lr_ratios == [1.0]
    assert len(result.seeds[0].raw) > 1


def test_a_clone_has_the_groups_and_hyperparameters_and_no_state() -> None:
    optimizer = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=1e-3, weight_decay=0.05)
    optimizer.param_groups[0]["params"][0].grad = torch.ones(2, 3)
    optimizer.param_groups[0]["params"][1].grad = torch.ones(2)
    optimizer.step()
    clone = clone_optimizer(optimizer)
    assert type(clone) is torch.optim.AdamW and clone is not optimizer
    assert clone.state_dict()["state"] == {}
    original_group, cloned_group = optimizer.param_groups[0], clone.param_groups[0]
    assert cloned_group["params"] == original_group["params"]
    assert {k: v for k, v in cloned_group.items() if k != "params"} == {
        k: v for k, v in original_group.items() if k != "params"
    }
