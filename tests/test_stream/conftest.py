"""Fixtures of the stream tests: settings for the toy extractor, real H.264 chunks, an in-memory broker."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stream.envelope import OutboundMessage
from stream.messages import VideoChunk
from stream.settings import Settings
from stream.testing import MemoryBroker
from stream.video import SyntheticCamera, chunk_messages, encode_segments

START = 1_700_000_000.0
FPS = 10.0
WIDTH, HEIGHT = 320, 192


def make_settings(tmp: Path | None, **groups: dict[str, Any]) -> Settings:
    """Test settings: toy extractor, every decoded frame at 2 fps, no HTTP, snapshots under ``tmp``."""
    base: dict[str, dict[str, Any]] = {
        "extractor": {"name": "toy"},
        "ingest": {"sample_fps": 2.0, "batch_size": 4, "commit_interval_s": 3600.0, "poll_timeout_s": 0.01,
                   "max_poll_records": 4},
        "query": {"poll_timeout_s": 0.01, "default_timeout_s": 10.0, "k": 5},
        "index": {"snapshot_dir": str(tmp / "snapshots") if tmp is not None else None,
                  "retention_seconds": None, "retrieval": {"shortlist": 50, "rerank_k": 20, "g2l_shortlist": 20}},
        "http": {"enabled": False},
        "topics": {"partitions": 3},
        "runtime": {"worker_id": "test-worker", "progress": False},
    }
    for name, values in groups.items():
        base[name] = {**base.get(name, {}), **values}
    return Settings(**base)


@functools.lru_cache(maxsize=16)
def camera_chunks(camera: str, seed: int, frames: int = 40, segment_seconds: float = 2.0,
                  start: float = START) -> tuple[tuple[VideoChunk, OutboundMessage], ...]:
    """Real H.264 MPEG-TS chunks of a synthetic panning camera (cached: encoding costs ~20 ms a segment)."""
    cam = SyntheticCamera(seed, WIDTH, HEIGHT)
    segs = encode_segments(cam.frames(frames), FPS, segment_seconds=segment_seconds)
    return tuple(chunk_messages(camera, segs, start_time=start, max_bytes=900_000, source="test"))


@functools.lru_cache(maxsize=4)
def camera_frame(seed: int, i: int) -> np.ndarray:
    """Frame ``i`` of the synthetic camera ``seed`` (as encoded, before compression)."""
    return SyntheticCamera(seed, WIDTH, HEIGHT).frame(i)


def publish(broker: MemoryBroker, topic: str, items: Any) -> None:
    """Append encoded messages to ``topic``."""
    for _, out in items:
        broker.append(topic, out.key, out.value, out.headers)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker(partitions=3)
