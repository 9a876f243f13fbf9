"""Extractors built once per session (weights load in about a second each) and shared synthetic images."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from plugins import Extractor, get_extractor
from tests.test_plugins.support import textured_image


def _built(name: str, **options: object) -> Iterator[Extractor]:
    extractor = get_extractor(name, **options)
    extractor.setup()
    yield extractor
    extractor.close()


@pytest.fixture(scope="session")
def xfeat() -> Iterator[Extractor]:
    yield from _built("xfeat", device="cpu", max_keypoints=512)


@pytest.fixture(scope="session")
def effnet() -> Iterator[Extractor]:
    yield from _built("efficientnet-gem", device="cpu", max_side=256)


@pytest.fixture(scope="session")
def rootsift() -> Iterator[Extractor]:
    yield from _built("rootsift", max_keypoints=500)


@pytest.fixture(scope="session")
def scene() -> np.ndarray:
    return textured_image(1)


@pytest.fixture(scope="session")
def other_scene() -> np.ndarray:
    return textured_image(2)
