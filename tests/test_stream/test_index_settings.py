"""The index's segment span and re-rank features are worker settings: from the environment to the ``IndexConfig``
a worker's index is built with, and into the snapshot tag where the stored layout depends on them."""

from __future__ import annotations

import numpy as np
import pytest

from l2g_core import FrameFeatures, FrameKey, IndexConfig
from stream.errors import ConfigurationError
from stream.ports import Partition
from stream.settings import Settings
from stream.store import PartitionedIndex, index_tag

PART = Partition("l2g.video", 0)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("L2G_CONFIG_FILE", raising=False)
    for name in ("SEGMENT_SECONDS", "RERANK_FEATURES", "RERANK_DTYPE", "BUCKET_SECONDS"):
        monkeypatch.delenv(f"L2G_INDEX__{name}", raising=False)


def _store(settings: Settings) -> PartitionedIndex:
    return PartitionedIndex.from_settings(settings.index, extractor="toy", options={}, local_dim=8, global_dim=4)


def _frame(n: int, rng: np.random.Generator) -> FrameFeatures:
    desc = rng.standard_normal((n, 8)).astype(np.float32)
    glob = rng.standard_normal(4).astype(np.float32)
    return FrameFeatures(desc / np.linalg.norm(desc, axis=1, keepdims=True),
                         rng.uniform(0, 100, (n, 2)).astype(np.float32), rng.uniform(0, 1, n).astype(np.float32),
                         glob / np.linalg.norm(glob))


def test_defaults_are_the_library_defaults() -> None:
    config = _store(Settings.load()).config
    default = IndexConfig(local_dim=8, global_dim=4)
    assert (config.segment_seconds, config.rerank_features, config.rerank_dtype,
            config.max_features_per_frame) == (default.segment_seconds, default.rerank_features,
                                               default.rerank_dtype, default.max_features_per_frame)


def test_the_environment_reaches_the_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("L2G_INDEX__SEGMENT_SECONDS", "3600")
    monkeypatch.setenv("L2G_INDEX__RERANK_FEATURES", "16")
    monkeypatch.setenv("L2G_INDEX__RERANK_DTYPE", "float16")
    store = _store(Settings.load())
    assert (store.config.segment_seconds, store.config.rerank_features, store.config.rerank_dtype) == (
        3600.0, 16, "float16")
    store.open(PART)
    store.add(PART, [FrameKey("cam", 1.7e9, 0)], [_frame(40, np.random.default_rng(0))])
    (shard,) = store.get(PART).shards()
    kept = shard.rerank_descriptors[0]
    assert kept.shape == (16, 8) and kept.dtype == np.float16  # the 16 strongest, stored as float16
    assert shard.rerank_descriptors.codes[0].dtype == np.float16


def test_the_snapshot_tag_follows_the_segment_span_only() -> None:
    base = IndexConfig(local_dim=8, global_dim=4)
    other_span = IndexConfig(local_dim=8, global_dim=4, segment_seconds=3600.0)
    fewer_rerank = IndexConfig(local_dim=8, global_dim=4, rerank_features=16, rerank_dtype="float16")
    assert index_tag("toy", {}, base) != index_tag("toy", {}, other_span)  # another stored layout
    assert index_tag("toy", {}, base) == index_tag("toy", {}, fewer_rerank)  # old frames stay valid


@pytest.mark.parametrize(("name", "value", "message"), [
    ("SEGMENT_SECONDS", "0", r"index\.segment_seconds"),
    ("RERANK_FEATURES", "0", r"index\.rerank_features"),
    ("RERANK_DTYPE", "int4", r"index\.rerank_dtype"),
])
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(f"L2G_INDEX__{name}", value)
    with pytest.raises(ConfigurationError, match=message):
        Settings.load()


def test_a_segment_shorter_than_a_bucket_is_refused_when_the_index_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("L2G_INDEX__SEGMENT_SECONDS", "30")  # buckets are 60 s
    with pytest.raises(ConfigurationError, match=r"segment_seconds 30\.0 is shorter than bucket_seconds 60\.0"):
        _store(Settings.load())
