"""Child process for the crash test: snapshot a growing index in a loop until killed.

Usage: ``python -m tests.reliability.snapshot_writer SNAPSHOT_DIR [RETENTION_SECONDS]``

It resumes from the snapshot when one exists (like a restarted worker), then repeats: add a batch of frames with
the next sequence numbers, apply retention, save with metadata ``{"next_sequence": n, "frames": len(index)}``.
It prints ``begin <n>`` before and ``saved <n>`` after each save (flushed), so the parent knows where a kill
landed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from l2g_core import FrameFeatures, FrameKey, IndexConfig, RollingIndex
from l2g_core.index.persistence import SnapshotFiles, load_index, save_index

LOCAL_DIM, GLOBAL_DIM, FEATURES, BATCH, FPS = 32, 16, 64, 10, 2.0
START = 1_700_000_000.0
CAMERAS = ("cam-a", "cam-b")


def config(retention: float | None) -> IndexConfig:
    return IndexConfig(local_dim=LOCAL_DIM, global_dim=GLOBAL_DIM, bucket_seconds=5.0, retention_seconds=retention,
                       max_features_per_frame=FEATURES, index_kind="flat")


def frame(sequence: int) -> tuple[FrameKey, FrameFeatures]:
    """The deterministic frame ``sequence`` (cameras alternate; the features depend only on the sequence)."""
    rng = np.random.default_rng(sequence)
    camera = CAMERAS[sequence % len(CAMERAS)]
    key = FrameKey(camera, START + sequence / FPS, sequence)
    feat = FrameFeatures.create(rng.standard_normal((FEATURES, LOCAL_DIM)), rng.random((FEATURES, 2)) * 100,
                                rng.random(FEATURES), rng.standard_normal(GLOBAL_DIM), (100, 100))
    return key, feat


def main() -> None:
    directory = Path(sys.argv[1])
    retention = float(sys.argv[2]) if len(sys.argv) > 2 else None
    files: SnapshotFiles | None = None
    if (directory / "manifest.json").exists():
        index, meta, files = load_index(directory)
        seq = int(meta["next_sequence"])
    else:
        index, seq = RollingIndex(config(retention)), 0
    print(f"start {seq}", flush=True)
    while True:
        batch = [frame(s) for s in range(seq, seq + BATCH)]
        index.add([k for k, _ in batch], [f for _, f in batch])
        seq += BATCH
        index.evict_expired()
        print(f"begin {seq}", flush=True)
        files = save_index(index, directory, {"next_sequence": seq, "frames": len(index)}, files)
        print(f"saved {seq}", flush=True)


if __name__ == "__main__":
    main()
