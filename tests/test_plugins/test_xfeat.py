"""``xfeat`` on synthetic images: output contract, batching, determinism, geometry and matching."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest

from plugins import get_extractor
from tests.test_plugins.support import (
    check_features,
    consistent_share,
    ransac_inliers,
    textured_image,
    warp_similarity,
)


def test_output_contract(xfeat: Any, scene: np.ndarray) -> None:
    (f,) = xfeat.extract(scene[None])
    check_features(f, 64, 64, scene.shape[:2])
    assert 100 < f.num_features <= 512
    assert np.all(np.diff(f.scores) <= 0), "features come strongest first"
    assert np.all(f.scores > 0)


def test_max_keypoints_is_respected(scene: np.ndarray) -> None:
    extractor = get_extractor("xfeat", device="cpu", max_keypoints=50)
    (f,) = extractor.extract(scene[None])
    assert f.num_features == 50


@pytest.mark.slow
def test_batch_equals_single_frames(xfeat: Any, scene: np.ndarray, other_scene: np.ndarray) -> None:
    batch = xfeat.extract(np.stack([scene, other_scene]))
    singles = [xfeat.extract(scene[None])[0], xfeat.extract(other_scene[None])[0]]
    for a, b in zip(batch, singles, strict=True):
        assert a.num_features == b.num_features
        # Equal scores may come in either order: compare sorted by position.
        oa, ob = np.lexsort(a.keypoints.T), np.lexsort(b.keypoints.T)
        np.testing.assert_allclose(a.keypoints[oa], b.keypoints[ob], atol=1e-4)
        np.testing.assert_allclose(a.descriptors[oa], b.descriptors[ob], atol=1e-4)
        np.testing.assert_allclose(a.global_descriptor, b.global_descriptor, atol=1e-5)


def test_deterministic(xfeat: Any, scene: np.ndarray) -> None:
    a, b = xfeat.extract(scene[None])[0], xfeat.extract(scene[None])[0]
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    np.testing.assert_array_equal(a.descriptors, b.descriptors)


def test_warped_copy_matches_better_than_another_image(xfeat: Any, scene: np.ndarray,
                                                        other_scene: np.ndarray) -> None:
    warped, h = warp_similarity(scene)
    a, b, c = xfeat.extract(np.stack([scene, warped, other_scene]))
    share, good = consistent_share(a, b, h, tol=5.0)
    assert share > 0.5 and good > 50
    assert ransac_inliers(a, b) > 3 * max(10, ransac_inliers(a, c))
    assert float(a.global_descriptor @ b.global_descriptor) > float(a.global_descriptor @ c.global_descriptor)


def test_keypoints_map_back_to_the_original_frame(scene: np.ndarray) -> None:
    # A 4x larger frame, analysed at a quarter of its size: keypoints must land on the same scene points.
    big = np.asarray(cv2.resize(scene, (scene.shape[1] * 4, scene.shape[0] * 4), interpolation=cv2.INTER_CUBIC),
                     np.uint8)
    extractor = get_extractor("xfeat", device="cpu", max_keypoints=512, max_side=scene.shape[1])
    small_f, big_f = extractor.extract(scene[None])[0], extractor.extract(big[None])[0]
    check_features(big_f, 64, 64, big.shape[:2])
    assert big_f.keypoints[:, 0].max() > scene.shape[1]  # in big-frame pixels, not network pixels
    to_big = np.diag([4.0, 4.0, 1.0])
    to_big[:2, 2] = 1.5  # pixel centres: x_big = 4 (x + 0.5) - 0.5
    share, _ = consistent_share(small_f, big_f, to_big, tol=6.0)
    assert share > 0.7


def test_global_from_efficientnet(scene: np.ndarray) -> None:
    extractor = get_extractor("xfeat", device="cpu", max_keypoints=64, global_from="efficientnet",
                              global_options={"max_side": 128})
    (f,) = extractor.extract(scene[None])
    check_features(f, 64, 1280, scene.shape[:2])
    assert extractor.options()["global_options"]["max_side"] == 128
    extractor.close()


def test_threshold_filters_keypoints(scene: np.ndarray) -> None:
    loose = get_extractor("xfeat", device="cpu", max_keypoints=4096, detection_threshold=0.01)
    strict = get_extractor("xfeat", device="cpu", max_keypoints=4096, detection_threshold=0.5)
    assert loose.extract(scene[None])[0].num_features > strict.extract(scene[None])[0].num_features


@pytest.mark.parametrize("size", [(360, 640), (720, 1280)])
def test_video_sizes(xfeat: Any, size: tuple[int, int]) -> None:
    frame = cv2.resize(textured_image(5), (size[1], size[0]))
    (f,) = xfeat.extract(frame[None])
    check_features(f, 64, 64, size)
    assert f.num_features == 512


def test_max_filter_equals_max_pool() -> None:
    import torch
    import torch.nn.functional as F

    from plugins._torch import max_filter

    x = torch.randn(2, 1, 37, 53)
    for k in (3, 5):
        assert torch.equal(max_filter(x, k), F.max_pool2d(x, k, stride=1, padding=k // 2))


@pytest.mark.slow
def test_batchnorm_folding_keeps_outputs() -> None:
    import torch

    from plugins._xfeat_net import XFeatNet
    from plugins.weights import XFEAT, load_into, load_state_dict, resolve_weights

    plain = XFeatNet().eval()
    load_into(plain, load_state_dict(resolve_weights(XFEAT)), what="xfeat", ignore_prefixes=("fine_matcher.",))
    fused = XFeatNet().eval()
    fused.load_state_dict(plain.state_dict())
    fused.fuse()
    x = torch.rand(1, 1, 64, 96) * 255
    with torch.inference_mode():
        for a, b in zip(plain(x), fused(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
