"""A real worker process (``l2g-stream worker``) with test hooks, for fault tests that kill it at a chosen moment.

Usage: ``python -m tests.reliability.worker_harness worker --config FILE`` (any ``l2g-stream`` arguments).

Hooks, from the environment:

* ``L2G_TEST_MARKERS``: a file to which the process appends ``batch-start N`` / ``batch-end N`` around every
  extractor batch and ``snap-begin NAME`` / ``snap-end NAME`` around every snapshot file written, so a parent can
  SIGKILL it inside a batch or inside a snapshot write.
* ``L2G_TEST_SLEEP_PER_FRAME``: seconds the ``slowtoy`` extractor sleeps per frame (a slow model).
* ``L2G_TEST_SNAPSHOT_SLEEP``: seconds added to every snapshot file write (a slow disk).

``slowtoy`` is the ``toy`` extractor (same features, same snapshot compatibility rules) plus the sleep; its options
and therefore its snapshot tag do not depend on the sleep, so a restarted worker without hooks reads the snapshots.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from l2g_core import FrameFeatures
from plugins.base import RGBBatch
from plugins.registry import register
from plugins.toy import ToyExtractor


def mark(line: str) -> None:
    path = os.environ.get("L2G_TEST_MARKERS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{time.monotonic():.3f} {line}\n")


@register("slowtoy")
class SlowToyExtractor(ToyExtractor):
    """``toy`` features after sleeping ``L2G_TEST_SLEEP_PER_FRAME`` seconds per frame."""

    name = "slowtoy"
    batches = 0

    def _extract(self, frames: RGBBatch) -> list[FrameFeatures]:
        type(self).batches += 1
        n = type(self).batches
        mark(f"batch-start {n} {len(frames)}")
        time.sleep(float(os.environ.get("L2G_TEST_SLEEP_PER_FRAME", "0")) * len(frames))
        out = super()._extract(frames)
        mark(f"batch-end {n}")
        return out


class _TornFile:
    """Delegates to a file; the first write of a snapshot file stops half-way for ``delay`` seconds (a slow disk),
    so a kill in that window leaves a half-written temporary file."""

    def __init__(self, fh: Any, delay: float) -> None:
        self._fh, self._delay, self._paused = fh, delay, False

    def write(self, data: Any) -> int:
        data = bytes(data)
        if self._paused or self._delay <= 0 or len(data) < 2:
            return int(self._fh.write(data))
        self._paused = True
        half = len(data) // 2
        self._fh.write(data[:half])
        self._fh.flush()
        mark("snap-torn")
        time.sleep(self._delay)
        self._fh.write(data[half:])
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def _slow_snapshots() -> None:
    import l2g_core.index.persistence as persistence

    delay = float(os.environ.get("L2G_TEST_SNAPSHOT_SLEEP", "0"))
    original = persistence._atomic_write

    def atomic_write(path: Any, write: Any) -> None:
        mark(f"snap-begin {path.parent.name}/{path.name}")
        original(path, lambda fh: write(_TornFile(fh, delay)))
        mark(f"snap-end {path.parent.name}/{path.name}")

    persistence._atomic_write = atomic_write


def main() -> int:
    _slow_snapshots()
    from stream.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
