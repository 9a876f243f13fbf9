"""``effnet-unified``: EfficientNet-Lite0 cells as local features and GeM as the global, from one forward pass."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from plugins import available, get_extractor
from plugins.unified import EffNetUnifiedExtractor
from plugins.weights import EFFICIENTNET_LITE0, resolve_weights
from tests.test_plugins.support import check_features, consistent_share, textured_image


@pytest.fixture(scope="module")
def unified() -> Iterator[Any]:
    extractor = get_extractor("effnet-unified", device="cpu", max_side=256)
    extractor.setup()
    yield extractor
    extractor.close()


def test_registered_with_the_sizes_of_each_map() -> None:
    assert "effnet-unified" in available()
    sizes = {m: get_extractor("effnet-unified", local_map=m) for m in ("head", "block", "stride16")}
    assert all(isinstance(e, EffNetUnifiedExtractor) for e in sizes.values())
    assert {m: (e.local_dim, e.global_dim) for m, e in sizes.items()} == {
        "head": (1280, 1280), "block": (320, 1280), "stride16": (112, 1280)}


def test_output_contract(unified: Any, scene: np.ndarray) -> None:
    (f,) = unified.extract(scene[None])  # 240 x 320 -> 192 x 256: a 6 x 8 grid of 32-pixel cells
    check_features(f, 320, 1280, scene.shape[:2])
    assert f.num_features == 48
    assert np.all(np.diff(f.scores) <= 0) and np.all(f.scores > 0)
    # cell centres (32 j + 15.5 in network pixels) mapped to the frame (x 1.25)
    expected_x = np.clip((np.arange(8) * 32 + 16) * 1.25 - 0.5, 0, 319)
    assert set(np.round(f.keypoints[:, 0], 3)) == set(np.round(expected_x, 3).astype(np.float32))


def test_global_is_efficientnet_gem_of_the_same_pass(unified: Any, effnet: Any, scene: np.ndarray) -> None:
    (f,) = unified.extract(scene[None])
    (g,) = effnet.extract(scene[None])  # the session's efficientnet-gem, max_side 256 too
    np.testing.assert_allclose(f.global_descriptor, g.global_descriptor, atol=1e-6)


def test_scores_are_the_feature_norms_and_top_k_keeps_the_largest(scene: np.ndarray) -> None:
    every = get_extractor("effnet-unified", device="cpu", max_side=256, local_map="stride16")
    (f,) = every.extract(scene[None])
    assert f.num_features == 12 * 16 and f.descriptors.shape[1] == 112
    few = get_extractor("effnet-unified", device="cpu", max_side=256, local_map="stride16", max_keypoints=10)
    (g,) = few.extract(scene[None])
    np.testing.assert_allclose(g.scores, f.scores[:10], rtol=1e-6)
    np.testing.assert_allclose(g.descriptors, f.descriptors[:10], atol=1e-6)


def test_shifted_frame_matches_at_the_shifted_cells() -> None:
    # A shift by exactly one 32-pixel cell (no resizing: max_side = frame side) moves every cell by one.
    img = textured_image(8, 256, 352)
    a_img, b_img = img[:, :320], img[:, 32:352]
    shift = np.array([[1, 0, -32], [0, 1, 0], [0, 0, 1]], np.float64)
    ext = get_extractor("effnet-unified", device="cpu", max_side=320)
    a, b = ext.extract(np.ascontiguousarray(np.stack([a_img, b_img])))
    share, good = consistent_share(a, b, shift, tol=4.0)
    assert share > 0.5 and good >= 20


def test_deterministic_and_batch_equals_single(unified: Any, scene: np.ndarray, other_scene: np.ndarray) -> None:
    batch = unified.extract(np.stack([scene, other_scene]))
    again = unified.extract(np.stack([scene, other_scene]))
    for x, y in zip(batch, again, strict=True):
        np.testing.assert_array_equal(x.descriptors, y.descriptors)
    single = unified.extract(other_scene[None])[0]
    np.testing.assert_allclose(single.descriptors, batch[1].descriptors, atol=1e-5)


def test_identity_holds_the_weights_sha256_and_the_map(unified: Any) -> None:
    ident = unified.snapshot_identity()
    digest = hashlib.sha256(resolve_weights(EFFICIENTNET_LITE0).read_bytes()).hexdigest()
    assert ident == {"extractor": "effnet-unified",
                     "options": {"max_side": 256, "local_map": "block", "max_keypoints": 1024, "p": 3.0,
                                 "weights": f"sha256:{digest}"}}
