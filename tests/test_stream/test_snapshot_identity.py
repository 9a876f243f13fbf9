"""Snapshots are tagged with the extractor's identity, weights included: after the weights file changes, a worker never
loads the snapshots built with the old one (they stay under the old tag); it rebuilds its index from the topic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest

import plugins.registry as registry
from l2g_core import FrameKey
from plugins import get_extractor
from plugins.options import WeightsFile
from plugins.toy import ToyExtractor, ToyOptions
from plugins.weights import XFEAT, resolve_weights
from stream.ports import FeatureExtractor, Partition
from stream.settings import Settings
from stream.store import PartitionedIndex, index_tag
from stream.testing import MemoryBroker, MemoryConnector
from stream.worker import Worker

from .conftest import START, camera_chunks, make_settings, publish
from .helpers import ingested, run_until

pytestmark = pytest.mark.timeout(120)

FRAMES = 8  # camera_chunks("cam-a", 1) sampled at 2 fps


class WeightedToyOptions(ToyOptions):
    """``toy`` options plus a weights file (like a third-party extractor with a checkpoint)."""

    weights: Annotated[Path, WeightsFile()]


class WeightedToy(ToyExtractor):
    """``toy`` features; setup reads the weights file, as a real extractor loads its checkpoint."""

    name = "weighted-toy"
    Options = WeightedToyOptions
    opts: WeightedToyOptions

    def _setup(self) -> None:
        super()._setup()
        self.loaded = self.opts.weights.read_bytes()


@pytest.fixture
def weighted_toy(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(registry._REGISTERED, "weighted-toy", WeightedToy)
    yield


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def open_worker(settings: Settings, broker: MemoryBroker) -> Worker:
    """A worker opened over ``broker``, stepped until its partitions are assigned (snapshots loaded)."""
    worker = Worker(settings, connector=MemoryConnector(broker)).open()
    assert worker.ingest is not None and worker.index is not None
    run_until([worker], lambda: worker.ready)
    return worker


def test_the_worker_never_loads_snapshots_of_other_weights(tmp_path: Path, weighted_toy: None) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(bytes(range(256)) * 64)
    settings = make_settings(tmp_path, extractor={"name": "weighted-toy", "options": {"weights": str(weights)}},
                             query={"enabled": False})
    broker = MemoryBroker(3)
    publish(broker, "l2g.video", camera_chunks("cam-a", 1))

    first = open_worker(settings, broker)
    run_until([first], ingested(broker, [first], FRAMES))
    old_root = first.index.snapshot_root if first.index is not None else None
    first.stop()  # final checkpoint: snapshots written, offsets committed
    assert old_root is not None and list(old_root.glob("l2g.video-*"))

    same = open_worker(settings, broker)  # same weights: the snapshots are loaded
    assert same.index is not None and same.index.snapshot_root == old_root and len(same.index) == FRAMES
    same.stop()

    flip_one_byte(weights)  # same path, same size, other bytes
    changed = open_worker(settings, broker)
    try:
        assert changed.index is not None
        assert changed.index.snapshot_root is not None and changed.index.snapshot_root != old_root
        assert list(old_root.glob("l2g.video-*"))  # the old weights' snapshots are left alone
        # and not loaded: the group's committed offsets covered them only, so the new weights rebuild from the topic
        run_until([changed], ingested(broker, [changed], FRAMES))
        assert changed.ingest is not None and changed.ingest.stats.frames_indexed == len(changed.index) == FRAMES
    finally:
        changed.stop()


def test_moving_the_weights_file_keeps_the_snapshots(tmp_path: Path, weighted_toy: None) -> None:
    weights = tmp_path / "a" / "weights.bin"
    weights.parent.mkdir()
    weights.write_bytes(b"checkpoint")
    settings = make_settings(tmp_path, extractor={"name": "weighted-toy", "options": {"weights": str(weights)}},
                             query={"enabled": False})
    broker = MemoryBroker(3)
    publish(broker, "l2g.video", camera_chunks("cam-a", 1))
    first = open_worker(settings, broker)
    run_until([first], ingested(broker, [first], FRAMES))
    first.stop()

    moved = tmp_path / "b" / "renamed.bin"
    moved.parent.mkdir()
    weights.rename(moved)
    again = open_worker(settings.with_overrides(extractor={"options": {"weights": str(moved)}}), broker)
    try:
        assert again.index is not None and len(again.index) == FRAMES  # the bytes count, not the path
    finally:
        again.stop()


def test_xfeat_weights_change_the_snapshot_tag(tmp_path: Path) -> None:
    """The same at the store level with a copy of the real ``xfeat.pt`` (no model is loaded: the identity only
    hashes the file)."""
    weights = tmp_path / "xfeat.pt"
    weights.write_bytes(resolve_weights(XFEAT).read_bytes())
    settings = make_settings(tmp_path, extractor={"name": "xfeat", "options": {"weights": str(weights)}})
    part = Partition("l2g.video", 0)

    def store(extractor: FeatureExtractor) -> PartitionedIndex:
        return PartitionedIndex.from_settings(settings.index, extractor=extractor.name,
                                              options=extractor.snapshot_identity(),
                                              local_dim=extractor.local_dim, global_dim=extractor.global_dim)

    xfeat = get_extractor("xfeat", **settings.extractor.options)
    old = store(xfeat)
    old.open(part)
    frames = np.stack([np.full((64, 64, 3), 40 * i, np.uint8) + np.eye(64, dtype=np.uint8)[..., None] * 200
                       for i in range(1, 4)])
    features = get_extractor("toy").extract(frames)  # 64-d locals and globals, as xfeat's
    old.add(part, [FrameKey("cam-a", START + i, i) for i in range(len(features))], features)
    old.snapshot({part: 3}, {"extractor": "xfeat"})
    assert old.snapshot_root is not None and (old.snapshot_root / "l2g.video-0").exists()

    reopened = store(get_extractor("xfeat", **settings.extractor.options, device="cpu"))  # device: same tag
    assert reopened.snapshot_root == old.snapshot_root
    assert reopened.open(part) == 3 and len(reopened) == len(features)

    flip_one_byte(weights)
    changed = store(get_extractor("xfeat", **settings.extractor.options))
    assert changed.snapshot_root != old.snapshot_root
    assert changed.open(part) is None and len(changed) == 0  # the old snapshot is not loaded
    config = changed.config
    assert index_tag("xfeat", xfeat.snapshot_identity(), config) == old.snapshot_root.name
