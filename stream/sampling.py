"""Frame sampling: a deterministic time-slot rule, and a load shedder that lowers the rate when behind.

A frame at event time ``t`` is kept at rate ``r`` when it is the first frame of its ``1/r``-second slot:
``floor(t·r) > floor((t - 1/fps)·r)``, with ``fps`` the stream's nominal frame rate. The rule looks only at the
frame's own timestamp, so a replayed chunk (after a crash or rebalance) selects exactly the same frames, which
the index then recognises as duplicates.
"""

from __future__ import annotations

import math
import threading

__all__ = ["LoadShedder", "keep_frame"]


def keep_frame(t: float, fps: float, rate: float) -> bool:
    """Whether the frame at event time ``t`` (seconds) is kept at ``rate`` frames/s.

    Args:
        t: frame time (Unix seconds).
        fps: nominal frame rate of the stream (the previous frame is assumed ``1/fps`` earlier).
        rate: sampling rate; ``0`` (or a rate at least ``fps``) keeps every frame.
    """
    if rate <= 0.0 or rate >= fps:
        return True
    return math.floor(t * rate) > math.floor((t - 1.0 / fps) * rate)


class LoadShedder:
    """Chooses the sampling rate: ``base_fps`` normally, halved (down to ``min_fps``) while the consumer lags.

    Never blocks: when ingest cannot keep up, frames are skipped (counted as ``load_shed``) rather than
    letting polls stall until the group evicts the worker. Thread-safe.

    Args:
        base_fps: the configured rate (0 = every frame; shedding then starts from the stream's fps).
        min_fps: floor of the rate.
        lag_high, lag_low: consumer lag (messages) above which the rate halves / below which it recovers.
        enabled: False pins the rate to ``base_fps``.
    """

    def __init__(self, base_fps: float, min_fps: float, lag_high: int, lag_low: int, *, enabled: bool = True) -> None:
        self.base_fps = base_fps
        self.min_fps = min_fps
        self.lag_high = lag_high
        self.lag_low = lag_low
        self.enabled = enabled
        self._factor = 1.0  # share of the base rate currently kept
        self._lock = threading.Lock()

    @property
    def factor(self) -> float:
        """Current share of the base rate (1.0 = not shedding)."""
        with self._lock:
            return self._factor

    def rate(self, stream_fps: float, *, over_budget: bool = False) -> float:
        """The rate to sample a stream of nominal ``stream_fps`` at now.

        Args:
            stream_fps: the chunk's nominal frame rate.
            over_budget: the current poll has used its time budget; sample at ``min_fps`` for the rest of it.
        """
        base = self.base_fps if self.base_fps > 0 else stream_fps
        base = min(base, stream_fps)
        if not self.enabled:
            return self.base_fps
        if over_budget:
            return min(base, self.min_fps)
        with self._lock:
            factor = self._factor
        if factor >= 1.0:
            return self.base_fps
        return max(self.min_fps, base * factor)

    def update(self, lag: int) -> float:
        """Adjust to the current consumer lag (messages summed over partitions); returns the new factor."""
        with self._lock:
            if not self.enabled:
                self._factor = 1.0
            elif lag > self.lag_high:
                self._factor = max(self._factor / 2.0, 1e-3)
            elif lag <= self.lag_low:
                self._factor = min(1.0, self._factor * 1.5)
            return self._factor
