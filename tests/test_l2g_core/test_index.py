"""RollingIndex: dedup, retention, filters, concurrent search, compression and snapshots."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from l2g_core import (
    FrameFeatures,
    FrameKey,
    IndexConfig,
    RetrievalConfig,
    Retriever,
    RollingIndex,
    ShapeError,
    SnapshotError,
)
from l2g_core.datasets import make_synthetic_video
from l2g_core.index.persistence import load_index, save_index
from l2g_core.index.rolling import AddReport
from l2g_core.index.shard import Shard, dequantize_int8, quantize_int8


def _video(frames: int = 80, seed: int = 0, fps: float = 2.0):
    return make_synthetic_video(num_frames=frames, num_scenes=8, features_per_frame=48, local_dim=32,
                                global_dim=16, num_queries=5, fps=fps, seed=seed)


def _config(**kw: object) -> IndexConfig:
    base: dict[str, object] = {"local_dim": 32, "global_dim": 16, "bucket_seconds": 10.0, "retention_seconds": None}
    base.update(kw)
    return IndexConfig(**base)  # type: ignore[arg-type]


def _ranking(index: RollingIndex, query: FrameFeatures, mode: str = "local") -> list[tuple[FrameKey, float]]:
    res = Retriever(index, RetrievalConfig(rerank_k=20, shortlist=40)).search(query, mode=mode, k=20)
    return [(h.key, round(h.score, 5)) for h in res.hits]


def test_duplicates_are_skipped() -> None:
    v = _video()
    index = RollingIndex(_config())
    assert index.add(v.keys[:50], v.features[:50]).added == 50
    assert index.add(v.keys[40:], v.features[40:]).added == 30  # 10 overlap
    assert len(index) == 80
    assert index.stats().features == sum(f.num_features for f in v.features)
    assert index.contains(v.keys[0]) and not index.contains(FrameKey("cam-0", 0.0, 10_000))


def test_mismatched_batch_is_rejected_without_partial_add() -> None:
    v = _video()
    index = RollingIndex(_config())
    bad = FrameFeatures.create(np.ones((3, 8)), np.zeros((3, 2)), np.ones(3), np.ones(16))
    with pytest.raises(ShapeError, match="dimension 8"):
        index.add(v.keys[:2], [v.features[0], bad])
    with pytest.raises(ShapeError, match="keys but"):
        index.add(v.keys[:2], v.features[:1])
    assert len(index) == 0


def test_retention_drops_whole_buckets_and_their_memory() -> None:
    v = _video(frames=120, fps=2.0)  # 60 s of video
    index = RollingIndex(_config(retention_seconds=20.0))
    index.add(v.keys, v.features)
    stats = index.stats()
    newest = v.keys[-1].timestamp
    assert stats.oldest_timestamp is not None and stats.oldest_timestamp >= newest - 30.0
    assert all(s.time_range[1] > newest - 20.0 for s in index.shards())
    assert stats.frames == len(index) < 120
    late = FrameKey("cam-0", v.keys[0].timestamp, 99_999)  # far behind the horizon
    assert index.add([late], [v.features[0]]).added == 0
    before = index.stats().nbytes
    assert index.evict_before(newest + 100) == stats.frames
    assert index.stats().frames == 0 and index.stats().nbytes < before and index.stats().features == 0


def test_camera_and_time_filters() -> None:
    v = _video()
    index = RollingIndex(_config())
    index.add(v.keys, v.features)
    retriever = Retriever(index)
    query = v.queries[0]
    res = retriever.search(query, mode="local", k=50, cameras={"cam-1"})
    assert res.hits and all(h.key.camera_id == "cam-1" for h in res.hits)
    t0 = v.keys[10].timestamp
    res = retriever.search(query, mode="global", k=50, time_range=(t0, t0 + 5.0))
    assert res.hits and all(t0 <= h.key.timestamp <= t0 + 5.0 for h in res.hits)
    assert res.coverage.frames_total < len(index)


def test_search_while_appending_is_safe() -> None:
    v = _video(frames=200)
    index = RollingIndex(_config())
    index.add(v.keys[:20], v.features[:20])
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(20, 200, 5):
                index.add(v.keys[i : i + 5], v.features[i : i + 5])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    results = [Retriever(index).search(v.queries[i % 5], mode="local", k=5) for i in range(30)]
    thread.join()
    assert not errors
    assert len(index) == 200 and all(r.hits for r in results)


def test_snapshot_round_trip_gives_identical_answers(tmp_path: Path) -> None:
    v = _video()
    index = RollingIndex(_config())
    index.add(v.keys, v.features)
    save_index(index, tmp_path / "snap", {"offsets": {"video:0": 41}})
    loaded, meta, _ = load_index(tmp_path / "snap")
    assert meta == {"offsets": {"video:0": 41}}
    assert len(loaded) == len(index) and loaded.stats().features == index.stats().features
    for q in v.queries:
        for mode in ("local", "global", "l2g"):
            assert _ranking(loaded, q, mode) == _ranking(index, q, mode)
    # duplicates are still recognised after a restart
    assert loaded.add(v.keys[:5], v.features[:5]).added == 0


def test_snapshot_is_incremental_and_cleans_up(tmp_path: Path) -> None:
    v = _video(frames=120)
    index = RollingIndex(_config())
    index.add(v.keys[:60], v.features[:60])
    snap = tmp_path / "snap"
    files = save_index(index, snap)
    first = {p.name: p.stat().st_mtime_ns for p in snap.glob("shard-*")}
    index.add(v.keys[60:], v.features[60:])
    save_index(index, snap, previous=files)
    second = {p.name: p.stat().st_mtime_ns for p in snap.glob("shard-*")}
    unchanged = [n for n in first if n in second]
    assert unchanged and all(first[n] == second[n] for n in unchanged)  # untouched shards not rewritten
    manifest = json.loads((snap / "manifest.json").read_text())
    assert {e["file"] for e in manifest["shards"]} == set(second)  # no orphan files
    assert len(load_index(snap)[0]) == 120


def test_torn_write_leaves_previous_snapshot_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = _video()
    index = RollingIndex(_config())
    index.add(v.keys[:40], v.features[:40])
    snap = tmp_path / "snap"
    save_index(index, snap, {"n": 40})
    index.add(v.keys[40:], v.features[40:])

    import l2g_core.index.persistence as persistence

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persistence.np, "savez", disk_full)
    with pytest.raises(SnapshotError, match="No space left"):
        save_index(index, snap, {"n": 80})
    monkeypatch.undo()
    loaded, meta, _ = load_index(snap)
    assert meta == {"n": 40} and len(loaded) == 40
    assert not list(snap.glob(".tmp-*"))


def test_corrupt_or_missing_snapshot_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="no readable snapshot manifest"):
        load_index(tmp_path / "nothing")
    v = _video()
    index = RollingIndex(_config())
    index.add(v.keys, v.features)
    save_index(index, tmp_path / "snap")
    next((tmp_path / "snap").glob("shard-*")).write_bytes(b"garbage")
    with pytest.raises(SnapshotError, match="corrupt snapshot"):
        load_index(tmp_path / "snap")


def test_auto_compression_to_ivfpq_keeps_answers_close(tmp_path: Path) -> None:
    v = make_synthetic_video(num_frames=300, num_scenes=20, features_per_frame=64, local_dim=32, global_dim=16,
                             num_queries=8, seed=3)
    flat = RollingIndex(_config(index_kind="flat"))
    flat.add(v.keys, v.features)
    small = _config(index_kind="auto", compress_after=8000, train_size=8000, ivf_lists=64, pq_bytes=8, nprobe=16)
    compressed = RollingIndex(small)
    compressed.add(v.keys, v.features)
    assert compressed.stats().kind == "ivfpq" and all(s.kind == "ivfpq" for s in compressed.shards())
    assert compressed.stats().nbytes < flat.stats().nbytes
    agree = [
        _ranking(flat, q)[0][0] == _ranking(compressed, q)[0][0] for q in v.queries
    ]
    assert sum(agree) >= 6  # top-1 mostly unchanged under 8-byte PQ
    save_index(compressed, tmp_path / "snap")
    loaded, _, _ = load_index(tmp_path / "snap")
    assert loaded.stats().kind == "ivfpq"
    assert [_ranking(loaded, q) for q in v.queries] == [_ranking(compressed, q) for q in v.queries]


def test_add_reports_what_it_added_skipped_and_evicted() -> None:
    v = _video(frames=120, fps=2.0)  # two frames a second, cameras alternating
    index = RollingIndex(_config(retention_seconds=20.0))
    assert index.add(v.keys[:40], v.features[:40]) == AddReport(added=40)  # 20 s: nothing is old enough to drop
    late = FrameKey("cam-0", v.keys[0].timestamp - 100.0, 99_999)  # behind the retention horizon
    keys = [*v.keys[30:80], v.keys[45], late]  # 30..39 are indexed already; 45 twice in the batch
    feats = [*v.features[30:80], v.features[45], v.features[0]]
    report = index.add(keys, feats)
    # the newest frame is now at +39.5 s: the bucket [0, 10) s ends before the horizon (+19.5 s) and is dropped
    assert report == AddReport(added=40, duplicates=11, too_old=1, evicted=20)
    assert report.added + report.duplicates + report.too_old == len(keys)
    assert len(index) == 40 + 40 - 20
    assert index.add([], []) == AddReport()


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_shard_round_trips_through_its_arrays(kind: str) -> None:
    v = make_synthetic_video(num_frames=300, num_scenes=20, features_per_frame=64, local_dim=32, global_dim=16,
                             num_queries=3, seed=3)
    config = _config(index_kind=kind, train_size=2000, ivf_lists=16, pq_bytes=8, nprobe=16)
    index = RollingIndex(config)
    index.add(v.keys, v.features)
    assert all(s.kind == kind for s in index.shards())
    queries = np.ascontiguousarray(v.queries[0].descriptors, dtype=np.float32)
    for shard in index.shards():
        arrays = shard.to_arrays()
        assert ("descriptors" in arrays) == (kind == "flat")  # a compressed shard's codes are in its segment
        rebuilt = Shard.from_arrays(shard.id, config, arrays, version=shard.version)
        assert (rebuilt.id, rebuilt.version, rebuilt.kind, len(rebuilt)) == (shard.id, shard.version, kind, len(shard))
        assert rebuilt.keys == shard.keys and rebuilt.image_sizes == shard.image_sizes
        assert rebuilt.num_features == shard.num_features
        np.testing.assert_array_equal(rebuilt.globals, shard.globals)
        np.testing.assert_array_equal(rebuilt.timestamps, shard.timestamps)
        assert rebuilt.span == shard.span == (float(min(shard.timestamps)), float(max(shard.timestamps)))
        assert rebuilt.segment_id == shard.segment_id
        np.testing.assert_array_equal(rebuilt.feature_frame, shard.feature_frame)
        for a, b in zip(rebuilt.rerank_descriptors, shard.rerank_descriptors, strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(rebuilt.rerank_keypoints, shard.rerank_keypoints, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(rebuilt.feature_counts, shard.feature_counts)
        if kind == "flat":
            for got, want in zip(rebuilt.search(queries, 5), shard.search(queries, 5), strict=True):
                np.testing.assert_array_equal(got, want)
        again = rebuilt.to_arrays()
        assert again.keys() == arrays.keys()
        for name in arrays:
            np.testing.assert_array_equal(again[name], arrays[name], err_msg=name)


def test_a_shards_time_span_follows_its_frames() -> None:
    """``Shard.span`` (the index's ``indexed_from`` / ``indexed_to``) is cached and renewed by every add."""
    v = make_synthetic_video(num_frames=40, num_scenes=4, features_per_frame=8, local_dim=32, global_dim=16, seed=4)
    keys, feats = zip(*[(k, f) for k, f in zip(v.keys, v.features, strict=True) if k.camera_id == "cam-0"],
                      strict=True)
    index = RollingIndex(_config(bucket_seconds=3600.0))
    index.add(list(keys[:10]), list(feats[:10]))
    (shard,) = index.shards()
    assert shard.span == (keys[0].timestamp, keys[9].timestamp)
    index.add(list(keys[10:]), list(feats[10:]))
    assert len(shard) == len(keys) > 10
    assert shard.span == (keys[0].timestamp, keys[-1].timestamp)
    assert Shard(shard.id, shard.config, None).span is None


def test_an_index_is_built_from_restored_shards(tmp_path: Path) -> None:
    v = _video()
    index = RollingIndex(_config())
    index.add(v.keys, v.features)
    restored = RollingIndex.from_shards(index.config, [
        Shard.from_arrays(s.id, index.config, s.to_arrays(), version=s.version) for s in index.shards()])
    assert len(restored) == len(index) and restored.stats() == index.stats()
    assert restored.newest_timestamp == index.newest_timestamp
    assert restored.add(v.keys[:5], v.features[:5]) == AddReport(duplicates=5)
    assert [_ranking(restored, q) for q in v.queries] == [_ranking(index, q) for q in v.queries]



def test_int8_rerank_features_stay_close_to_float16() -> None:
    v = make_synthetic_video(num_frames=40, num_scenes=4, features_per_frame=64, local_dim=32, global_dim=16)
    small = RollingIndex(_config(rerank_dtype="int8"))
    exact = RollingIndex(_config(rerank_dtype="float16"))
    small.add(v.keys, v.features)
    exact.add(v.keys, v.features)
    for a, b in zip(small.shards(), exact.shards(), strict=True):
        assert a.nbytes() < b.nbytes()
        for got, want in zip(a.rerank_descriptors, b.rerank_descriptors, strict=True):
            assert got.dtype == want.dtype == np.float16 and got.shape == want.shape
            sims = got.astype(np.float32) @ want.astype(np.float32).T
            np.testing.assert_allclose(np.diag(sims), 1.0, atol=5e-3)  # unit rows: ~ the original
        rebuilt = Shard.from_arrays(a.id, small.config, a.to_arrays(), version=a.version)
        assert a.to_arrays()["rerank_codes"].dtype == np.int8
        for got, want in zip(rebuilt.rerank_descriptors, a.rerank_descriptors, strict=True):
            np.testing.assert_array_equal(got, want)


def test_int8_codes_dequantise_bit_for_bit_as_the_formula_says_and_requantise_to_themselves() -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((500, 64)).astype(np.float32)
    x[3] = 0.0  # a zero row: scale 0
    codes, scales = quantize_int8(x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12))
    got = dequantize_int8(codes, scales)
    formula = (codes.astype(np.float32) * (scales.astype(np.float32) / np.float32(127.0))[:, None]).astype(np.float16)
    np.testing.assert_array_equal(got, formula)
    again = quantize_int8(got)  # what the candidate wire relies on to send the codes instead of float16
    np.testing.assert_array_equal(again[0], codes)
    np.testing.assert_array_equal(again[1], scales)
