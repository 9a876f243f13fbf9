"""Stage 1 at scale: shared coarse assignment, dense Chamfer aggregation and one global selection give the same
answers as per-shard search, per-shard aggregation and a merge of per-shard shortlists."""

from __future__ import annotations

import numpy as np
import pytest

from l2g_core import IndexConfig, RetrievalConfig, RollingIndex, chamfer
from l2g_core.candidates import Candidates
from l2g_core.chamfer import aggregate_neighbors
from l2g_core.datasets import make_synthetic_video
from l2g_core.shortlist import local_candidates


def _compressed_index(pq_bytes: int = 8) -> tuple[RollingIndex, list[np.ndarray]]:
    v = make_synthetic_video(num_frames=400, num_scenes=20, features_per_frame=64, local_dim=32, global_dim=16,
                             num_queries=6, seed=7)
    config = IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, bucket_seconds=20.0,
                         index_kind="ivfpq", train_size=8000, ivf_lists=64, pq_bytes=pq_bytes, nprobe=8)
    index = RollingIndex(config)
    index.add(v.keys, v.features)
    return index, [q.descriptors for q in v.queries]


@pytest.mark.parametrize("pq_bytes", [8, 32])  # 8: 16 x 4-bit fast-scan; 32: 8-bit PQ (2 * 32 does not divide 32)
def test_preassigned_search_equals_per_shard_search(pq_bytes: int) -> None:
    index, queries = _compressed_index(pq_bytes)
    shards = index.shards()
    assert len(shards) > 3 and all(s.kind == "ivfpq" for s in shards)
    assert len({s.coarse_key for s in shards}) == 1  # one template: one assignment serves every shard
    for query in queries:
        assignment = shards[0].assign(query)
        for shard in shards:
            sims, frames = shard.search(query, 16)
            got_sims, got_frames = shard.search_preassigned(query, 16, assignment)
            np.testing.assert_array_equal(got_frames, frames)
            np.testing.assert_array_equal(got_sims, sims)


def test_coarse_key_follows_nprobe_and_is_none_for_flat() -> None:
    index, _ = _compressed_index()
    shard = index.shards()[0]
    key = shard.coarse_key
    shard.index.nprobe = 4  # type: ignore[attr-defined]
    assert shard.coarse_key not in (None, key)
    flat = RollingIndex(IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, index_kind="flat"))
    v = make_synthetic_video(num_frames=10, num_scenes=2, features_per_frame=8, local_dim=32, global_dim=16)
    flat.add(v.keys, v.features)
    assert flat.shards()[0].coarse_key is None


@pytest.mark.parametrize(("tau", "alpha"), [(0.0, 1.0), (0.1, 3.0)])
def test_dense_and_sorted_aggregation_are_bit_identical(tau: float, alpha: float,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    q, k, num_frames = 40, 24, 30  # few frames: many repeated (feature, frame) pairs
    sims = -np.sort(-rng.uniform(-0.2, 1.0, (q, k)).astype(np.float32), axis=1)
    frames = rng.integers(-1, num_frames, (q, k))
    dense = aggregate_neighbors(sims, frames, num_frames, tau=tau, alpha=alpha)
    monkeypatch.setattr(chamfer, "DENSE_LIMIT", 0)
    sparse = aggregate_neighbors(sims, frames, num_frames, tau=tau, alpha=alpha)
    np.testing.assert_array_equal(dense, sparse)


def _per_shard_reference(index: RollingIndex, query: np.ndarray, config: RetrievalConfig, limit: int) -> Candidates:
    """The previous stage 1: each shard searched on its own, its best ``limit`` kept, shortlists merged."""
    parts = []
    for shard in index.shards():
        sims, frames = shard.search(query, config.neighbors)
        scores = (aggregate_neighbors(sims, frames, len(shard), tau=config.kernel_tau, alpha=config.kernel_alpha)
                  / max(query.shape[0], 1)).astype(np.float32)
        idx = np.flatnonzero(scores > 0)
        idx = idx[np.argsort(-scores[idx], kind="stable")][:limit]
        parts.append(Candidates(keys=[shard.keys[i] for i in idx], scores=scores[idx], stage="local",
                                global_descriptors=shard.globals[idx],
                                descriptors=[shard.rerank_descriptors[i] for i in idx],
                                keypoints=[shard.rerank_keypoints[i] for i in idx]))
    return Candidates.merge(parts, limit, index.config.global_dim, "local")


@pytest.mark.parametrize("limit", [5, 50, 1000])
def test_local_candidates_equal_per_shard_search_and_merge(limit: int) -> None:
    index, queries = _compressed_index()
    config = RetrievalConfig(neighbors=16)
    for query in queries:
        got = local_candidates(index, query, config, limit=limit)
        ref = _per_shard_reference(index, query, config, limit)
        assert got.keys == ref.keys
        np.testing.assert_array_equal(got.scores, ref.scores)
        np.testing.assert_array_equal(got.global_descriptors, ref.global_descriptors)
        assert all(np.array_equal(a, b) for a, b in zip(got.descriptors, ref.descriptors, strict=True))
        assert got.coverage is not None and got.coverage.shards_searched == len(index.shards())
