"""The extractor as the ingest loop calls it: timed, checked, with its failures classified.

A batch the extractor rejects as bad input (``plugins.ExtractorInputError``) propagates as is; any other exception is
a crash (:func:`stream.failures.extractor_crash`). The time per frame is tracked (an exponential moving average) so
that the loop can predict how long the frames it has queued will take.
"""

from __future__ import annotations

import time

import numpy as np

from l2g_core import FrameFeatures
from plugins.errors import ExtractorInputError
from stream.failures import extractor_crash
from stream.metrics import StreamMetrics
from stream.ports import FeatureExtractor

__all__ = ["TimedExtractor"]


class TimedExtractor:
    """Runs ``extractor`` on batches and records the time it takes.

    Args:
        extractor: the feature extractor.
        name: its name (metric label, crash reports).
        metrics: where batch times and sizes are observed.
    """

    def __init__(self, extractor: FeatureExtractor, name: str, metrics: StreamMetrics) -> None:
        self.extractor = extractor
        self.name = name
        self.metrics = metrics
        self.seconds_per_frame = 0.0  # EWMA of extractor time per frame
        self.total_seconds = 0.0

    def extract(self, batch: np.ndarray) -> list[FrameFeatures]:
        """Features of a ``(B, H, W, 3)`` uint8 batch, one per frame, timed.

        Raises:
            ExtractorInputError: the extractor rejects the batch (bad input).
            ExtractorCrashError: anything else went wrong in the extractor.
        """
        t0 = time.perf_counter()
        try:
            feats = self.extract_untimed(batch)
        except ExtractorInputError:
            raise
        except Exception as exc:  # not the input: a bug in the extractor or its runtime (stream.failures)
            raise extractor_crash(exc, extractor=self.name, frames=len(batch), metrics=self.metrics) from exc
        dt = time.perf_counter() - t0
        self.total_seconds += dt
        self.metrics.extractor_batch_seconds.labels(self.name).observe(dt)
        self.metrics.extractor_batch_frames.labels(self.name).observe(len(batch))
        per_frame = dt / len(batch)
        self.seconds_per_frame = per_frame if self.seconds_per_frame == 0 else \
            0.8 * self.seconds_per_frame + 0.2 * per_frame
        return feats

    def extract_untimed(self, batch: np.ndarray) -> list[FrameFeatures]:
        """The extractor's answer for ``batch``, checked to hold one feature set per frame (exceptions pass)."""
        feats = self.extractor.extract(batch)
        if len(feats) != len(batch):
            raise RuntimeError(f"{len(feats)} feature sets returned for {len(batch)} frames")
        return feats

    def runtime_works(self, shape: tuple[int, ...]) -> bool:
        """Whether the extractor still handles a canary frame of ``shape`` (seeded noise): tells a broken runtime
        from input that trips a bug."""
        canary = np.random.default_rng(0).integers(0, 256, size=(1, *shape), dtype=np.uint8)
        try:
            self.extract_untimed(canary)
        except Exception:  # any failure of the canary means the runtime is broken
            return False
        return True
