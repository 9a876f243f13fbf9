"""Stage 1 at scale: segments (one IVF-PQ index per camera over many buckets) with a shared coarse assignment,
bucket id ranges for time windows, dense Chamfer aggregation and one global selection give the same answers as a
plain search of the selected shards' descriptors, per-shard aggregation and a merge of per-shard shortlists."""

from __future__ import annotations

from dataclasses import replace

import faiss
import numpy as np
import pytest

from l2g_core import IndexConfig, RetrievalConfig, RollingIndex, chamfer
from l2g_core.candidates import Candidates
from l2g_core.chamfer import aggregate_neighbors
from l2g_core.datasets import SyntheticVideo, make_synthetic_video
from l2g_core.shortlist import local_candidates


def _video() -> SyntheticVideo:
    return make_synthetic_video(num_frames=400, num_scenes=20, features_per_frame=64, local_dim=32, global_dim=16,
                                num_queries=6, seed=7)


def _compressed_index(pq_bytes: int = 8) -> tuple[RollingIndex, list[np.ndarray]]:
    v = _video()
    # several buckets per segment, several segments per camera
    config = IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, bucket_seconds=20.0,
                         segment_seconds=60.0, index_kind="ivfpq", train_size=8000, ivf_lists=64, pq_bytes=pq_bytes,
                         nprobe=8)
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
    """Stage 1 spelled out: per segment, a fresh clone of the template holding only the selected shards' raw
    descriptors (from the flat ``twin``), searched for ``config.neighbors``, Chamfer over its frames, best ``limit``
    of each shard merged."""
    assert index.template is not None
    parts = []
    for segment in index.segments():
        shards = sorted((s for s in index.select([segment.id.camera_id], time_range) if index.segment(s) is segment),
                        key=lambda s: s.id.bucket)
        if not shards:
            continue
        ivf = faiss.clone_index(index.template)
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


@pytest.mark.parametrize("limit", [5, 50, 1000])
@pytest.mark.parametrize("window", [None, (0.3, 0.7)])  # a window cuts segments: searched by bucket id range
def test_local_candidates_equal_a_search_of_the_selected_shards(limit: int, window: tuple[float, float] | None
                                                                ) -> None:
    index, queries = _compressed_index()
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
