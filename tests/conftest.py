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


@pytest.fixture
def blobs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A separable 3-class problem as 24 batches of 32."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 3
    y = torch.randint(0, 3, (768,), generator=g)
    x = centers[y] + torch.randn(768, 8, generator=g)
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, 768, 32)]
