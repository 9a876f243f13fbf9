"""``rootsift``: OpenCV SIFT + RootSIFT locals and the orientation-codebook VLAD global descriptor."""

from __future__ import annotations

from typing import Any

import numpy as np

from plugins import get_extractor
from plugins.rootsift import root_sift, vlad
from tests.test_plugins.support import check_features, consistent_share, ransac_inliers, warp_similarity


def test_root_sift_is_hellinger() -> None:
    d = np.random.default_rng(0).integers(0, 256, (10, 128)).astype(np.float32)
    r = root_sift(d)
    np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, atol=1e-5)
    # The inner product of two RootSIFT vectors is the Hellinger kernel of the L1-normalised SIFT vectors.
    p, q = d[0] / d[0].sum(), d[1] / d[1].sum()
    assert abs(float(r[0] @ r[1]) - float(np.sqrt(p * q).sum())) < 1e-5


def test_vlad() -> None:
    d = root_sift(np.random.default_rng(0).integers(0, 256, (50, 128)))
    g = vlad(d)
    assert g.shape == (1024,) and abs(float(np.linalg.norm(g)) - 1.0) < 1e-5
    np.testing.assert_allclose(vlad(d[::-1]), g, atol=1e-6)  # order-free
    empty = vlad(np.zeros((0, 128), np.float32))
    assert abs(float(np.linalg.norm(empty)) - 1.0) < 1e-6


def test_output_contract(rootsift: Any, scene: np.ndarray) -> None:
    (f,) = rootsift.extract(scene[None])
    check_features(f, 128, 1024, scene.shape[:2])
    assert 50 < f.num_features <= 500
    assert np.all(np.diff(f.scores) <= 0)
    assert np.all(f.descriptors >= 0)


def test_deterministic(rootsift: Any, scene: np.ndarray) -> None:
    a, b = rootsift.extract(scene[None])[0], rootsift.extract(scene[None])[0]
    np.testing.assert_array_equal(a.descriptors, b.descriptors)
    np.testing.assert_array_equal(a.global_descriptor, b.global_descriptor)


def test_warped_copy_matches_better_than_another_image(rootsift: Any, scene: np.ndarray,
                                                        other_scene: np.ndarray) -> None:
    warped, h = warp_similarity(scene, angle=15.0, scale=0.9)
    a, b, c = rootsift.extract(np.stack([scene, warped, other_scene]))
    share, good = consistent_share(a, b, h, tol=3.0)
    assert share > 0.6 and good > 40
    assert ransac_inliers(a, b, 3.0) > 3 * max(10, ransac_inliers(a, c, 3.0))
    assert float(a.global_descriptor @ b.global_descriptor) > float(a.global_descriptor @ c.global_descriptor)


def test_downscaled_keypoints_are_in_frame_pixels(scene: np.ndarray) -> None:
    extractor = get_extractor("rootsift", max_keypoints=300, max_side=160)
    (f,) = extractor.extract(scene[None])
    check_features(f, 128, 1024, scene.shape[:2])
    assert f.keypoints[:, 0].max() > 160


def test_global_from_efficientnet(scene: np.ndarray) -> None:
    extractor = get_extractor("rootsift", max_keypoints=100, global_from="efficientnet",
                              global_options={"max_side": 128}, device="cpu")
    (f,) = extractor.extract(scene[None])
    check_features(f, 128, 1280, scene.shape[:2])
    assert extractor.options()["global_from"] == "efficientnet"
    extractor.close()
