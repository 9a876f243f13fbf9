"""The four retrieval modes behind one API, deadlines, errors, SuperGlobal and L2G stage 2."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from l2g_core import MODES, ConfigError, IndexConfig, RetrievalConfig, Retriever, RollingIndex, ShapeError
from l2g_core.datasets import make_synthetic_video
from l2g_core.evaluation import GroundTruth, mean_average_precision
from l2g_core.rerank.l2g import dissimilarity_matrix, query_weights
from l2g_core.rerank.smacof import smacof
from l2g_core.rerank.superglobal import superglobal_scores


@pytest.fixture(scope="module")
def setup() -> tuple[Retriever, object]:
    video = make_synthetic_video(num_frames=150, num_scenes=15, features_per_frame=64, local_dim=32, global_dim=16,
                                 num_queries=12, noise=0.5, global_noise=0.8, seed=2)
    index = RollingIndex(IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, bucket_seconds=20.0))
    index.add(video.keys, video.features)
    return Retriever(index, RetrievalConfig(rerank_k=40, shortlist=80, g2l_shortlist=40)), video


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_ranks_and_reports(setup, mode: str) -> None:
    retriever, video = setup
    rankings, gts = [], []
    for q, f in zip(video.queries, video.query_frames, strict=True):
        res = retriever.search(q, mode=mode, k=30)
        assert res.mode == mode and len(res.hits) == 30
        assert {"stage1", "stage2", "total"} <= set(res.timings_ms)
        assert res.coverage.complete and res.coverage.frames_searched == res.coverage.frames_total == 150
        scores = [h.score for h in res.hits]
        assert scores == sorted(scores, reverse=True)
        rankings.append([h.key for h in res.hits])
        gts.append(GroundTruth(ok=frozenset(k for k, s in zip(video.keys, video.scenes, strict=True)
                                            if s == video.scenes[f])))
    m_ap = mean_average_precision(rankings, gts)
    # every mode is far better than chance (~0.1) on this data; local modes find the source frame first
    assert m_ap > 0.3
    if mode in ("local", "l2g"):
        firsts = [r[0] for r in rankings]
        sources = [video.keys[f] for f in video.query_frames]
        assert sum(a == b for a, b in zip(firsts, sources, strict=True)) >= 10


def test_l2g_reports_stage_scores(setup) -> None:
    retriever, video = setup
    hit = retriever.search(video.queries[0], mode="l2g", k=5).hits[0]
    assert {"local", "global", "l2g"} <= set(hit.stage_scores)
    res = retriever.search(video.queries[0], mode="global_to_local", k=5)
    assert "inliers" in res.hits[0].stage_scores


def test_bad_arguments_are_clear_errors(setup) -> None:
    retriever, video = setup
    with pytest.raises(ConfigError, match="unknown mode"):
        retriever.search(video.queries[0], mode="magic")
    with pytest.raises(ConfigError, match="k must be"):
        retriever.search(video.queries[0], k=0)
    with pytest.raises(ConfigError, match="time_range"):
        retriever.search(video.queries[0], time_range=(10.0, 5.0))
    other = make_synthetic_video(num_frames=2, local_dim=16, global_dim=16, num_queries=1)
    with pytest.raises(ShapeError, match="dimension 16"):
        retriever.search(other.queries[0])
    with pytest.raises(ConfigError):
        RetrievalConfig(fusion_weight=1.5)
    with pytest.raises(ConfigError, match="unknown RetrievalConfig fields"):
        RetrievalConfig().replace(nope=1)


def test_expired_deadline_returns_partial_answer_and_says_so(setup) -> None:
    retriever, video = setup
    res = retriever.search(video.queries[0], mode="l2g", k=5, deadline=time.monotonic() - 1.0)
    assert not res.coverage.complete
    assert res.coverage.shards_searched == 1 < res.coverage.shards_total
    assert any("deadline" in n for n in res.coverage.notes)
    assert res.hits  # still answers with what was searched


def test_candidates_merge_is_independent_of_sharding(setup) -> None:
    retriever, video = setup
    from l2g_core import SearchPlan, merge_candidates, prepare_query, stage1

    q = prepare_query(video.queries[1], retriever.config, 32, 16)
    plan = SearchPlan.build("local", 50, retriever.config)
    whole = stage1(retriever.index, q, plan, retriever.config, cameras=None)
    parts = [stage1(retriever.index, q, plan, retriever.config, cameras={c}) for c in ("cam-0", "cam-1")]
    merged = merge_candidates(parts, plan, q)
    assert merged.keys == whole.keys
    np.testing.assert_allclose(merged.scores, whole.scores)


@pytest.mark.parametrize("mode", ["local", "l2g", "global_to_local"])
def test_only_the_strongest_query_features_rank_and_the_proof_keeps_more(setup, mode: str) -> None:
    """``query_features`` cuts what ranks (stage 1 and the re-rankers); the prepared query keeps up to
    ``VERIFY_QUERY_FEATURES`` for the geometric proof of the answer."""
    from l2g_core import prepare_query
    from l2g_core.plan import VERIFY_QUERY_FEATURES

    retriever, video = setup
    query = video.queries[3]
    assert query.num_features > 8
    config = retriever.config.replace(query_features=8)
    prepared = prepare_query(query, config, 32, 16)
    assert prepared.descriptors.shape[0] == min(query.num_features, VERIFY_QUERY_FEATURES) > 8
    assert prepared.for_ranking(config).descriptors.shape[0] == 8
    np.testing.assert_array_equal(prepared.for_ranking(config).descriptors, prepared.descriptors[:8])
    cut = Retriever(retriever.index, config).search(query, mode=mode, k=10)
    strongest = Retriever(retriever.index, config).search(query.top(8), mode=mode, k=10)
    everything = Retriever(retriever.index, retriever.config.replace(query_features=1024)).search(query, mode=mode,
                                                                                                  k=10)
    assert [h.key for h in cut.hits] == [h.key for h in strongest.hits]
    np.testing.assert_allclose([h.score for h in cut.hits], [h.score for h in strongest.hits], rtol=1e-5)
    assert [h.score for h in cut.hits] != [h.score for h in everything.hits]  # the cut did change the ranking


def _superglobal_reference(q: np.ndarray, d: np.ndarray, k: int, beta: float) -> np.ndarray:
    m = d.shape[0]
    refined = np.zeros_like(d)
    for j in range(m):
        sims = d @ d[j]
        sims[j] = np.inf
        nn = np.argsort(-sims, kind="stable")[: k + 1]
        w = np.array([1.0 if i == j else beta * float(d[i] @ d[j]) for i in nn])
        refined[j] = (w[:, None] * d[nn]).sum(0) / w.sum()
    s1 = refined @ q
    top = np.argsort(-s1, kind="stable")[: k + 1]
    q2 = refined[top].max(0)
    return (s1 + refined @ q2) / 2


def test_superglobal_matches_loop_reference() -> None:
    rng = np.random.default_rng(0)
    d = rng.standard_normal((25, 8))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    q = d[3] + 0.1 * rng.standard_normal(8)
    q /= np.linalg.norm(q)
    got = superglobal_scores(torch.from_numpy(q), torch.from_numpy(d), k=4, beta=0.15).numpy()
    np.testing.assert_allclose(got, _superglobal_reference(q, d, 4, 0.15), atol=1e-10)


def test_dissimilarity_matrix_is_sparse_symmetric_and_keeps_query_row() -> None:
    rng = np.random.default_rng(1)
    s = rng.uniform(0, 1, (12, 12))
    s = torch.from_numpy((s + s.T) / 2)
    s.fill_diagonal_(1.0)
    delta = dissimilarity_matrix(s, neighbors=2, power=1.0)
    assert torch.equal(delta, delta.T)
    assert torch.all(delta.diagonal() == 0)
    assert torch.allclose(delta[0, 1:], 1 - s[0, 1:])  # query row fully known
    unknown = (delta[1:, 1:] == 1.0).sum().item()
    assert unknown > 0  # most candidate pairs are unknown
    assert torch.allclose(dissimilarity_matrix(s, 0, 1.0)[1:, 1:].fill_diagonal_(0), (1 - s[1:, 1:]).fill_diagonal_(0))


def test_cosine_scoring_of_the_paper_reconstruction_still_ranks(setup) -> None:
    """``mds_score="cosine"`` with plain stress (the earlier default) stays available and finds the source frames."""
    retriever, video = setup
    plain = Retriever(retriever.index, retriever.config.replace(mds_score="cosine", mds_query_weight=1.0))
    firsts = [plain.search(q, mode="l2g", k=5).hits[0].key for q in video.queries]
    sources = [video.keys[f] for f in video.query_frames]
    assert sum(a == b for a, b in zip(firsts, sources, strict=True)) >= 10
    with pytest.raises(ConfigError, match="mds_score"):
        RetrievalConfig(mds_score="angle")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mds_query_weight"):
        RetrievalConfig(mds_query_weight=0.0)


def test_query_weight_makes_the_embedding_keep_the_query_row() -> None:
    """A noisy non-Euclidean matrix: weighting the query's row fits its distances far better than plain stress."""
    rng = np.random.default_rng(3)
    n = 60
    delta = rng.uniform(0.5, 1.0, (n, n))
    delta = (delta + delta.T) / 2
    delta[0, 1:] = delta[1:, 0] = np.linspace(0.2, 0.9, n - 1)  # the query row: a fine, ordered structure
    np.fill_diagonal(delta, 0.0)
    d = torch.from_numpy(delta)
    weights = query_weights(d, 1000.0)
    assert weights is not None and query_weights(d, 1.0) is None
    assert weights.dtype == d.dtype and weights.shape == d.shape
    assert torch.equal(weights, weights.T) and torch.all(weights.diagonal() == 0) and weights[0, 5] == 1000.0
    assert weights[3, 5] == 1.0

    def query_row_error(w: torch.Tensor | None) -> float:
        emb = smacof(d, dim=8, weights=w, max_iter=300).embedding[0]
        return float((torch.linalg.norm(emb[1:] - emb[0], dim=1) - d[0, 1:]).abs().mean())

    assert query_row_error(weights) < 0.25 * query_row_error(None)
