"""Stage timings that are right on a GPU: CUDA work is asynchronous, so a clock read right after a kernel launch
measures the launch, not the work, and the time shows up in whichever stage next waits on the device.

:func:`stage_clock` synchronises the device first when it is a CUDA device (a no-op on the CPU, and where CUDA is
not available), then reads ``time.perf_counter()``. Use it at every point where a per-stage time is taken for a
stage that runs on ``device``.
"""

from __future__ import annotations

import time

import torch

__all__ = ["stage_clock", "synchronize"]


def _is_cuda(device: str | torch.device | None) -> bool:
    if device is None:
        return False
    return torch.device(device).type == "cuda"


def synchronize(device: str | torch.device | None) -> bool:
    """Wait for the queued CUDA work of ``device``; nothing for a CPU device, ``None`` or without CUDA.

    Returns:
        whether it synchronised.
    """
    if not _is_cuda(device) or not torch.cuda.is_available():
        return False
    torch.cuda.synchronize(device)
    return True


def stage_clock(device: str | torch.device | None = None) -> float:
    """``time.perf_counter()`` after :func:`synchronize` of ``device``: a timing point of a stage on ``device``."""
    synchronize(device)
    return time.perf_counter()
