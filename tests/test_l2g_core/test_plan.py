"""The search plan: one validation of (mode, k), what each stage keeps, and exactness of the sharded protocol."""

from __future__ import annotations

import numpy as np
import pytest

from l2g_core import (
    MAX_K,
    MODES,
    ConfigError,
    IndexConfig,
    RetrievalConfig,
    RollingIndex,
    SearchPlan,
    merge_candidates,
    prepare_query,
    search,
    stage1,
    stage2,
)
from l2g_core.datasets import make_synthetic_video

CFG = RetrievalConfig(shortlist=80, rerank_k=40, g2l_shortlist=30, graph_features=16)


@pytest.mark.parametrize(("mode", "k", "shortlist", "stage", "rerank"), [
    ("global", 5, 5, "global", None),
    ("local", 5, 5, "local", None),
    ("global_to_local", 5, 30, "global", "ransac"),
    ("global_to_local", 50, 50, "global", "ransac"),
    ("l2g", 5, 80, "local", "l2g"),
    ("l2g", 200, 200, "local", "l2g"),
])
def test_plan_keeps_what_each_stage_needs(mode: str, k: int, shortlist: int, stage: str, rerank: str | None) -> None:
    plan = SearchPlan.build(mode, k, CFG)
    assert (plan.mode, plan.k, plan.shortlist, plan.stage1, plan.rerank) == (mode, k, shortlist, stage, rerank)
    assert plan.transport.candidates <= plan.shortlist
    if mode == "l2g":  # stage 2 sees the first rerank_k with graph_features descriptors; no keypoints
        assert plan.transport.candidates == max(k, CFG.rerank_k)
        assert (plan.transport.described, plan.transport.descriptors) == (CFG.rerank_k, CFG.graph_features)
        assert not plan.transport.keypoints and plan.transport.query_features == CFG.graph_features
    elif mode == "global_to_local":  # RANSAC of every candidate: all descriptors and keypoints, all query features
        assert plan.transport.described == plan.shortlist and plan.transport.keypoints
        assert plan.transport.descriptors is None and plan.transport.query_features is None
    else:
        assert plan.transport.described == 0 and plan.transport.query_features == 0


@pytest.mark.parametrize(("mode", "k"), [("magic", 5), ("l2g", 0), ("l2g", MAX_K + 1), ("local", -3),
                                         ("global", True), ("global", 2.5)])
def test_plan_refuses_bad_mode_and_k(mode: str, k: int) -> None:
    with pytest.raises(ConfigError):
        SearchPlan.build(mode, k, CFG)


def test_modes_are_the_plan_literal() -> None:
    assert MODES == ("global", "global_to_local", "local", "l2g")


@pytest.mark.parametrize("mode", MODES)
def test_search_over_split_indexes_equals_one_index(mode: str) -> None:
    """Stage 1 per index, merge, stage 2 once: the same hits as one index holding every frame."""
    video = make_synthetic_video(num_frames=90, num_scenes=9, num_cameras=3, features_per_frame=48, local_dim=32,
                                 global_dim=16, num_queries=3, noise=0.5, global_noise=0.8, seed=3)
    config = IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, bucket_seconds=10.0)
    whole = RollingIndex(config)
    parts = [RollingIndex(config) for _ in range(3)]
    whole.add(video.keys, video.features)
    for key, feat in zip(video.keys, video.features, strict=True):
        parts[int(key.camera_id.split("-")[1])].add([key], [feat])
    plan = SearchPlan.build(mode, 10, CFG)
    for query in video.queries:
        one = search([whole], query, plan, CFG)
        split = search(parts, query, plan, CFG)
        assert one.hits
        assert [(h.key, h.score) for h in split.hits] == [(h.key, h.score) for h in one.hits]
        assert (split.coverage.partitions_searched, split.coverage.partitions_total) == (3, 3)
        assert split.coverage.frames_searched == one.coverage.frames_searched == len(video.keys)
        assert split.coverage.indexed_from == one.coverage.indexed_from == video.keys[0].timestamp
        # and the three steps by hand give the same again
        prepared = prepare_query(query, CFG, 32, 16)
        lists = [stage1(index, prepared, plan, CFG) for index in parts]
        ranking = stage2(prepared, merge_candidates(lists, plan, prepared), plan, CFG)
        assert [h.key for h in ranking.hits] == [h.key for h in one.hits]


def test_the_l2g_list_always_holds_the_reranked_head() -> None:
    plan = SearchPlan.build("l2g", 5, CFG.replace(shortlist=20, rerank_k=60))
    assert plan.shortlist == 60 and plan.transport.candidates == 60


@pytest.mark.parametrize("k", [5, 40, 70, 200])
def test_a_longer_l2g_shortlist_changes_no_answer(k: int) -> None:
    """Only the first ``rerank_k`` are re-ranked and the rest keep their stage-1 order, so the list length past
    ``max(k, rerank_k)`` changes nothing (why the default went from 700 to 100), split over indexes or not."""
    video = make_synthetic_video(num_frames=240, num_scenes=12, num_cameras=3, features_per_frame=48, local_dim=32,
                                 global_dim=16, num_queries=4, noise=0.5, global_noise=0.8, seed=5)
    config = IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, bucket_seconds=10.0)
    parts = [RollingIndex(config) for _ in range(3)]
    for key, feat in zip(video.keys, video.features, strict=True):
        parts[int(key.camera_id.split("-")[1])].add([key], [feat])
    short, long_ = CFG.replace(shortlist=CFG.rerank_k, global_shortlist=10), CFG.replace(shortlist=230,
                                                                                        global_shortlist=10)
    for query in video.queries:
        a = search(parts, query, SearchPlan.build("l2g", k, short), short)
        b = search(parts, query, SearchPlan.build("l2g", k, long_), long_)
        assert len(a.hits) == min(k, len(video.keys))
        assert [(h.key, h.score) for h in a.hits] == [(h.key, h.score) for h in b.hits]


def test_search_needs_an_index_and_an_ordered_time_range() -> None:
    video = make_synthetic_video(num_frames=4, num_scenes=2, num_cameras=1, features_per_frame=16, local_dim=32,
                                 global_dim=16, num_queries=1, seed=1)
    index = RollingIndex(IndexConfig(local_dim=32, global_dim=16))
    plan = SearchPlan.build("local", 3, CFG)
    with pytest.raises(ConfigError):
        search([], video.queries[0], plan, CFG)
    with pytest.raises(ConfigError):
        search([index], video.queries[0], plan, CFG, time_range=(5.0, 1.0))
    assert search([index], video.queries[0], plan, CFG).hits == []
    assert np.isfinite(search([index], video.queries[0], plan, CFG).timings_ms["total"])
