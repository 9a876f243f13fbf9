"""The candidate-partial wire format carries an L2G list's joined tail exactly, split over messages or not."""

from __future__ import annotations

import numpy as np
import pytest

from l2g_core import (
    IndexConfig,
    RetrievalConfig,
    RollingIndex,
    SearchPlan,
    prepare_query,
    stage1,
)
from l2g_core.datasets import make_synthetic_video
from stream.errors import SchemaError
from stream.messages import CandidatePartial
from stream.query.wire import PartitionList, candidates_from_sections, pack_partials, query_payload

CONFIG = RetrievalConfig(rerank_k=12, shortlist=40, global_shortlist=8, graph_features=16)


def _packed(max_bytes: int):
    video = make_synthetic_video(num_frames=60, num_scenes=6, features_per_frame=32, local_dim=32, global_dim=16,
                                 num_queries=1, seed=4)
    index = RollingIndex(IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, rerank_features=24))
    index.add(video.keys, video.features)
    plan = SearchPlan.build("l2g", 5, CONFIG)
    prepared = prepare_query(video.queries[0], CONFIG, 32, 16)
    sent = stage1(index, prepared, plan, CONFIG).cut(plan.transport.candidates)
    base = CandidatePartial(query_id="q", worker_id="w", answer_id="a", mode="l2g", k=5, local_dim=32, global_dim=16,
                            deadline=1e10, query_features=query_payload(prepared, plan.transport))
    packed = pack_partials(base, [PartitionList(0, sent)], plan.transport, max_bytes, source="w")
    return sent, plan, [s for p in packed for s in p.partial.sections]


@pytest.mark.parametrize("max_bytes", [1_000_000, 12_000])
def test_the_joined_tail_travels_whole_and_described(max_bytes: int) -> None:
    sent, plan, sections = _packed(max_bytes)
    assert sent.joined == 8 and sent.ranked == plan.transport.candidates == 12
    if max_bytes < 1_000_000:
        assert len(sections) > 2  # split, the tail across slices too
    back = candidates_from_sections(sections, "local", 32, 16)
    assert back.keys == sent.keys and back.joined == sent.joined
    np.testing.assert_array_equal(back.scores, sent.scores)
    np.testing.assert_array_equal(back.global_descriptors, sent.global_descriptors)
    counts = [d.shape[0] for d in back.descriptors]
    # the ranking's best rerank_k and every tail entry carry graph_features descriptors
    assert counts == [16] * len(sent)
    for a, b in zip(back.descriptors, sent.descriptors, strict=True):
        np.testing.assert_array_equal(a, b[:16])


def test_slices_that_disagree_on_the_tail_are_refused() -> None:
    _, _, sections = _packed(12_000)
    forged = [sections[0].model_copy(update={"joined": 3}), *sections[1:]]
    with pytest.raises(SchemaError, match="joined tail"):
        candidates_from_sections(forged, "local", 32, 16)
    with pytest.raises(ValueError, match="joined tail is longer"):
        type(sections[0]).model_validate({**sections[0].model_dump(), "joined": sections[0].total + 1})
