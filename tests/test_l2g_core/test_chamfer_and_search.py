"""Stage-1 Chamfer scoring: the FAISS path agrees with brute force on seeded data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l2g_core import FrameFeatures, FrameKey, IndexConfig, RetrievalConfig, RollingIndex
from l2g_core.chamfer import aggregate_neighbors, exact_chamfer, pairwise_chamfer
from l2g_core.datasets import make_synthetic_video
from l2g_core.shortlist import local_candidates
from l2g_core.types import l2_normalize


def _random_sets(rng: np.random.Generator, count: int, dim: int = 16) -> list[np.ndarray]:
    return [l2_normalize(rng.standard_normal((int(rng.integers(1, 30)), dim)).astype(np.float32)) for _ in range(count)]


@pytest.mark.parametrize(("tau", "alpha"), [(0.0, 1.0), (0.2, 3.0)])
def test_exhaustive_neighbour_lists_give_exact_chamfer(tau: float, alpha: float) -> None:
    rng = np.random.default_rng(3)
    frames = _random_sets(rng, 12)
    query = l2_normalize(rng.standard_normal((20, 16)).astype(np.float32))
    all_desc = np.concatenate(frames)
    owner = np.repeat(np.arange(len(frames)), [f.shape[0] for f in frames])
    sims = query @ all_desc.T
    order = np.argsort(-sims, axis=1)
    got = aggregate_neighbors(
        np.take_along_axis(sims, order, 1), owner[order], len(frames), tau=tau, alpha=alpha
    ) / query.shape[0]
    np.testing.assert_allclose(got, exact_chamfer(query, frames, tau=tau, alpha=alpha), rtol=1e-5, atol=1e-6)


def test_index_search_matches_brute_force() -> None:
    video = make_synthetic_video(num_frames=60, num_scenes=6, features_per_frame=40, local_dim=32, seed=5)
    index = RollingIndex(IndexConfig(local_dim=32, global_dim=32, retention_seconds=None, bucket_seconds=10.0))
    assert index.add(video.keys, video.features).added == 60
    cfg = RetrievalConfig(neighbors=10_000, kernel_tau=0.0, kernel_alpha=1.0)
    query = video.queries[0].descriptors
    cands = local_candidates(index, query, cfg, limit=60)
    # kernel k(s)=max(s,0): exact Chamfer with negative maxima clipped
    ref = np.array([np.clip(query @ f.descriptors.T, 0, None).max(1).mean() for f in video.features])
    got = {k: s for k, s in zip(cands.keys, cands.scores, strict=True)}
    for key, expected in zip(video.keys, ref, strict=True):
        assert got.get(key, 0.0) == pytest.approx(expected, abs=1e-5)
    assert list(cands.scores) == sorted(cands.scores, reverse=True)


@pytest.mark.parametrize("block_sets", [1, 4, 9, 32])
def test_pairwise_chamfer_matches_exact(block_sets: int) -> None:
    """Both directions of every pair, whichever block computes them (the lower triangle comes from the upper
    triangle's products), with sets of uneven sizes and an empty one."""
    rng = np.random.default_rng(11)
    sets = _random_sets(rng, 9)
    sets.insert(5, np.zeros((0, 16), np.float32))
    got = pairwise_chamfer([torch.from_numpy(s) for s in sets], tau=0.1, alpha=2.0, block_sets=block_sets).numpy()
    ref = np.stack([exact_chamfer(s, sets, tau=0.1, alpha=2.0) for s in sets])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert not np.allclose(got, got.T, atol=1e-3)  # asymmetric: a transposed half would show
    assert np.allclose(np.delete(np.diag(got), 5), 1.0, atol=1e-5) and not got[5].any() and not got[:, 5].any()


@pytest.mark.parametrize("head", [1, 3])
def test_pairwise_chamfer_head_computes_only_the_first_rows_and_columns(head: int) -> None:
    rng = np.random.default_rng(12)
    sets = _random_sets(rng, 8)
    full = pairwise_chamfer([torch.from_numpy(s) for s in sets], tau=0.1, alpha=2.0).numpy()
    got = pairwise_chamfer([torch.from_numpy(s) for s in sets], tau=0.1, alpha=2.0, head=head).numpy()
    np.testing.assert_allclose(got[:head], full[:head], atol=1e-6)
    np.testing.assert_allclose(got[:, :head], full[:, :head], atol=1e-6)
    assert not got[head:, head:].any() and full[head:, head:].all()


def test_graph_pairs_use_fewer_features_than_the_query_row() -> None:
    """``graph_pair_features`` < ``graph_features``: the query's row and column as with every feature, every
    candidate pair as with the fewer strongest."""
    from l2g_core.rerank.l2g import graph_similarity

    rng = np.random.default_rng(13)
    query, *cands = _random_sets(rng, 7)
    config = RetrievalConfig(graph_features=12, graph_pair_features=5)
    got = graph_similarity(query, cands, config, torch.device("cpu")).numpy()

    def symmetric(count: int) -> np.ndarray:
        sets = [query[:count]] + [c[:count] for c in cands]
        m = np.stack([exact_chamfer(s, sets, tau=config.kernel_tau, alpha=config.kernel_alpha) for s in sets])
        return 0.5 * (m + m.T)

    wide, narrow = symmetric(12), symmetric(5)
    np.testing.assert_allclose(got[0], wide[0], atol=1e-5)
    np.testing.assert_allclose(got[:, 0], wide[:, 0], atol=1e-5)
    np.testing.assert_allclose(got[1:, 1:], narrow[1:, 1:], atol=1e-5)
    assert not np.allclose(wide[1:, 1:], narrow[1:, 1:], atol=1e-3)  # the two really differ
    same = graph_similarity(query, cands, config.replace(graph_pair_features=12), torch.device("cpu")).numpy()
    np.testing.assert_allclose(same, wide, atol=1e-5)


def test_empty_query_scores_nothing() -> None:
    index = RollingIndex(IndexConfig(local_dim=8, global_dim=4, retention_seconds=None))
    feat = FrameFeatures.create(np.eye(8, dtype=np.float32), np.zeros((8, 2)), np.ones(8), np.ones(4))
    index.add([FrameKey("c", 0.0, 0)], [feat])
    cands = local_candidates(index, np.zeros((0, 8), np.float32), RetrievalConfig(), limit=5)
    assert len(cands) == 0
