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
from stream.settings import QuerySettings

CONFIG = RetrievalConfig(rerank_k=12, shortlist=40, global_shortlist=8, graph_features=16)


def _packed(max_bytes: int, *, max_version: int = 1, global_dtype: str = "float16"):
    return _pack(max_bytes, max_version=max_version, global_dtype=global_dtype)[:3]


def _pack(max_bytes: int, *, max_version: int = 1, global_dtype: str = "float16", rerank_dtype: str = "int8"):
    video = make_synthetic_video(num_frames=60, num_scenes=6, features_per_frame=32, local_dim=32, global_dim=16,
                                 num_queries=1, seed=4)
    index = RollingIndex(IndexConfig(local_dim=32, global_dim=16, retention_seconds=None, rerank_features=24,
                                     global_dtype=global_dtype, rerank_dtype=rerank_dtype))  # type: ignore[arg-type]
    index.add(video.keys, video.features)
    plan = SearchPlan.build("l2g", 5, CONFIG)
    prepared = prepare_query(video.queries[0], CONFIG, 32, 16)
    sent = stage1(index, prepared, plan, CONFIG).cut(plan.transport.candidates)
    base = CandidatePartial(query_id="q", worker_id="w", answer_id="a", mode="l2g", k=5, local_dim=32, global_dim=16,
                            deadline=1e10, query_features=query_payload(prepared, plan.transport))
    packed = pack_partials(base, [PartitionList(0, sent)], plan.transport, max_bytes, source="w",
                           max_version=max_version)
    return sent, plan, [s for p in packed for s in p.partial.sections], packed


@pytest.mark.parametrize("max_version", [1, 2, 3])
@pytest.mark.parametrize("max_bytes", [1_000_000, 12_000, 7_000])
def test_the_joined_tail_travels_whole_and_described(max_bytes: int, max_version: int) -> None:
    sent, plan, sections = _packed(max_bytes, max_version=max_version)
    assert {s.global_dtype for s in sections} == {"float16" if max_version >= 2 else None}
    assert {s.descriptor_dtype for s in sections if s.descriptors} == {"int8" if max_version >= 3 else None}
    assert sent.joined == 8 and sent.ranked == plan.transport.candidates == 12
    if max_bytes < 1_000_000 and (max_bytes, max_version) != (12_000, 3):  # (int8: 12 kB holds more)
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


@pytest.mark.parametrize("max_version", [2, 3])
def test_compact_partials_travel_exactly_at_the_version_that_carries_them(max_version: int) -> None:
    sent, _, sections, packed = _pack(1_000_000, max_version=max_version)
    wide = _pack(1_000_000, max_version=1)[3]
    assert [p.partial.version for p in packed] == [max_version] and [p.partial.version for p in wide] == [1]
    back = candidates_from_sections(sections, "local", 32, 16)
    assert back.global_descriptors.dtype == np.float32
    np.testing.assert_array_equal(back.global_descriptors, sent.global_descriptors)
    for a, b in zip(back.descriptors, sent.descriptors, strict=True):
        assert a.dtype == np.float16
        np.testing.assert_array_equal(a, b[:a.shape[0]])
    narrow_bytes = sum(len(s.global_descriptors) for s in sections)
    assert narrow_bytes * 2 == sum(len(s.global_descriptors) for p in wide for s in p.partial.sections)
    assert len(packed[0].message.value) < len(wide[0].message.value)
    # it decodes at its version; an older version cannot claim what only a newer one carries
    assert decode_message(packed[0].message.value, packed[0].message.headers, CandidatePartial).version == max_version
    with pytest.raises(ValueError, match=f"version {max_version}"):
        CandidatePartial.model_validate({**packed[0].partial.model_dump(), "version": max_version - 1})
    with pytest.raises(ValueError, match="newer than this reader"):
        CandidatePartial.model_validate({**packed[0].partial.model_dump(),
                                         "version": CandidatePartial.KIND_VERSION + 1})


def test_the_worker_writes_the_newest_partial_version_it_reads() -> None:
    assert QuerySettings().partial_version == CandidatePartial.KIND_VERSION == 3
    with pytest.raises(ValueError):
        QuerySettings(partial_version=CandidatePartial.KIND_VERSION + 1)


def test_values_that_a_compact_encoding_would_change_travel_as_they_are() -> None:
    """An index of float32 globals and float16 re-rank features: float16 globals and int8 codes would round them,
    so the partial stays at version 1."""
    sent, _, sections, packed = _pack(1_000_000, max_version=3, global_dtype="float32", rerank_dtype="float16")
    assert {(s.global_dtype, s.descriptor_dtype) for s in sections} == {(None, None)}
    assert packed[0].partial.version == 1
    back = candidates_from_sections(sections, "local", 32, 16)
    np.testing.assert_array_equal(back.global_descriptors, sent.global_descriptors)
    for a, b in zip(back.descriptors, sent.descriptors, strict=True):
        np.testing.assert_array_equal(a, b[:a.shape[0]])


def test_int8_scales_must_match_the_descriptors() -> None:
    _, _, sections, _ = _pack(1_000_000, max_version=3)
    sec = next(s for s in sections if s.descriptor_dtype == "int8")
    with pytest.raises(ValueError, match="descriptor_scales"):
        type(sec).model_validate({**sec.model_dump(), "descriptor_scales": sec.descriptor_scales[:-2]})
    with pytest.raises(ValueError, match="descriptor_scales"):
        type(sec).model_validate({**sec.model_dump(), "descriptor_dtype": None})
