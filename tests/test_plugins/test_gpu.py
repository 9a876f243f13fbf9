"""CUDA paths (fp16 autocast, channels-last, pinned uploads) agree with the CPU; skipped without a GPU."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from plugins import get_extractor, resolve_device
from tests import _harness
from tests.test_plugins.support import check_features, textured_image

pytestmark = [
    pytest.mark.gpu,
    _harness.skip_unless(torch.cuda.is_available(), _harness.Kind.GPU, "needs a CUDA device"),
]


def _frames() -> np.ndarray:
    return np.stack([textured_image(40 + i, 360, 640) for i in range(8)])


def test_auto_device_is_cuda() -> None:
    assert resolve_device("auto") == "cuda"


def test_xfeat_cuda_matches_cpu(xfeat: Any) -> None:
    frames = _frames()
    gpu = get_extractor("xfeat", device="cuda", max_keypoints=512)
    out_gpu = gpu.extract(frames)
    out_cpu = xfeat.extract(frames)
    for g, c in zip(out_gpu, out_cpu, strict=True):
        check_features(g, 64, 64, (360, 640))
        # fp16 moves scores a little: compare the keypoint sets, not their order.
        cpu_set = {tuple(p) for p in np.round(c.keypoints).astype(int)}
        common = sum(tuple(p) in cpu_set for p in np.round(g.keypoints).astype(int))
        assert common >= 0.8 * c.num_features
        assert float(g.global_descriptor @ c.global_descriptor) > 0.99
    gpu.close()


def test_efficientnet_cuda_matches_cpu(effnet: Any) -> None:
    frames = _frames()
    gpu = get_extractor("efficientnet-gem", device="cuda", max_side=256)
    for g, c in zip(gpu.extract(frames), effnet.extract(frames), strict=True):
        assert float(g.global_descriptor @ c.global_descriptor) > 0.99
    gpu.close()


def test_large_batch_and_close_releases() -> None:
    extractor = get_extractor("xfeat", device="cuda")
    out = extractor.extract(np.repeat(_frames(), 4, axis=0))
    assert len(out) == 32 and all(f.num_features > 0 for f in out)
    extractor.close()
    assert not extractor._ready
