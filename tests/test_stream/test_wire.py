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
from stream.envelope import decode_message
from stream.errors import SchemaError
from stream.messages import CandidatePartial
from stream.query.wire import PartitionList, candidates_from_sections, pack_partials, query_payload

CONFIG = RetrievalConfig(rerank_k=12, shortlist=40, global_shortlist=8, graph_features=16)


def _packed(max_bytes: int, *, float16_globals: bool = False, global_dtype: str = "float16"):
    return _pack(max_bytes, float16_globals=float16_globals, global_dtype=global_dtype)[:3]


def _pack(max_bytes: int, *, float16_globals: bool = False, global_dtype: str = "float16"):
    video = make_synthetic_video(num_frames=60, num_scenes=6, features_per_frame=32, local_dim=32, global_dim=16,
                                 num_queries=1, seed=4)
    index = RollingIndex(IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, rerank_features=24,
                                     global_dtype=global_dtype))  # type: ignore[arg-type]
    index.add(video.keys, video.features)
    plan = SearchPlan.build("l2g", 5, CONFIG)
    prepared = prepare_query(video.queries[0], CONFIG, 32, 16)
    sent = stage1(index, prepared, plan, CONFIG).cut(plan.transport.candidates)
    base = CandidatePartial(query_id="q", worker_id="w", answer_id="a", mode="l2g", k=5, local_dim=32, global_dim=16,
                            deadline=1e10, query_features=query_payload(prepared, plan.transport))
    packed = pack_partials(base, [PartitionList(0, sent)], plan.transport, max_bytes, source="w",
                           float16_globals=float16_globals)
    return sent, plan, [s for p in packed for s in p.partial.sections], packed


@pytest.mark.parametrize("float16_globals", [False, True])
@pytest.mark.parametrize("max_bytes", [1_000_000, 12_000])
def test_the_joined_tail_travels_whole_and_described(max_bytes: int, float16_globals: bool) -> None:
    sent, plan, sections = _packed(max_bytes, float16_globals=float16_globals)
    assert {s.global_dtype for s in sections} == {"float16" if float16_globals else None}
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


def test_float16_globals_travel_exactly_in_a_version_2_partial_a_fifth_smaller() -> None:
    sent, _, sections, packed = _pack(1_000_000, float16_globals=True)
    wide = _pack(1_000_000, float16_globals=False)[3]
    assert [p.partial.version for p in packed] == [2] and [p.partial.version for p in wide] == [1]
    back = candidates_from_sections(sections, "local", 32, 16)
    assert back.global_descriptors.dtype == np.float32
    np.testing.assert_array_equal(back.global_descriptors, sent.global_descriptors)
    narrow_bytes = sum(len(s.global_descriptors) for s in sections)
    assert narrow_bytes * 2 == sum(len(s.global_descriptors) for p in wide for s in p.partial.sections)
    assert len(packed[0].message.value) < len(wide[0].message.value)
    # the partial decodes as a version-2 message; a version-1 partial cannot claim float16 sections
    assert decode_message(packed[0].message.value, packed[0].message.headers, CandidatePartial).version == 2
    with pytest.raises(ValueError, match="version 2"):
        CandidatePartial.model_validate({**packed[0].partial.model_dump(), "version": 1})
    with pytest.raises(ValueError, match="newer than this reader"):
        CandidatePartial.model_validate({**packed[0].partial.model_dump(), "version": 3})


def test_float32_globals_that_float16_would_change_travel_as_float32() -> None:
    """An index of float32 globals: float16 would round them, so the partial stays float32 (version 1)."""
    sent, _, sections, packed = _pack(1_000_000, float16_globals=True, global_dtype="float32")
    assert {s.global_dtype for s in sections} == {None} and packed[0].partial.version == 1
    np.testing.assert_array_equal(candidates_from_sections(sections, "local", 32, 16).global_descriptors,
                                  sent.global_descriptors)
