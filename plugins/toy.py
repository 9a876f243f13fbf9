"""``toy``: a deterministic, weight-free extractor for pipeline tests. Never the default.

Local features are mean-centred 8x8 grey patches sampled on a 16-pixel grid (64-d), strongest contrast first; the
global descriptor is an 8x8 grey thumbnail (64-d). A frame is found from itself or from a crop aligned to the
grid; nothing more is promised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from l2g_core import FrameFeatures
from plugins.base import Extractor, RGBBatch
from plugins.options import ExtractorOptions, PositiveInt

__all__ = ["ToyExtractor", "ToyOptions"]

_CELL = 16


class ToyOptions(ExtractorOptions):
    """Options of ``toy`` (a feature option: part of the snapshot identity).

    Attributes:
        max_features: strongest patches kept per frame (>= 1).
    """

    max_features: PositiveInt = 256


class ToyExtractor(Extractor):
    """Grid-patch features; CPU only, microseconds per frame.

    Args:
        options: :class:`ToyOptions` (or a mapping of them).
        device: ignored beyond validation (always CPU).
    """

    name = "toy"
    Options: ClassVar[type[ExtractorOptions]] = ToyOptions
    opts: ToyOptions
    local_dim = 64
    global_dim = 64

    def __init__(self, options: ToyOptions | Mapping[str, Any] | None = None, *, device: str | None = "cpu") -> None:
        super().__init__(options, device="cpu" if device in (None, "auto") else device)
        self.calls = 0

    def _setup(self) -> None:
        self.device = "cpu"

    def _extract(self, frames: RGBBatch) -> list[FrameFeatures]:
        self.calls += 1
        return [self._one(frame) for frame in frames]

    def _one(self, frame: RGBBatch) -> FrameFeatures:
        grey = frame.astype(np.float32).mean(axis=2)
        h, w = (grey.shape[0] // _CELL) * _CELL, (grey.shape[1] // _CELL) * _CELL
        cells = grey[:h, :w].reshape(h // _CELL, 8, 2, w // _CELL, 8, 2).mean(axis=(2, 5))  # (gh, 8, gw, 8)
        patches = cells.transpose(0, 2, 1, 3).reshape(-1, 64)
        patches = patches - patches.mean(axis=1, keepdims=True)
        contrast = np.linalg.norm(patches, axis=1)
        order = np.argsort(-contrast, kind="stable")[: self.opts.max_features]
        order = order[contrast[order] > 1e-3]
        grid_w = w // _CELL
        keypoints = np.stack([(order % grid_w) * _CELL + 8, (order // grid_w) * _CELL + 8], axis=1)
        thumb = grey[: (grey.shape[0] // 8) * 8, : (grey.shape[1] // 8) * 8]
        thumb = thumb.reshape(8, thumb.shape[0] // 8, 8, thumb.shape[1] // 8).mean(axis=(1, 3)).reshape(64)
        thumb = thumb - thumb.mean()
        if not np.any(thumb):
            thumb[0] = 1.0
        descriptors = patches[order] if len(order) else np.zeros((0, 64), np.float32)
        return FrameFeatures.create(
            descriptors, keypoints.astype(np.float32).reshape(-1, 2), contrast[order], thumb,
            (frame.shape[0], frame.shape[1]),
        )
