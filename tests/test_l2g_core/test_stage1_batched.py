"""Stage 1 at scale: segments (one IVF-PQ index per camera over many buckets) with a shared coarse assignment,
bucket id ranges for time windows, dense Chamfer aggregation and one global selection give the same answers as a
plain search of the selected shards' descriptors, per-shard aggregation and a merge of per-shard shortlists."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import pytest

from l2g_core import IndexConfig, RetrievalConfig, RollingIndex, chamfer
from l2g_core.candidates import Candidates
from l2g_core.chamfer import aggregate_neighbors
from l2g_core.datasets import SyntheticVideo, make_synthetic_video
from l2g_core.errors import IndexStateError
from l2g_core.index.persistence import load_index, save_index
from l2g_core.index.segment import BUCKET_SHIFT, Segment, SegmentId, new_segment
from l2g_core.shortlist import local_candidates


def _video() -> SyntheticVideo:
    return make_synthetic_video(num_frames=400, num_scenes=20, features_per_frame=64, local_dim=32, global_dim=16,
                                num_queries=6, seed=7)


def _compressed_index(pq_bytes: int = 8, exact_segment_features: int = 0) -> tuple[RollingIndex, list[np.ndarray]]:
    """The synthetic video in a compressed index: 2 cameras, each over 4 segments of 2 or 3 buckets (2560 or 3840
    features). ``exact_segment_features`` 0: every segment is IVF-PQ codes."""
    v = _video()
    # several buckets per segment, several segments per camera
    config = IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, bucket_seconds=20.0,
                         segment_seconds=60.0, index_kind="ivfpq", train_size=8000, ivf_lists=64, pq_bytes=pq_bytes,
                         nprobe=8, exact_segment_features=exact_segment_features)
    index = RollingIndex(config)
    index.add(v.keys, v.features)
    return index, [q.descriptors for q in v.queries]


@pytest.mark.parametrize("pq_bytes", [8, 32])  # 8: 16 x 4-bit fast-scan; 32: 8-bit PQ (2 * 32 does not divide 32)
def test_segments_share_one_coarse_assignment(pq_bytes: int) -> None:
    index, queries = _compressed_index(pq_bytes)
    segments = index.segments()
    assert len(segments) > 1 and len(index.shards()) > len(segments)  # fewer search units than shards
    assert all(s.kind == "ivfpq" and s.index is None for s in index.shards())
    assert len({g.coarse_key for g in segments}) == 1  # one template: one assignment serves every segment
    for query in queries:
        assignment = segments[0].assign(query)
        for segment in segments:
            sims, ids = segment.search(query, 16)
            got_sims, got_ids = segment.search(query, 16, assignment)
            np.testing.assert_array_equal(got_ids, ids)
            np.testing.assert_array_equal(got_sims, sims)


def test_coarse_key_follows_nprobe_and_flat_index_has_no_segments() -> None:
    index, _ = _compressed_index()
    segment = index.segments()[0]
    key = segment.coarse_key
    segment.index.nprobe = 4  # type: ignore[attr-defined]
    assert segment.coarse_key != key
    flat = RollingIndex(IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, index_kind="flat"))
    v = make_synthetic_video(num_frames=10, num_scenes=2, features_per_frame=8, local_dim=32, global_dim=16)
    flat.add(v.keys, v.features)
    assert flat.segments() == [] and flat.segment(flat.shards()[0]) is None


@pytest.mark.parametrize(("tau", "alpha"), [(0.0, 1.0), (0.1, 3.0)])
@pytest.mark.parametrize("num_frames", [30, 5000])  # few frames: many repeated (feature, frame) pairs; many: sparse
def test_dense_and_sorted_aggregation_are_bit_identical(tau: float, alpha: float, num_frames: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    q, k = 40, 24
    sims = -np.sort(-rng.uniform(-0.2, 1.0, (q, k)).astype(np.float32), axis=1)
    frames = rng.integers(-1, num_frames, (q, k))
    default = aggregate_neighbors(sims, frames, num_frames, tau=tau, alpha=alpha)
    monkeypatch.setattr(chamfer, "DENSE_PER_MATCH", 10**9)
    dense = aggregate_neighbors(sims, frames, num_frames, tau=tau, alpha=alpha)
    monkeypatch.setattr(chamfer, "DENSE_LIMIT", 0)
    sparse = aggregate_neighbors(sims, frames, num_frames, tau=tau, alpha=alpha)
    np.testing.assert_array_equal(dense, sparse)
    np.testing.assert_array_equal(default, dense)
    assert default.max() > 0


def _segment_reference(index: RollingIndex, twin: RollingIndex, query: np.ndarray, config: RetrievalConfig,
                       limit: int, time_range: tuple[float, float] | None) -> Candidates:
    """Stage 1 spelled out: per segment, a fresh clone of the template (an exact ``IndexFlatIP`` for a young
    segment) holding only the selected shards' raw descriptors (from the flat ``twin``), searched for
    ``config.neighbors``, Chamfer over its frames, best ``limit`` of each shard merged."""
    assert index.template is not None
    parts = []
    for segment in index.segments():
        shards = sorted((s for s in index.select([segment.id.camera_id], time_range) if index.segment(s) is segment),
                        key=lambda s: s.id.bucket)
        if not shards:
            continue
        ivf = faiss.IndexFlatIP(index.config.local_dim) if segment.exact else faiss.clone_index(index.template)
        raw = [twin_shard.raw_descriptors() for twin_shard in (twin._shards[s.id] for s in shards)]
        ivf.add(np.concatenate([r for r in raw if r is not None]))
        feature_frame = np.concatenate([s.feature_frame + sum(len(o) for o in shards[:i])
                                        for i, s in enumerate(shards)])
        sims, ids = ivf.search(query, min(config.neighbors, ivf.ntotal))
        frames = np.where(ids >= 0, feature_frame[np.maximum(ids, 0)], -1)
        total = sum(len(s) for s in shards)
        scores = (aggregate_neighbors(sims, frames, total, tau=config.kernel_tau, alpha=config.kernel_alpha)
                  / max(query.shape[0], 1)).astype(np.float32)
        start = 0
        for shard in shards:
            own = scores[start:start + len(shard)]
            start += len(shard)
            mask = np.ones(len(shard), bool) if time_range is None else (
                (shard.timestamps >= time_range[0]) & (shard.timestamps <= time_range[1]))
            idx = np.flatnonzero((own > 0) & mask)
            idx = idx[np.argsort(-own[idx], kind="stable")][:limit]
            parts.append(Candidates(keys=[shard.keys[i] for i in idx], scores=own[idx], stage="local",
                                    global_descriptors=shard.globals[idx],
                                    descriptors=[shard.rerank_descriptors[i] for i in idx],
                                    keypoints=[shard.rerank_keypoints[i] for i in idx]))
    return Candidates.merge(parts, limit, index.config.global_dim, "local")


@pytest.mark.parametrize("exact_segment_features", [0, 3000])  # 3000: young segments (2560 features) beside IVF-PQ
@pytest.mark.parametrize("limit", [5, 50, 1000])
@pytest.mark.parametrize("window", [None, (0.3, 0.7)])  # a window cuts segments: searched by bucket id range
def test_local_candidates_equal_a_search_of_the_selected_shards(limit: int, window: tuple[float, float] | None,
                                                                exact_segment_features: int) -> None:
    index, queries = _compressed_index(exact_segment_features=exact_segment_features)
    kinds = {g.exact for g in index.segments()}
    assert kinds == ({False} if exact_segment_features == 0 else {False, True})
    twin = RollingIndex(replace(index.config, index_kind="flat"))
    v = _video()
    twin.add(v.keys, v.features)
    config = RetrievalConfig(neighbors=16)
    stamps = sorted(k.timestamp for k in v.keys)
    time_range = None if window is None else (stamps[int(window[0] * len(stamps))],
                                              stamps[int(window[1] * len(stamps))])
    for query in queries:
        got = local_candidates(index, query, config, limit=limit, time_range=time_range)
        ref = _segment_reference(index, twin, query, config, limit, time_range)
        assert got.keys == ref.keys
        np.testing.assert_array_equal(got.scores, ref.scores)
        np.testing.assert_array_equal(got.global_descriptors, ref.global_descriptors)
        assert all(np.array_equal(a, b) for a, b in zip(got.descriptors, ref.descriptors, strict=True))
        assert got.coverage is not None
        assert got.coverage.shards_searched == len(index.select(None, time_range))


def test_retention_removes_a_bucket_from_its_segment() -> None:
    index, _ = _compressed_index()
    segment = index.segments()[-1]  # oldest segment
    features = segment.num_features
    oldest = min(segment.buckets)
    shard = next(s for s in index.shards() if s.id.camera_id == segment.id.camera_id and s.id.bucket == oldest)
    dropped = index.evict_before(shard.time_range[1])
    assert dropped >= len(shard) and oldest not in segment.buckets
    assert segment.num_features == features - shard.num_features or segment not in index.segments()
    index.evict_before(float("inf"))
    assert index.segments() == [] and len(index) == 0


def _brute_force(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = query @ vectors.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), ids[order]


def test_a_young_segment_is_exact_until_it_holds_enough_features_then_ivfpq() -> None:
    index, queries = _compressed_index()
    assert index.template is not None
    config = replace(index.config, exact_segment_features=300, segment_seconds=80.0)  # 4 buckets per segment
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((100, 32)).astype(np.float32) for _ in range(4)]
    batches = [b / np.linalg.norm(b, axis=1, keepdims=True) for b in batches]
    segment = new_segment(SegmentId("cam-x", 0), config, index.template)
    assert segment.exact and segment.coarse_key is None and segment.num_features == 0
    ids = []
    for bucket, batch in enumerate(batches[:2]):  # 200 < 300 features: still exact
        segment.add(bucket, batch, np.arange(100, dtype=np.int64))
        ids.append((bucket << BUCKET_SHIFT) + np.arange(100, dtype=np.int64))
    assert segment.exact and segment.num_features == 200
    assert segment.nbytes() == 200 * (32 * 4 + 8)
    vectors, all_ids = np.concatenate(batches[:2]), np.concatenate(ids)
    query = queries[0]
    sims, got = segment.search(query, 16)
    ref_sims, ref_ids = _brute_force(vectors, all_ids, query, 16)
    np.testing.assert_array_equal(got, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, rtol=1e-5, atol=1e-5)
    # one bucket by id range, and k above what the range holds: padded like FAISS
    sims, got = segment.search(query, 150, buckets=(1, 1))
    assert (got[:, :100] >> BUCKET_SHIFT == 1).all() and (got[:, 100:] == -1).all() and np.isneginf(sims[:, 100:]).all()
    np.testing.assert_array_equal(got[:, :100], _brute_force(batches[1], ids[1], query, 100)[1])
    assert segment.remove_bucket(0) == 100 and segment.exact and segment.num_features == 100
    # the third and fourth buckets reach 300: the vectors move into a clone of the template, ids unchanged
    for bucket, batch in enumerate(batches[2:], start=2):
        segment.add(bucket, batch, np.arange(100, dtype=np.int64))
    assert not segment.exact and segment.num_features == 300 and segment.coarse_key is not None
    reference = faiss.clone_index(index.template)
    reference.add_with_ids(np.concatenate(batches[1:]), np.concatenate(
        [(b << BUCKET_SHIFT) + np.arange(100, dtype=np.int64) for b in (1, 2, 3)]))
    ref_sims, ref_ids = reference.search(query, 16)
    sims, got = segment.search(query, 16)
    np.testing.assert_array_equal(got, ref_ids)
    np.testing.assert_array_equal(sims, ref_sims)


def test_a_young_segment_without_template_cannot_grow_and_a_wrong_blob_is_refused() -> None:
    index, _ = _compressed_index()
    assert index.template is not None
    config = replace(index.config, exact_segment_features=10)
    young = new_segment(SegmentId("cam-x", 0), config, index.template)
    orphan = Segment.from_blob(young.id, config, young.to_blob())  # no template given
    assert orphan.exact
    with pytest.raises(IndexStateError, match="no IVF-PQ template"):
        orphan.add(0, np.eye(32, dtype=np.float32)[:16], np.arange(16, dtype=np.int64))
    with pytest.raises(ValueError, match="not an IVF index"):
        Segment.from_blob(young.id, config, np.asarray(faiss.serialize_index(faiss.IndexFlatL2(32))))


def test_young_segments_survive_a_snapshot_and_grow_after_it(tmp_path: Path) -> None:
    index, queries = _compressed_index(exact_segment_features=3000)
    young = [g for g in index.segments() if g.exact]
    assert young
    save_index(index, tmp_path / "snap")
    loaded, _, _ = load_index(tmp_path / "snap")
    assert [(g.id, g.exact, g.num_features) for g in loaded.segments()] == [
        (g.id, g.exact, g.num_features) for g in index.segments()]
    config = RetrievalConfig(neighbors=16)
    for query in queries:
        a = local_candidates(index, query, config, limit=50)
        b = local_candidates(loaded, query, config, limit=50)
        assert a.keys == b.keys
        np.testing.assert_array_equal(a.scores, b.scores)
    segment = next(g for g in loaded.segments() if g.id == young[0].id)
    bucket = max(segment.buckets)
    segment.add(bucket, np.eye(32, dtype=np.float32).repeat(20, axis=0), np.arange(640, dtype=np.int64) + 10_000)
    assert not segment.exact and segment.num_features == young[0].num_features + 640
