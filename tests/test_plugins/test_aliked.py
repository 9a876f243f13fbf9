"""``aliked``: kornia's pure-torch ALIKED with a local weights file (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plugins import PluginError, WeightsError, get_extractor
from plugins.aliked import AlikedExtractor
from tests.test_plugins.support import check_features, consistent_share, textured_image, warp_similarity


def test_weights_are_required() -> None:
    with pytest.raises(WeightsError, match="needs weights="):
        get_extractor("aliked")


def test_model_from_file_name(tmp_path: Path) -> None:
    extractor = get_extractor("aliked", weights=tmp_path / "aliked-t16.pth")
    assert isinstance(extractor, AlikedExtractor)
    assert (extractor.opts.model, extractor.local_dim, extractor.global_dim) == ("aliked-t16", 64, 64)
    assert get_extractor("aliked", weights=tmp_path / "w.pth", model="aliked-n32").local_dim == 128
    with pytest.raises(PluginError, match="cannot tell the ALIKED model"):
        get_extractor("aliked", weights=tmp_path / "weights.pth")
    with pytest.raises(PluginError, match="model must be one of"):
        get_extractor("aliked", weights=tmp_path / "w.pth", model="aliked-huge")


def test_missing_file_fails_at_setup(tmp_path: Path) -> None:
    extractor = get_extractor("aliked", weights=tmp_path / "aliked-n16.pth")
    with pytest.raises(WeightsError, match="do not exist"):
        extractor.extract(np.zeros((1, 64, 64, 3), np.uint8))


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_weights_on_a_warped_copy(shared_data: Path) -> None:
    weights = shared_data / "weights" / "aliked-n16.pth"
    if not weights.is_file():
        pytest.skip("aliked-n16.pth not in ../shared/data/weights")
    extractor = get_extractor("aliked", weights=weights, device="cpu", max_keypoints=400)
    scene = textured_image(1)
    warped, h = warp_similarity(scene)
    a, b = extractor.extract(np.stack([scene, warped]))
    check_features(a, 128, 128, scene.shape[:2])
    assert a.num_features > 100 and np.all(np.diff(a.scores) <= 0)
    share, good = consistent_share(a, b, h, tol=5.0)
    assert share > 0.5 and good > 50
