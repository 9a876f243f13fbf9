"""Tensor helpers shared by the torch extractors: batch upload, resizing, GeM pooling, mixed precision."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F

from plugins.base import RGBBatch

__all__ = [
    "CPU_CHUNK", "cpu_chunk", "fold_batchnorm", "gem", "in_chunks", "max_filter", "maybe_autocast", "resize",
    "to_device",
]

# Frames per forward pass on the CPU. With 2 threads, batch 1 was faster per frame than batch 8 for both
# networks (XFeat 640x352: 20.5 vs 22.6 ms; 1280x704: 74 vs 85 ms; EfficientNet-Lite0 512x288: 43 vs 54 ms,
# channels-last), presumably because a single frame's activations stay in cache. GPUs take the whole batch.
CPU_CHUNK = 1


def cpu_chunk(batch: int, device: str) -> int:
    """Frames per forward pass: the whole batch on a GPU, :data:`CPU_CHUNK` on the CPU."""
    return batch if device.startswith("cuda") else min(batch, CPU_CHUNK)


T = TypeVar("T")


def in_chunks(frames: RGBBatch, device: str, run: Callable[[RGBBatch], list[T]]) -> list[T]:
    """``run`` over ``frames`` ``(B, H, W, 3)`` uint8 in :func:`cpu_chunk` pieces under ``torch.inference_mode``;
    its per-frame results, concatenated in frame order."""
    out: list[T] = []
    step = cpu_chunk(frames.shape[0], device)
    for i in range(0, frames.shape[0], step):
        with torch.inference_mode():
            out += run(frames[i : i + step])
    return out


def to_device(frames: RGBBatch, device: str) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32 in [0, 255] on ``device`` (uploaded as uint8)."""
    if frames.flags.writeable:
        x = torch.from_numpy(frames)
    else:  # decoded or memory-mapped frames may be read-only; they are only read here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(frames)
    if device != "cpu":
        x = x.pin_memory().to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float()


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(B, C, H, W)``, anti-aliased when shrinking; a no-op at the same size."""
    if (x.shape[-2], x.shape[-1]) == size:
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling of a non-negative ``(B, C, H, W)`` map -> ``(B, C)`` (float32)."""
    x = x.float().clamp(min=eps)
    return x.pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


@contextlib.contextmanager
def maybe_autocast(device: str, enabled: bool) -> Iterator[None]:
    """fp16 autocast on CUDA when ``enabled``; nothing on the CPU (bf16 gave no gain on these CPUs)."""
    if enabled and device.startswith("cuda"):
        with torch.autocast("cuda", dtype=torch.float16):
            yield
    else:
        yield


def fold_batchnorm(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> None:
    """Fold an eval-mode ``bn`` that follows ``conv`` into ``conv``'s weight and bias (in place); the caller
    then replaces ``bn`` with ``nn.Identity``. Saves a full pass over the activations per layer."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    assert bn.running_mean is not None and bn.running_var is not None, "fold a BatchNorm with running statistics"
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )


def max_filter(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """``kernel x kernel`` maximum filter of ``(B, C, H, W)`` (same size, borders padded with -inf).

    Built from shifted element-wise maxima, separably: on a 640x352 map this took 0.5 ms where
    ``F.max_pool2d(x, 5, 1, 2)`` took 15 ms on the CPU (its kernel also computes indices).
    """
    pad = kernel // 2
    h, w = x.shape[-2], x.shape[-1]
    p = F.pad(x, (pad, pad, pad, pad), value=float("-inf"))
    rows = p[..., :, 0:w]
    for d in range(1, kernel):
        rows = torch.maximum(rows, p[..., :, d : d + w])
    out = rows[..., 0:h, :]
    for d in range(1, kernel):
        out = torch.maximum(out, rows[..., d : d + h, :])
    return out
