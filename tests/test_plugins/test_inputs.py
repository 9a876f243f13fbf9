"""Malformed batches fail with a clear :class:`ExtractorInputError`, before any weights are loaded."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from plugins import ExtractorInputError, get_extractor

NAMES = ["xfeat", "efficientnet-gem", "rootsift", "aliked", "toy"]
# Weights that do not exist: validation must reject a bad batch before any weights are read.
MISSING = {"xfeat": "/nonexistent.pt", "efficientnet-gem": "/nonexistent.pth", "aliked": "/nonexistent/aliked-n16.pth"}


def _bad_batches() -> list[tuple[str, Any, str]]:
    ok = np.zeros((1, 64, 64, 3), np.uint8)
    return [
        ("grayscale", np.zeros((1, 64, 64, 1), np.uint8), "grayscale"),
        ("rgba", np.zeros((1, 64, 64, 4), np.uint8), "4-channel"),
        ("single frame", ok[0], "frames\\[None\\]"),
        ("2-d", np.zeros((64, 64), np.uint8), "batch"),
        ("empty", np.zeros((0, 64, 64, 3), np.uint8), "empty batch"),
        ("float", ok.astype(np.float32), "uint8"),
        ("uint16", ok.astype(np.uint16), "uint8"),
        ("list", [ok[0]], "numpy array"),
        ("tiny", np.zeros((1, 16, 64, 3), np.uint8), "too small"),
        ("huge", np.zeros((1, 32, 9000, 3), np.uint8), "too large"),
    ]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("case", "frames", "match"), _bad_batches(), ids=[c[0] for c in _bad_batches()])
def test_bad_batch(name: str, case: str, frames: Any, match: str) -> None:
    extractor = get_extractor(name, weights=MISSING[name]) if name in MISSING else get_extractor(name)
    with pytest.raises(ExtractorInputError, match=match):
        extractor.extract(frames)
    # Validation comes first: a bad batch never triggers weight loading (which would fail here).
    assert not extractor._ready


def test_non_contiguous_batch_is_accepted(xfeat: Any, scene: np.ndarray) -> None:
    flipped = scene[None, :, ::-1]
    assert not flipped.flags.c_contiguous
    (f,) = xfeat.extract(flipped)
    assert f.num_features > 0


def test_read_only_batch_is_accepted(xfeat: Any, effnet: Any, rootsift: Any, scene: np.ndarray) -> None:
    frozen = scene[None].copy()
    frozen.flags.writeable = False
    for extractor in (xfeat, effnet, rootsift):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            (f,) = extractor.extract(frozen)
        assert np.isfinite(f.global_descriptor).all()


@pytest.mark.parametrize("shape", [(32, 32), (33, 47), (250, 41)])
def test_small_and_odd_sizes(xfeat: Any, effnet: Any, rootsift: Any, shape: tuple[int, int]) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    for extractor in (xfeat, effnet, rootsift):
        out = extractor.extract(frames)
        assert len(out) == 2
        for f in out:
            assert f.image_size == shape
            if f.num_features:
                assert f.keypoints[:, 0].max() <= shape[1] - 1 and f.keypoints[:, 1].max() <= shape[0] - 1


@pytest.mark.parametrize("value", [0, 255])
def test_flat_frames(xfeat: Any, effnet: Any, rootsift: Any, value: int) -> None:
    frames = np.full((1, 64, 96, 3), value, np.uint8)
    for extractor in (xfeat, effnet, rootsift):
        (f,) = extractor.extract(frames)
        assert np.isfinite(f.global_descriptor).all()
        assert abs(float(np.linalg.norm(f.global_descriptor)) - 1.0) < 1e-4
