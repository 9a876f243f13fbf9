"""Tensor helpers shared by the torch extractors: batch upload, resizing, GeM pooling, mixed precision."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from plugins.base import RGBBatch
from plugins.errors import PluginError

__all__ = [
    "check_max_side",
    "fit_size",
    "gem",
    "map_to_frame",
    "maybe_autocast",
    "resize",
    "to_device",
]


def check_max_side(max_side: int, *, multiple: int = 32) -> int:
    """Validate a ``max_side`` option (an int of at least ``multiple`` pixels)."""
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < multiple:
        raise PluginError(f"max_side must be an integer >= {multiple}, got {max_side!r}")
    return int(max_side)


def fit_size(h: int, w: int, max_side: int, multiple: int = 1) -> tuple[int, int]:
    """``(h', w')``: ``(h, w)`` scaled so that the longer side is at most ``max_side`` (never enlarged), each side
    rounded down to a multiple of ``multiple`` (at least ``multiple``)."""
    scale = min(1.0, max_side / max(h, w))
    nh = max(multiple, round(h * scale) // multiple * multiple)
    nw = max(multiple, round(w * scale) // multiple * multiple)
    return nh, nw


def to_device(frames: RGBBatch, device: str) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32 in [0, 255] on ``device`` (uploaded as uint8)."""
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


def map_to_frame(xy: np.ndarray, src_size: tuple[int, int], frame_size: tuple[int, int]) -> np.ndarray:
    """Pixel ``(x, y)`` in an image of ``src_size=(h, w)`` -> pixels of the frame ``(H, W)`` it was resized from,
    using pixel centres, clipped inside the frame."""
    (sh, sw), (fh, fw) = src_size, frame_size
    out = np.empty_like(xy, dtype=np.float32)
    out[:, 0] = np.clip((xy[:, 0] + 0.5) * (fw / sw) - 0.5, 0.0, fw - 1.0)
    out[:, 1] = np.clip((xy[:, 1] + 0.5) * (fh / sh) - 0.5, 0.0, fh - 1.0)
    return out


@contextlib.contextmanager
def maybe_autocast(device: str, enabled: bool) -> Iterator[None]:
    """fp16 autocast on CUDA when ``enabled``; nothing on the CPU (bf16 gave no gain on these CPUs)."""
    if enabled and device.startswith("cuda"):
        with torch.autocast("cuda", dtype=torch.float16):
            yield
    else:
        yield
