"""Extractors on real images from ``../shared/data`` (skipped when it is absent).

Floors sit well under the figures measured with ``bench/bench_extractors.py`` (graf1 -> graf3 share of
mutual-NN matches within 5 px of the ground-truth homography: xfeat 0.58, rootsift 0.59; box_in_scene RANSAC
inliers: xfeat 151, rootsift 87; landmark global mAP: xfeat 85, efficientnet-gem 96, rootsift 78), so they
catch a broken pipeline (wrong coordinates, wrong weights, wrong normalisation), not small drifts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bench_extractors import box_inliers, graf_consistency, landmark_map
from plugins import Extractor, get_extractor

pytestmark = [pytest.mark.shared_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def defaults() -> Iterator[dict[str, Extractor]]:
    built = {name: get_extractor(name, device="cpu") for name in ("xfeat", "efficientnet-gem", "rootsift")}
    yield built
    for extractor in built.values():
        extractor.close()


@pytest.mark.parametrize(("name", "min_share", "min_consistent"), [("xfeat", 0.4, 120), ("rootsift", 0.4, 150)])
def test_graf_homography(shared_data: Path, defaults: dict[str, Extractor], name: str, min_share: float,
                         min_consistent: int) -> None:
    fig = graf_consistency(defaults[name], shared_data)
    assert fig["share"] >= min_share and fig["consistent"] >= min_consistent, fig


@pytest.mark.parametrize(("name", "min_inliers"), [("xfeat", 60), ("rootsift", 40)])
def test_box_in_scene(shared_data: Path, defaults: dict[str, Extractor], name: str, min_inliers: int) -> None:
    fig = box_inliers(defaults[name], shared_data)
    assert fig["inliers"] >= min_inliers, fig


@pytest.mark.parametrize(("name", "min_map"), [("xfeat", 70.0), ("efficientnet-gem", 85.0), ("rootsift", 60.0)])
def test_landmark_retrieval(shared_data: Path, defaults: dict[str, Extractor], name: str, min_map: float) -> None:
    fig = landmark_map(defaults[name], shared_data, ("global",), max_side=480)
    assert fig["global"] >= min_map, fig
