"""Issue 11, query path, against the real broker: no partial stops a worker, no query goes unanswered.

* A schema-valid candidate partial whose dimensions contradict its own query features (or its query's other
  partials, or whose mode and k make no plan) is dead-lettered at stage ``merge``; the worker keeps answering.
* A query whose deadline had passed when it was read (a client clock 40 s behind) is answered, with a note.
* Two queries that reuse one ``query_id`` are both answered.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from stream.broker import EmbeddedBroker
from stream.client import QueryClient, publish_segments
from stream.envelope import encode_message
from stream.messages import CandidatePartial, CandidateSection, DeadLetter, Query, QueryFeatures
from stream.video import SyntheticCamera, encode_segments
from stream.worker import Worker

from .conftest import kafka_settings, read_topic
from .test_stream_kafka import FPS, START, png, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def _features(count: int, dim: int, global_dim: int) -> QueryFeatures:
    return QueryFeatures(count=count, descriptors=np.ones((count, dim), "<f4").tobytes(),
                         keypoints=np.zeros((count, 2), "<f4").tobytes(),
                         global_descriptor=np.ones(global_dim, "<f4").tobytes())


def _poison(worker_id: str) -> list[CandidatePartial]:
    """Schema-valid partials that contradict themselves or their query."""
    now = time.time()
    base = {"worker_id": worker_id, "answer_id": uuid.uuid4().hex, "video_topic": "v", "deadline": now + 2.0,
            "k": 3, "mode": "l2g", "stage": "local"}
    wrong_section = CandidateSection(partition=0, total=1, cameras=["cam"], timestamps=[START], sequences=[0],
                                     scores=np.ones(1, "<f4").tobytes(), global_descriptors=b"\x00" * 12,
                                     descriptor_counts=[2], descriptors=b"\x00" * 10)
    return [
        # the reported case: global_dim / local_dim that do not match the query features
        CandidatePartial(query_id="poison-dims", local_dim=32, global_dim=16, query_features=_features(4, 48, 8),
                         **base),
        # arrays of a section that do not match the declared dimensions
        CandidatePartial(query_id="poison-section", local_dim=32, global_dim=16, query_features=_features(4, 32, 16),
                         sections=[wrong_section], partitions=[0], **base),
        # k beyond any plan
        CandidatePartial(query_id="poison-k", local_dim=32, global_dim=16, **{**base, "k": 10**9}),
        # a stage that is not the mode's stage 1
        CandidatePartial(query_id="poison-stage", local_dim=32, global_dim=16, **{**base, "stage": "global"}),
        # zero dimensions
        CandidatePartial(query_id="poison-zero", local_dim=0, global_dim=0, query_features=_features(1, 4, 4),
                         **base),
    ]


def test_poison_partials_are_dead_lettered_and_queries_are_all_answered(kafka_broker: EmbeddedBroker,
                                                                       tmp_path: Path) -> None:
    from stream.kafka import KafkaSink

    settings = kafka_settings(kafka_broker, tmp_path)
    cam = SyntheticCamera(5, 320, 192, world_frames=60)
    sink = KafkaSink(settings.kafka, client_id="it-poison")
    with Worker(settings) as worker:
        assert worker.wait_ready(30)
        segments = list(encode_segments(cam.frames(40), FPS, segment_seconds=2.0))
        chunks = publish_segments(settings, "yard", segments, start_time=START).chunks
        wait_for(lambda: sum(worker.ingest.positions.values()) >= chunks, 60, "ingest")  # type: ignore[union-attr]
        poison = _poison("mallory")
        for partial in poison:
            out = encode_message(partial, source="mallory")
            sink.send(settings.topics.candidates, out.value, key=out.key, headers=out.headers)
        sink.flush()
        crop = png(cam.frame(20)[32:160, 64:256])
        with QueryClient(settings) as client:
            answer = client.ask(crop, timeout_s=10.0, k=3, mode="local")
            # a client whose clock runs 40 s behind: its deadline is in the past when the worker reads it
            late = Query(query_id="late-clock", image=crop, k=3, mode="local", deadline=time.time() - 40.0,
                         sent_at=time.time() - 41.0)
            out = encode_message(late, source="skewed client")
            sink.send(settings.topics.queries, out.value, key=out.key, headers=out.headers)
            sink.flush()
            skewed = client.wait("late-clock", 20.0)
            # one id, two queries: two answers
            client.send(crop, k=3, mode="local", timeout_s=10.0, query_id="reused")
            first = client.wait("reused", 15.0)
            client.send(crop, k=2, mode="global", timeout_s=10.0, query_id="reused")
            second = client.wait("reused", 15.0)
        assert not worker.stopping and worker.ready  # no partial stopped a loop
        assert answer.status == "complete" and (answer.matches[0].camera_id, answer.matches[0].frame) == ("yard", 20)
        assert skewed.status == "complete", skewed
        assert any("in the past when read" in n for n in skewed.coverage.notes)
        assert (first.mode, len(first.matches)) == ("local", 3) and (second.mode, len(second.matches)) == ("global", 2)
        letters = read_topic(settings, settings.topics.dead_letters, DeadLetter, count=len(poison))
        assert sorted(d.original_key for d in letters) == sorted(p.query_id.encode() for p in poison)
        assert {d.stage for d in letters} == {"merge"}
        assert {d.reason for d in letters} <= {"inconsistent_partial", "schema_violation"}
    sink.close()


def test_a_second_recording_of_a_camera_is_indexed_not_dropped_as_duplicate(kafka_broker: EmbeddedBroker,
                                                                             tmp_path: Path) -> None:
    """Issue 11.1: ``publish`` numbers frames from 0 on every call; the event time keeps recordings apart, while a
    replay of the same recording is still dropped as a duplicate."""
    settings = kafka_settings(kafka_broker, tmp_path)
    first = list(encode_segments(SyntheticCamera(6, 320, 192, world_frames=60).frames(20), FPS, segment_seconds=2.0))
    other = list(encode_segments(SyntheticCamera(7, 320, 192, world_frames=60).frames(20), FPS, segment_seconds=2.0))
    with Worker(settings) as worker:
        assert worker.wait_ready(30)
        chunks = publish_segments(settings, "gate-4", first, start_time=START).chunks  # 17:00
        wait_for(lambda: sum(worker.ingest.positions.values()) >= chunks, 60, "ingest")  # type: ignore[union-attr]
        once = len(worker.index or [])
        assert once > 0
        chunks += publish_segments(settings, "gate-4", first, start_time=START + 1800).chunks  # same clip, 17:30
        chunks += publish_segments(settings, "gate-4", other, start_time=START + 3600).chunks  # other clip, 18:00
        chunks += publish_segments(settings, "gate-4", first, start_time=START).chunks  # a replay of 17:00
        wait_for(lambda: sum(worker.ingest.positions.values()) >= chunks, 60, "ingest")  # type: ignore[union-attr]
        assert len(worker.index or []) == 3 * once
        assert worker.metrics.value("l2g_frames_skipped_total", {"reason": "duplicate"}) == once
        with QueryClient(settings) as client:
            res = client.ask(png(SyntheticCamera(7, 320, 192, world_frames=60).frame(10)[32:160, 64:256]),
                             timeout_s=10.0, k=3, mode="local")
        assert res.status == "complete"
        assert res.matches[0].timestamp == pytest.approx(START + 3600 + 1.0, abs=1e-3)


def test_a_chunk_keyed_by_anything_but_its_camera_is_refused(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Issue 11.4: the same chunk sent with keys k1, k2, k3 (and none) landed on several partitions and every frame came
    back several times in one answer. A chunk must be keyed by its camera: others are dead-lettered."""
    from stream.kafka import KafkaSink
    from stream.messages import VideoChunk

    settings = kafka_settings(kafka_broker, tmp_path)
    cam = SyntheticCamera(11, 320, 192, world_frames=40)
    (segment,) = list(encode_segments(cam.frames(20), FPS, segment_seconds=2.0))
    chunk = VideoChunk(camera_id="lane", sequence=0, first_frame=0, start_time=START, fps=FPS, data=segment.data)
    out = encode_message(chunk, source="it")
    sink = KafkaSink(settings.kafka, client_id="it-keys")
    with Worker(settings) as worker:
        assert worker.wait_ready(30)
        for key in (b"k1", b"k2", b"k3", None, b"lane"):
            sink.send(settings.topics.video, out.value, key=key, headers=out.headers)
        sink.flush()
        wait_for(lambda: sum(worker.ingest.positions.values()) >= 5, 60, "ingest")  # type: ignore[union-attr]
        with QueryClient(settings) as client:
            res = client.ask(png(cam.frame(10)[32:160, 64:256]), timeout_s=10.0, k=10, mode="local")
    frames = [(m.camera_id, m.frame) for m in res.matches]
    assert frames and len(frames) == len(set(frames)), frames
    letters = read_topic(settings, settings.topics.dead_letters, DeadLetter, count=4)
    assert sorted((d.reason, d.original_key or b"") for d in letters) == [
        ("key_mismatch", b""), ("key_mismatch", b"k1"), ("key_mismatch", b"k2"), ("key_mismatch", b"k3")]
    sink.close()


def test_event_time_far_ahead_is_refused_and_one_camera_never_evicts_another(kafka_broker: EmbeddedBroker,
                                                                            tmp_path: Path) -> None:
    """Issue 11.3: one valid chunk dated 2096 evicted every frame of its partition (retention ran from the newest time
    seen) and live video was then skipped. Now a chunk beyond ``ingest.max_future_s`` is dead-lettered
    ``time_out_of_range``, and retention runs per camera: a camera a few minutes ahead evicts nobody else."""
    settings = kafka_settings(kafka_broker, tmp_path, index={"retention_seconds": 60.0},
                              ingest={"max_future_s": 300.0})
    cam = SyntheticCamera(12, 320, 192, world_frames=40)
    segments = list(encode_segments(cam.frames(20), FPS, segment_seconds=2.0))
    now = time.time()
    with Worker(settings) as worker:
        assert worker.wait_ready(30)
        chunks = publish_segments(settings, "live", segments, start_time=now - 30).chunks
        wait_for(lambda: sum(worker.ingest.positions.values()) >= chunks, 60, "ingest")  # type: ignore[union-attr]
        live = len(worker.index or [])
        assert live > 0
        chunks += publish_segments(settings, "poison", segments, start_time=4_000_000_000.0).chunks  # year 2096
        chunks += publish_segments(settings, "ahead", segments, start_time=now + 200).chunks  # within the bound
        chunks += publish_segments(settings, "live", segments, start_time=now - 10).chunks  # live video goes on
        wait_for(lambda: sum(worker.ingest.positions.values()) >= chunks, 60, "ingest")  # type: ignore[union-attr]
        cameras = {k.camera_id for _, index in worker.index.items() for s in index.shards() for k in s.keys}  # type: ignore[union-attr]
        assert cameras == {"live", "ahead"}
        assert len(worker.index or []) == 3 * live  # live twice (other times), ahead once; nothing evicted
        assert worker.metrics.value("l2g_frames_skipped_total", {"reason": "duplicate"}) == 0
        assert worker.metrics.value("l2g_index_evicted_frames_total") == 0
    letters = read_topic(settings, settings.topics.dead_letters, DeadLetter, count=len(segments))
    assert {(d.reason, d.original_key) for d in letters} == {("time_out_of_range", b"poison")}
