"""Device selection and CPU thread policy.

Example:
    >>> from lrtune.device import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import os

import torch

from lrtune.exceptions import InvalidInputError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"`` (or ``None``) into CUDA when present, else CPU; validate the rest.

    Raises:
        ValueError: the device string is unknown, or names CUDA on a machine without it.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise InvalidInputError(
            f"unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


def set_torch_threads(threads: int | None = None) -> int:
    """Pin torch's intra-op threads; return the number in force.

    Small models trained by several processes at once slow down badly when each
    process uses every core (torch's default), so workers pass an explicit count.
    ``None`` reads ``LRTUNE_TORCH_THREADS`` and otherwise leaves torch's setting.
    """
    if threads is None:
        env = os.environ.get("LRTUNE_TORCH_THREADS")
        threads = int(env) if env else None
    if threads is not None:
        if threads < 1:
            raise InvalidInputError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()
