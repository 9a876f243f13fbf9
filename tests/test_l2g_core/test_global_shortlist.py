"""L2G's joined tail: the best frames by global cosine enter the re-ranked head whatever their local rank
(``RetrievalConfig.global_shortlist``), exactly alike in one index and across merged indexes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from l2g_core import (
    ConfigError,
    FrameFeatures,
    FrameKey,
    IndexConfig,
    RetrievalConfig,
    Retriever,
    RollingIndex,
    SearchPlan,
    cosine,
    merge_candidates,
    prepare_query,
    stage1,
)
from l2g_core.cosine import PARALLEL_COSINE_ROWS, global_cosine, global_cosines, top_global_cosines, top_positions
from l2g_core.datasets import SyntheticVideo, make_synthetic_video
from l2g_core.index.persistence import load_index, save_index
from l2g_core.index.shard import Shard
from l2g_core.types import l2_normalize

CONFIG = RetrievalConfig(rerank_k=40, shortlist=80, global_shortlist=10)


@pytest.fixture(scope="module")
def video() -> SyntheticVideo:
    return make_synthetic_video(num_frames=150, num_scenes=15, features_per_frame=64, local_dim=32, global_dim=16,
                                num_queries=4, noise=0.5, global_noise=0.8, seed=2)


def _index(video: SyntheticVideo, extra: list[tuple[FrameKey, FrameFeatures]] = ()) -> RollingIndex:
    index = RollingIndex(IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, bucket_seconds=20.0))
    index.add([*video.keys, *(k for k, _ in extra)], [*video.features, *(f for _, f in extra)])
    return index


def test_the_plan_joins_the_global_shortlist_in_l2g_only() -> None:
    assert SearchPlan.build("l2g", 10, CONFIG).joined == 10
    assert all(SearchPlan.build(m, 10, CONFIG).joined == 0 for m in ("global", "global_to_local", "local"))
    assert SearchPlan.build("l2g", 10, CONFIG.replace(global_shortlist=0)).joined == 0
    with pytest.raises(ConfigError, match="global_shortlist"):
        RetrievalConfig(global_shortlist=-1)


def test_each_index_ends_its_list_with_its_best_global_frames(video: SyntheticVideo) -> None:
    index = _index(video)
    q = prepare_query(video.queries[0], CONFIG, 32, 16)
    cands = stage1(index, q, SearchPlan.build("l2g", 10, CONFIG), CONFIG)
    assert cands.joined == 10 and cands.ranked == len(cands) - 10 <= CONFIG.shortlist
    stored = np.stack([l2_normalize(f.global_descriptor).astype(np.float16) for f in video.features])  # as kept
    cosine = global_cosine(stored, q.global_descriptor)
    best = [video.keys[i] for i in np.argsort(-cosine, kind="stable")[:10]]
    assert cands.tail().keys == best
    # each joined frame carries its local stage-1 score: the ranking's where it stands there too
    ranked = dict(zip(cands.keys[:cands.ranked], cands.scores[:cands.ranked].tolist(), strict=True))
    both = [k for k in best if k in ranked]
    assert both and [ranked[k] for k in both] == [float(s) for k, s in zip(best, cands.tail().scores, strict=True)
                                                  if k in ranked]
    cut = cands.cut(5)  # what one worker sends: the ranking's best, and the whole tail
    assert cut.ranked == 5 and cut.joined == 10 and cut.keys == [*cands.keys[:5], *best]


def test_merged_tails_equal_one_index_whatever_the_sharding(video: SyntheticVideo) -> None:
    index = _index(video)
    plan = SearchPlan.build("l2g", 10, CONFIG)
    for query in video.queries:
        q = prepare_query(query, CONFIG, 32, 16)
        whole = stage1(index, q, plan, CONFIG)
        parts = [stage1(index, q, plan, CONFIG, cameras={c}) for c in ("cam-1", "cam-0")]
        merged = merge_candidates(parts, plan, q)
        assert merged.keys == whole.keys and merged.joined == whole.joined == 10
        np.testing.assert_array_equal(merged.scores, whole.scores)


def test_a_frame_only_the_global_descriptor_finds_is_reranked(video: SyntheticVideo) -> None:
    query = video.queries[0]
    # its local descriptors point away from every query descriptor (no local match at all), its global descriptor
    # is the query's: local search cannot find it, the joined tail does
    lone = FrameFeatures.create(-query.descriptors, query.keypoints, query.scores, query.global_descriptor,
                                (64, 64))
    key = FrameKey("cam-lone", float(video.keys[0].timestamp), 0)
    index = _index(video, [(key, lone)])

    without = Retriever(index, CONFIG.replace(global_shortlist=0)).search(query, mode="l2g", k=100)
    assert key not in [h.key for h in without.hits]

    hits = Retriever(index, CONFIG).search(query, mode="l2g", k=100).hits
    keys = [h.key for h in hits]
    assert key in keys and len(set(keys)) == len(keys)
    joined = hits[keys.index(key)]
    assert "l2g" in joined.stage_scores  # re-ranked (with its weak local score: below the local shortlist)
    assert joined.stage_scores["global"] == pytest.approx(1.0, abs=1e-3)  # its global, stored as float16


def test_a_query_without_local_features_is_answered_by_the_global_shortlist(video: SyntheticVideo) -> None:
    index = _index(video)
    query = video.queries[1]
    bare = FrameFeatures.create(np.zeros((0, 32)), np.zeros((0, 2)), np.zeros(0), query.global_descriptor, (64, 64))
    assert Retriever(index, CONFIG.replace(global_shortlist=0)).search(bare, mode="l2g", k=5).hits == []
    hits = Retriever(index, CONFIG).search(bare, mode="l2g", k=5).hits
    assert len(hits) == 5 and all(h.stage_scores["local"] == 0.0 and "l2g" in h.stage_scores for h in hits)


def test_global_cosine_of_a_frame_does_not_depend_on_the_other_rows() -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((257, 256)).astype(np.float32)
    q = rng.standard_normal(256).astype(np.float32)
    whole = global_cosine(g, q)
    for rows in (slice(3, 4), slice(0, 17), slice(100, 257), [250, 7, 64]):
        np.testing.assert_array_equal(global_cosine(g[rows], q), whole[rows])


def test_tied_cosines_at_the_cut_are_broken_by_frame_key(video: SyntheticVideo) -> None:
    """Twelve frames over several shards share the query's global descriptor: the tail keeps the ten smallest keys
    of them, whatever order the shards were searched in."""
    q = prepare_query(video.queries[1], CONFIG, 32, 16)
    template = video.features[0]
    twins = [(FrameKey("cam-twin", 1000.0 + 7.0 * i, 500 + (i * 5) % 12),
              FrameFeatures(template.descriptors, template.keypoints, template.scores, q.global_descriptor))
             for i in range(12)]
    index = _index(video, twins)
    assert len({index.segment(s) or s.id for s in index.shards() if s.id.camera_id == "cam-twin"}) > 1
    cands = stage1(index, q, SearchPlan.build("l2g", 10, CONFIG), CONFIG)
    assert cands.tail().keys == sorted(k for k, _ in twins)[:10]


def test_a_frame_picked_twice_is_joined_once() -> None:
    """The tail's fast path orders only the best cosines; when repeated frames leave too few distinct ones among
    them it orders every pick (here one shard's picks come twice, as from two parts of a rebalance)."""
    from l2g_core.shortlist import _tail

    video = make_synthetic_video(num_frames=20, num_scenes=4, features_per_frame=16, local_dim=32, global_dim=16,
                                 num_queries=1, seed=5)
    index = RollingIndex(IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, bucket_seconds=3600.0))
    index.add(video.keys, video.features)
    shard = max(index.shards(), key=len)
    assert len(shard) > 5
    cosine = global_cosine(shard.globals, video.queries[0].global_descriptor)
    scores = np.linspace(0, 1, len(shard)).astype(np.float32)
    def picks_at(positions: np.ndarray) -> list[tuple[Shard, int]]:  # frames 0..n-1, then the same again
        return [(shard, int(p) % len(shard)) for p in positions]

    tail = _tail(picks_at, np.arange(2 * len(shard)), [shard.globals, shard.globals],
                 video.queries[0].global_descriptor, np.tile(scores, 2), 5, 16, "local")
    expected = sorted(range(len(shard)), key=lambda i: (-float(cosine[i]), shard.keys[i]))[:5]
    assert tail.keys == [shard.keys[i] for i in expected]
    np.testing.assert_array_equal(tail.scores, scores[expected])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cosines_over_threads_are_bit_identical_to_one_thread(threads: int, dtype: type) -> None:
    """The joined tail's cosine pass splits the shards over threads above PARALLEL_COSINE_ROWS: every row's value
    is the same whatever the split (blocks of uneven sizes, one empty)."""
    rng = np.random.default_rng(3)
    sizes = [5000, 0, 7000, 1, 9000, 3000]
    assert sum(sizes) > PARALLEL_COSINE_ROWS
    blocks = [rng.standard_normal((n, 64)).astype(dtype) for n in sizes]
    q = rng.standard_normal(64).astype(np.float32)
    expected = np.concatenate([global_cosine(b, q) for b in blocks])
    got = global_cosines(blocks, q, threads=threads)
    assert got.dtype == np.float32 and got.shape == (sum(sizes),)
    np.testing.assert_array_equal(got, expected)
    assert global_cosines([], q, threads=threads).shape == (0,)


def test_a_float16_row_has_the_cosine_of_its_exact_float32_widening() -> None:
    """float16 rows are widened in chunks: the same values as widening the whole array first, whatever the rows."""
    rng = np.random.default_rng(4)
    g = l2_normalize(rng.standard_normal((700, 1280))).astype(np.float16)
    q = l2_normalize(rng.standard_normal(1280))
    whole = global_cosine(g, q)
    np.testing.assert_array_equal(whole, global_cosine(g.astype(np.float32), q))
    for rows in (slice(3, 4), slice(255, 513), [699, 0, 256]):
        np.testing.assert_array_equal(global_cosine(g[rows], q), whole[rows])


def _crowded(rng: np.random.Generator, q: np.ndarray, n: int) -> np.ndarray:
    """``n`` unit float16 rows in random directions whose cosines with ``q`` lie within 1e-3 of 0.6: most differ by
    far less than the float16 product's error (query rounding, output rounding), so its order is not theirs."""
    other = rng.standard_normal((n, q.size))
    other = l2_normalize(other - np.outer(other @ q, q))
    c = rng.uniform(0.6, 0.601, (n, 1))
    rows = c * q + np.sqrt(1 - c**2) * other
    rows[::7] = rows[0]  # exact ties too
    return l2_normalize(rows).astype(np.float16)


@pytest.mark.parametrize("dim", [16, 1280])
def test_the_float16_product_stays_within_its_bound(dim: int) -> None:
    rng = np.random.default_rng(dim)
    for _ in range(3):
        q = l2_normalize(rng.standard_normal(dim))  # not a float16 vector: the product rounds it
        spread = l2_normalize(rng.standard_normal((2000, dim))).astype(np.float16)
        rows = np.concatenate([_crowded(rng, q, 2000), spread])
        approx, bound = cosine._float16_bound([rows[:1500], rows[1500:]], q)
        error = np.abs(approx - global_cosine(rows, q))
        assert error.max() <= bound < 5e-3
        assert error.max() > 0  # the product is not exact: the bound is needed


@pytest.mark.parametrize("limit", [1, 10, 100, 5000])
@pytest.mark.parametrize("dim", [16, 1280])
def test_the_best_float16_cosines_are_those_of_ranking_every_exact_cosine(limit: int, dim: int,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the float16 product's errors within its bound (here the worst: each row's approximation anywhere in
    it, so its order is not the exact one), the rows found are those of ranking every exact cosine."""
    rng = np.random.default_rng(limit + dim)
    q = l2_normalize(rng.standard_normal(dim))
    rows = _crowded(rng, q, 3000)
    blocks = [rows[:1000], rows[1000:1000], rows[1000:2999], rows[2999:]]
    exact = global_cosines(blocks, q)
    noise = rng.uniform(-1.0, 1.0, exact.size).astype(np.float32)
    bound = 1e-3
    monkeypatch.setattr(cosine, "_float16_bound", lambda b, v: (exact + bound * noise, bound))
    positions, cosines = top_global_cosines(blocks, q, limit)
    expected = top_positions(exact, limit)
    np.testing.assert_array_equal(positions, expected)
    np.testing.assert_array_equal(cosines, exact[expected])
    assert positions.size >= min(limit, 3000)
    f32 = [b.astype(np.float32) for b in blocks]
    positions, cosines = top_global_cosines(f32, q, limit)
    np.testing.assert_array_equal(positions, top_positions(global_cosines(f32, q), limit))
    assert top_global_cosines([], q, limit)[0].size == 0 and top_global_cosines(blocks, q, 0)[0].size == 0


def test_the_index_keeps_unit_float16_globals_and_reads_float32_snapshots(tmp_path: Path) -> None:
    video = make_synthetic_video(num_frames=30, num_scenes=3, features_per_frame=16, local_dim=32, global_dim=16,
                                 num_queries=1, seed=6)
    wide = RollingIndex(IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, global_dtype="float32"))
    scaled = [replace(f, global_descriptor=(3.0 * f.global_descriptor).astype(np.float32)) for f in video.features]
    wide.add(video.keys, scaled)
    assert all(s.globals.dtype == np.float32 for s in wide.shards())
    save_index(wide, tmp_path / "snap")
    narrow, _, _ = load_index(tmp_path / "snap", replace(wide.config, global_dtype="float16"))
    index = RollingIndex(replace(wide.config, global_dtype="float16"))
    index.add(video.keys, scaled)
    for a, b in zip(narrow.shards(), index.shards(), strict=True):
        assert a.globals.dtype == b.globals.dtype == np.float16
        np.testing.assert_array_equal(a.globals, b.globals)
        np.testing.assert_allclose(np.linalg.norm(a.globals.astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert index.stats().nbytes < wide.stats().nbytes
    save_index(index, tmp_path / "again")
    loaded, _, _ = load_index(tmp_path / "again")
    for a, b in zip(loaded.shards(), index.shards(), strict=True):
        np.testing.assert_array_equal(a.globals, b.globals)  # bit for bit, not normalised again
