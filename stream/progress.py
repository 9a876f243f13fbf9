"""The worker's periodic progress line (every ``runtime.progress_interval_s``, INFO, logger ``stream.progress``)::

    progress: 1234 frames indexed (+120, 4.0 fps), lag 3 messages / 2.1 s, sampling 2 fps (shedding off),
    17 queries answered (+2)

Counts are this worker's since it started, with the change over the interval; the lag is the ingest loop's (see
:mod:`stream.lag`); sampling is the ingest rate the load shedder allows now (``all frames`` when
``ingest.sample_fps`` is 0 and nothing is shed).
"""

from __future__ import annotations

import logging
import time

from stream.lag import ConsumerLag
from stream.metrics import StreamMetrics
from stream.sampling import LoadShedder

__all__ = ["ProgressLog"]

LOG = logging.getLogger(__name__)


class ProgressLog:
    """Builds the progress line from the worker's metrics and ingest state.

    Args:
        metrics: the worker's metrics.
        shedder: the ingest loop's load shedder (None when ingest is disabled).
        lag: the ingest loop's lag tracker (None when ingest is disabled).
    """

    def __init__(self, metrics: StreamMetrics, shedder: LoadShedder | None = None,
                 lag: ConsumerLag | None = None) -> None:
        self.metrics = metrics
        self.shedder = shedder
        self.lag = lag
        self._last = (time.monotonic(), self._frames(), self._queries())

    def _frames(self) -> float:
        return self.metrics.value("l2g_frames_indexed_total")

    def _queries(self) -> float:
        return self.metrics.value("l2g_queries_total")

    def line(self, now: float | None = None) -> str:
        """The line for the interval since the previous call (or since construction)."""
        now = time.monotonic() if now is None else now
        frames, queries = self._frames(), self._queries()
        then, frames0, queries0 = self._last
        self._last = (now, frames, queries)
        fps = (frames - frames0) / (now - then) if now > then else 0.0
        parts = [f"{frames:.0f} frames indexed (+{frames - frames0:.0f}, {fps:.1f} fps)"]
        if self.lag is not None:
            seconds = "? s" if self.lag.seconds is None else f"{self.lag.seconds:.1f} s"
            parts.append(f"lag {self.lag.messages} messages / {seconds}")
        if self.shedder is not None:
            rate = self.shedder.rate(float("inf"))
            shedding = self.shedder.enabled and self.shedder.factor < 1.0
            if rate <= 0 or rate == float("inf"):  # ingest.sample_fps 0: every frame, or a share of them when shed
                sampling = f"{self.shedder.factor:.2g} of the frames" if shedding else "all frames"
            else:
                sampling = f"{rate:g} fps"
            parts.append(f"sampling {sampling} (shedding {'on' if shedding else 'off'})")
        parts.append(f"{queries:.0f} queries answered (+{queries - queries0:.0f})")
        return "progress: " + ", ".join(parts)

    def log(self) -> None:
        """Log :meth:`line` at INFO."""
        LOG.info("%s", self.line())
