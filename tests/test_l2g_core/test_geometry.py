"""The geometric proof of a match (l2g_core.geometry.find_geometry / verify_hits) and what the plan ships for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from l2g_core import IndexConfig, RetrievalConfig, RollingIndex, SearchPlan
from l2g_core.candidates import Candidates
from l2g_core.geometry import find_geometry, verify_hits
from l2g_core.index.persistence import load_index, save_index
from l2g_core.prepared import PreparedQuery
from l2g_core.types import FrameFeatures, FrameKey, FrameSource, Hit, l2_normalize

CFG = RetrievalConfig()


def scene(seed: int = 0, n: int = 120, d: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return l2_normalize(rng.normal(size=(n, d)).astype(np.float32)), \
        rng.uniform([0, 0], [200, 100], size=(n, 2)).astype(np.float32)


def test_the_query_outline_lands_where_the_crop_was_cut() -> None:
    desc, kps = scene()
    # the frame: the query scaled by 1.5 and moved to (100, 50), plus 60 distractors
    frame_kps = kps * 1.5 + np.array([100.0, 50.0], np.float32)
    noise_desc, noise_kps = scene(1, 60)
    g = find_geometry(desc, kps, (100, 200), np.concatenate([desc, noise_desc]).astype(np.float16),
                      np.concatenate([frame_kps, noise_kps * 3]), (360, 640), min_similarity=0.8, threshold=3.0)
    assert g.status == "verified" and g.model == "homography" and g.inliers >= 100 and g.reason is None
    assert g.polygon is not None and g.transform is not None and g.transform.shape == (3, 3)
    np.testing.assert_allclose(g.polygon, [[100, 50], [400, 50], [400, 200], [100, 200]], atol=0.5)
    assert g.box == pytest.approx((100, 50, 400, 200), abs=0.5)
    # clipped to the frame
    moved = (kps * 1.5 + np.array([500.0, 300.0])).astype(np.float32)
    g2 = find_geometry(desc, kps, (100, 200), desc, moved, (360, 640), min_similarity=0.8, threshold=3.0)
    assert g2.box is not None and g2.box[2] == 640.0 and g2.box[3] == 360.0


def test_no_consistent_geometry_says_why() -> None:
    desc, kps = scene()
    rng = np.random.default_rng(5)
    few = find_geometry(desc, kps, (100, 200), desc[:5], kps[:5], None, min_similarity=0.8, threshold=3.0)
    assert few.status == "no_geometry" and "too few correspondences" in (few.reason or "")
    shuffled = find_geometry(desc, kps, (100, 200), desc, rng.uniform(0, 640, size=kps.shape).astype(np.float32),
                             None, min_similarity=0.8, threshold=3.0)
    assert shuffled.status == "no_geometry" and shuffled.transform is None and shuffled.polygon is None
    assert shuffled.correspondences == len(desc) and "no consistent geometry" in (shuffled.reason or "")


def test_verify_hits_proves_the_first_top_and_leaves_the_rest() -> None:
    desc, kps = scene()
    keys = [FrameKey("cam", float(i), i) for i in range(3)]
    cands = Candidates(keys=keys, scores=np.array([0.9, 0.5, 0.1], np.float32), stage="local",
                       global_descriptors=np.zeros((3, 4), np.float32),
                       descriptors=[desc.astype(np.float16), np.zeros((0, 32), np.float16), desc.astype(np.float16)],
                       keypoints=[kps + 10, np.zeros((0, 2), np.float32), kps])
    query = PreparedQuery(desc, kps, np.full(4, 0.5, np.float32))
    hits = [Hit(k, s) for k, s in zip(keys, (0.9, 0.5, 0.1), strict=True)]
    out = verify_hits(query, (100, 200), cands, hits, 2, config=CFG)
    assert out[0] is not None and out[0].status == "verified"
    assert out[1] is not None and out[1].status == "no_geometry" and out[2] is None


def test_plan_ships_what_the_proof_needs_without_changing_what_ranking_reads() -> None:
    cfg = RetrievalConfig(shortlist=80, rerank_k=40, graph_features=16)
    for mode in ("global", "local", "global_to_local", "l2g"):
        plain, proof = SearchPlan.build(mode, 5, cfg), SearchPlan.build(mode, 5, cfg, verify=10)
        assert (proof.verify, proof.transport.verified, proof.transport.keypoints) == (5, 5, True)
        assert (proof.shortlist, proof.stage1, proof.rerank) == (plain.shortlist, plain.stage1, plain.rerank)
        assert (proof.transport.candidates, proof.transport.described, proof.transport.descriptors) == \
            (plain.transport.candidates, plain.transport.described, plain.transport.descriptors)
        assert proof.transport.query_features is None or proof.transport.query_features >= 256
    with pytest.raises(ValueError):
        SearchPlan.build("l2g", 5, cfg, verify=-1)


def test_frame_sources_survive_a_snapshot_and_take_no_part_in_identity(tmp_path: Path) -> None:
    config = IndexConfig(local_dim=32, global_dim=4, retention_seconds=None)
    index = RollingIndex(config)
    desc, kps = scene()
    feat = FrameFeatures.create(desc, kps, np.ones(len(desc)), np.ones(4), (100, 200))
    with_source = FrameKey("cam", 10.0, 3, FrameSource(2, 41, 7, 200, 100))
    index.add([with_source, FrameKey("cam", 11.0, 4)], [feat, feat])
    assert with_source == FrameKey("cam", 10.0, 3) and index.contains(FrameKey("cam", 10.0, 3))
    save_index(index, tmp_path)
    loaded, _, _ = load_index(tmp_path)
    keys = sorted(k for s in loaded.shards() for k in s.keys)
    assert [k.source for k in keys] == [FrameSource(2, 41, 7, 200, 100), None]
