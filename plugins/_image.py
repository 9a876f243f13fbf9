"""Size and coordinate helpers shared by the extractors (numpy only)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from plugins.errors import PluginError

__all__ = ["check_max_side", "fit_size", "map_to_frame"]


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


def map_to_frame(
    xy: npt.ArrayLike, src_size: tuple[int, int], frame_size: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """Pixel ``(x, y)`` in an image of ``src_size=(h, w)`` -> pixels of the frame ``(H, W)`` it was resized from,
    using pixel centres, clipped inside the frame."""
    (sh, sw), (fh, fw) = src_size, frame_size
    pts = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    out = np.empty(pts.shape, dtype=np.float32)
    out[:, 0] = np.clip((pts[:, 0] + 0.5) * (fw / sw) - 0.5, 0.0, fw - 1.0)
    out[:, 1] = np.clip((pts[:, 1] + 0.5) * (fh / sh) - 0.5, 0.0, fh - 1.0)
    return out
