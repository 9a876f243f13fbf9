"""Extracted features cached on disk between benchmark runs (keyed by extractor, its options and the pixels).

Tuning a retrieval parameter re-ranks the same features many times; extraction is the slow part. The cache lives in
``~/.cache/l2g-bench`` (or a folder given by the caller) and is only a speed-up: a miss extracts again.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np

from bench.common import progress
from l2g_core import FrameFeatures

__all__ = ["cached_features"]


DEFAULT_CACHE = Path.home() / ".cache" / "l2g-bench"


def _digest(extractor: object, images: list[np.ndarray]) -> str:
    h = hashlib.sha1()
    identity = getattr(extractor, "snapshot_identity", None)
    h.update(repr(identity() if callable(identity) else type(extractor).__name__).encode())
    for img in images:
        h.update(repr(img.shape).encode())
        h.update(hashlib.sha1(np.ascontiguousarray(img).tobytes()).digest())
    return h.hexdigest()[:20]


def cached_features(extractor: object, images: list[np.ndarray], label: str,
                    cache_dir: Path | None = DEFAULT_CACHE) -> list[FrameFeatures]:
    """``extractor.extract`` of every image, one at a time, read from ``cache_dir`` when the same run was done
    (``None``: no cache)."""
    if cache_dir is None:
        return _extract(extractor, images, label)
    path = cache_dir / f"{label}-{_digest(extractor, images)}.pkl"
    if path.exists():
        with path.open("rb") as fh:
            out: list[FrameFeatures] = pickle.load(fh)  # our own cache file
        return out
    out = _extract(extractor, images, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(out, fh)
    tmp.replace(path)
    return out


def _extract(extractor: object, images: list[np.ndarray], label: str) -> list[FrameFeatures]:
    progress(f"  extracting {len(images)} images ({label})")
    out: list[FrameFeatures] = []
    for img in images:
        out += extractor.extract(img[None])  # type: ignore[attr-defined]
    return out
