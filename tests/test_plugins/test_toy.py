"""``toy``: deterministic and weight-free."""

from __future__ import annotations

import numpy as np

from plugins import get_extractor
from tests.test_plugins.support import check_features, textured_image


def test_deterministic_across_instances() -> None:
    frames = np.stack([textured_image(1, 96, 128), textured_image(2, 96, 128)])
    a, b = get_extractor("toy").extract(frames), get_extractor("toy-test").extract(frames)
    for fa, fb in zip(a, b, strict=True):
        check_features(fa, 64, 64, (96, 128))
        np.testing.assert_array_equal(fa.descriptors[: fb.num_features], fb.descriptors)
        np.testing.assert_array_equal(fa.global_descriptor, fb.global_descriptor)


def test_self_is_nearest() -> None:
    frames = np.stack([textured_image(i, 96, 128) for i in range(4)])
    g = np.stack([f.global_descriptor for f in get_extractor("toy").extract(frames)])
    assert np.array_equal(np.argmax(g @ g.T, axis=1), np.arange(4))
