"""``efficientnet-gem``: global-only features, ImageNet weights, GeM pooling, PCA whitening."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from plugins import PluginError, WeightsError, get_extractor
from plugins._effnet import EfficientNetLite0
from plugins.efficientnet import Whitening, learn_whitening
from plugins.weights import EFFICIENTNET_LITE0, load_into, load_state_dict, resolve_weights
from tests.test_plugins.support import check_features, textured_image, warp_similarity


def test_output_contract(effnet: Any, scene: np.ndarray) -> None:
    (f,) = effnet.extract(scene[None])
    check_features(f, 1, 1280, scene.shape[:2])
    assert f.num_features == 0  # global only
    assert np.all(f.global_descriptor >= 0)  # GeM of a ReLU6 map


@pytest.mark.slow
def test_weights_load_and_classify_sanely() -> None:
    # The converted TF weights with TF padding: the classifier must be confident on *something* for a
    # natural-ish image and the trunk must give a 1280 x H/32 x W/32 map.
    net = EfficientNetLite0(with_classifier=True).eval()
    load_into(net, load_state_dict(resolve_weights(EFFICIENTNET_LITE0)), what="lite0")
    x = (torch.from_numpy(textured_image(3, 224, 224)).permute(2, 0, 1)[None].float() - 127.0) / 128.0
    with torch.inference_mode():
        assert net(x).shape == (1, 1280, 7, 7)
        probs = net.classify(x).softmax(-1)
    assert torch.isfinite(probs).all() and float(probs.max()) > 0.05


def test_similar_frames_are_closer(effnet: Any, scene: np.ndarray, other_scene: np.ndarray) -> None:
    warped, _ = warp_similarity(scene, angle=4.0, scale=0.97)
    a, b, c = (f.global_descriptor for f in effnet.extract(np.stack([scene, warped, other_scene])))
    assert float(a @ b) > float(a @ c) + 0.02


def test_batch_equals_single_frames(effnet: Any, scene: np.ndarray, other_scene: np.ndarray) -> None:
    batch = effnet.extract(np.stack([scene, other_scene]))
    for frame, f in zip((scene, other_scene), batch, strict=True):
        np.testing.assert_allclose(effnet.extract(frame[None])[0].global_descriptor, f.global_descriptor, atol=1e-5)


@pytest.mark.slow
class TestWhitening:
    def test_learn_whitening_whitens(self) -> None:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((500, 16)) @ rng.standard_normal((16, 16)) + 3.0
        w = learn_whitening(x, 8, shrinkage=0.0)
        y = (x - w.mean) @ w.projection.T
        np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(8), atol=1e-3)
        assert np.all(np.diff(w.eigenvalues) <= 0)
        assert w.apply(x.astype(np.float32)).shape == (500, 8)

    def test_rank_limits_dimension(self) -> None:
        x = np.random.default_rng(0).standard_normal((5, 32))
        assert learn_whitening(x).dim == 4
        with pytest.raises(PluginError, match="dimension must be in"):
            learn_whitening(x, 10)
        with pytest.raises(PluginError, match="n >= 2"):
            learn_whitening(x[:1])

    def test_fit_save_load_apply(self, effnet: Any, tmp_path: Path) -> None:
        frames = np.stack([textured_image(10 + i, 96, 128) for i in range(12)])
        path = effnet.fit_whitening(frames, tmp_path / "white", dimension=8, batch_size=5)
        assert path.suffix == ".npz" and path.is_file()
        loaded = Whitening.load(path)
        assert loaded.dim == 8 and loaded.meta["samples"] == 12 and loaded.meta["p"] == 3.0

        whitened = get_extractor("efficientnet-gem", device="cpu", max_side=256, whitening=path)
        assert whitened.global_dim == 8
        (f,) = whitened.extract(frames[:1])
        check_features(f, 1, 8, (96, 128))
        assert whitened.options()["whitening"] == str(path)

        reduced = get_extractor("efficientnet-gem", device="cpu", max_side=256, whitening=path, dimension=4)
        assert reduced.global_dim == 4 and reduced.extract(frames[:1])[0].global_descriptor.shape == (4,)
        with pytest.raises(PluginError, match="dimension must be in"):
            get_extractor("efficientnet-gem", whitening=path, dimension=9)
        with pytest.raises(PluginError, match=r"learned with p=3\.0"):
            get_extractor("efficientnet-gem", whitening=path, p=4.0)

    def test_fit_from_an_iterable_of_batches(self, effnet: Any, tmp_path: Path) -> None:
        batches = (np.stack([textured_image(20 + 3 * i + j, 64, 64) for j in range(3)]) for i in range(2))
        path = effnet.fit_whitening(batches, tmp_path / "w.npz")
        assert Whitening.load(path).dim == 5

    def test_bad_whitening_files(self, tmp_path: Path) -> None:
        with pytest.raises(WeightsError, match="does not exist"):
            get_extractor("efficientnet-gem", whitening=tmp_path / "none.npz")
        junk = tmp_path / "junk.npz"
        np.savez(junk, a=np.zeros(3))
        with pytest.raises(WeightsError, match="not a whitening file"):
            get_extractor("efficientnet-gem", whitening=junk)
        wrong = learn_whitening(np.random.default_rng(0).standard_normal((10, 16)), meta={"p": 3.0})
        with pytest.raises(WeightsError, match="16-d input"):
            get_extractor("efficientnet-gem", whitening=wrong.save(tmp_path / "wrong.npz"))
