"""Query answering and the scale-out merge, over the in-memory broker with the toy extractor."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from l2g_core import SearchPlan, search
from stream.envelope import decode_message
from stream.messages import CandidatePartial, VideoChunk
from stream.ports import Partition
from stream.testing import MemoryBroker

from .conftest import START, camera_chunks, camera_frame, make_settings, publish
from .helpers import (
    answered,
    cameras_on_partitions,
    dead_letters,
    ingested,
    png,
    results,
    run_until,
    send_query,
    workers,
)

pytestmark = pytest.mark.timeout(120)

CROP = (slice(32, 160), slice(64, 256))  # rows, cols: aligned to the toy extractor's 16-pixel grid


def load(broker: MemoryBroker, cameras: list[str]) -> int:
    for seed, cam in enumerate(cameras, start=1):
        publish(broker, "l2g.video", camera_chunks(cam, seed))
    return 8 * len(cameras)


def test_a_crop_of_one_frame_is_found_at_its_camera_and_time(tmp_path: Path) -> None:
    broker = MemoryBroker(3)
    cams = cameras_on_partitions(2)
    total = load(broker, cams)
    (w,) = workers(make_settings(tmp_path), broker, 1)
    run_until([w], ingested(broker, [w], total))
    query = png(camera_frame(2, 10)[CROP])  # camera 2 (seed 2), frame 10 (t = START + 1.0)
    qid = send_query(broker, query, k=3, mode="global_to_local")
    l2g = send_query(broker, query, k=3)  # default mode (l2g)
    run_until([w], answered(broker, qid, l2g))
    (res,) = results(broker)[qid]
    assert res.status == "complete", res.coverage
    top = res.matches[0]
    assert (top.camera_id, top.frame) == (cams[1], 10)
    assert top.timestamp == pytest.approx(START + 1.0, abs=1e-3)
    assert set(top.stage_scores) >= {"global", "inliers", "global_to_local"}
    (res2,) = results(broker)[l2g]
    assert res2.mode == "l2g" and (cams[1], 10) in [(m.camera_id, m.frame) for m in res2.matches]
    assert set(res2.matches[0].stage_scores) >= {"local", "global", "l2g"}
    assert set(res.latency_ms) >= {"queue", "decode_image", "extract", "stage1", "stage2", "total", "merge_wait",
                                   "verify"}
    for answer in (res, res2):
        # every match says where its frame lives: the chunk record holding it, and its position among the chunk's
        # decoded frames (the toy chunks keep every frame)
        for m in answer.matches:
            ref = m.frame_ref
            assert ref is not None and ref.topic == "l2g.video"
            (rec,) = broker.read(Partition(ref.topic, ref.partition), ref.offset, 1)
            chunk = decode_message(rec.value, rec.headers, VideoChunk)
            assert chunk.camera_id == m.camera_id and chunk.first_frame + ref.frame_index == m.frame
        # the first verify_top (10 >= k) matches carry a geometric proof or say there is none; the crop's own
        # frame is verified, its outline where the crop was cut (rows 32-160, columns 64-256)
        assert all(m.geometry is not None for m in answer.matches)
        best = next(m for m in answer.matches if (m.camera_id, m.frame) == (cams[1], 10))
        assert best.geometry is not None and best.geometry.status == "verified", best.geometry
        assert best.geometry.box == pytest.approx((64, 32, 256, 160), abs=8)
        assert best.geometry.polygon is not None and len(best.geometry.polygon) == 4
        assert best.geometry.inliers >= 8 and best.geometry.frame_size == (320, 192)
        # segments cover every match once; the best segment holds the best match
        assert sorted(i for seg in answer.segments for i in seg.match_indices) == list(range(len(answer.matches)))
        assert answer.segments[0].match_indices[0] == 0
        assert answer.segments[0].best_frame == answer.matches[0].frame
    assert res.coverage.partitions_searched == res.coverage.partitions_total == 3
    assert res.coverage.frames_searched == total and res.coverage.complete
    assert res.coverage.indexed_from == pytest.approx(START) and res.coverage.indexed_to is not None
    assert w.metrics.value("l2g_queries_total", {"mode": "l2g", "outcome": "ok"}) == 1
    assert w.metrics.value("l2g_query_latency_seconds_count", {"stage": "total"}) == 2
    assert w.metrics.value("l2g_query_latency_seconds_count", {"stage": "extract"}) == 2
    w.stop()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["l2g", "global_to_local", "local", "global"])
def test_several_workers_answer_exactly_like_one(tmp_path: Path, mode: str) -> None:
    cams = cameras_on_partitions(4)
    one, many = MemoryBroker(3), MemoryBroker(3)
    total = load(one, cams)
    load(many, cams)
    settings = make_settings(tmp_path / "one")
    (single,) = workers(settings, one, 1)
    fleet = workers(make_settings(tmp_path / "many"), many, 3)
    run_until([single], ingested(one, [single], total))
    run_until(fleet, ingested(many, fleet, total))
    assert all(len(w.index.partitions()) == 1 for w in fleet if w.index is not None)  # one shard each
    images = [png(camera_frame(1, 5)[CROP]), png(camera_frame(3, 25)[16:176, 0:320])]
    for i, image in enumerate(images):
        q1 = send_query(one, image, k=6, mode=mode, query_id=f"q{i}")
        qn = send_query(many, image, k=6, mode=mode, query_id=f"q{i}")
        run_until([single], answered(one, q1))
        run_until(fleet, answered(many, qn))
        (r1,) = results(one)[q1]
        (rn,) = results(many)[qn]
        assert [m.model_dump() for m in rn.matches] == [m.model_dump() for m in r1.matches]
        assert rn.status == r1.status == "complete"
        assert rn.coverage.frames_searched == r1.coverage.frames_searched == total
        # and both equal a single in-process search over the whole index
        assert single.index is not None and single.query is not None
        feats = single.query.extractor.extract(__import__("stream.decode", fromlist=["x"]).decode_image(image)[None])
        cfg = single.settings.index.retrieval_config()
        indexes = [index for _, index in single.index.items()]
        direct = search(indexes, feats[0], SearchPlan.build(mode, 6, cfg), cfg)
        assert [(h.key.camera_id, h.key.sequence, h.score) for h in direct.hits] == \
            [(m.camera_id, m.frame, m.score) for m in r1.matches]
    # every query was merged by exactly one worker
    assert sum(w.metrics.value("l2g_queries_total") for w in fleet) == len(images)
    partials = [decode_message(r.value, r.headers, CandidatePartial) for r in many.records("l2g.candidates")]
    assert {p.worker_id for p in partials} == {"w0", "w1", "w2"}
    for w in [single, *fleet]:
        w.stop()


def test_partials_larger_than_a_message_are_split_and_reassembled(tmp_path: Path) -> None:
    cams = cameras_on_partitions(3)
    big, small = MemoryBroker(3), MemoryBroker(3)
    total = load(big, cams)
    load(small, cams)
    (wb,) = workers(make_settings(tmp_path / "b"), big, 1)
    (ws,) = workers(make_settings(tmp_path / "s", kafka={"max_message_bytes": 70_000, "max_request_size": 80_000}),
                    small, 1)
    run_until([wb], ingested(big, [wb], total))
    run_until([ws], ingested(small, [ws], total))
    image = png(camera_frame(2, 30)[CROP])
    for broker, w in ((big, wb), (small, ws)):
        qid = send_query(broker, image, k=5, query_id="q", mode="global_to_local")
        run_until([w], answered(broker, qid))
    assert len(small.records("l2g.candidates")) > 2 * len(big.records("l2g.candidates"))
    assert all(len(r.value or b"") <= 70_000 for r in small.records("l2g.candidates"))
    assert [m.model_dump() for m in results(small)["q"][0].matches] == \
        [m.model_dump() for m in results(big)["q"][0].matches]
    wb.stop()
    ws.stop()


def test_a_partition_nobody_searched_gives_a_partial_answer_at_the_deadline(tmp_path: Path) -> None:
    broker = MemoryBroker(3)
    cams = cameras_on_partitions(3)
    total = load(broker, cams)
    settings = make_settings(tmp_path)
    answering = workers(settings, broker, 1)
    silent = workers(settings, broker, 1, prefix="silent", query={"enabled": False})  # owns partitions, no answers
    fleet = answering + silent
    run_until(fleet, ingested(broker, fleet, total))
    qid = send_query(broker, png(camera_frame(1, 10)[CROP]), k=3, deadline=time.time() + 1.0)
    t0 = time.monotonic()
    run_until(fleet, answered(broker, qid), max_steps=100_000)
    (res,) = results(broker)[qid]
    assert 0.8 < time.monotonic() - t0 < 3.0
    assert res.status == "partial"
    cov = res.coverage
    assert not cov.complete and cov.partitions_total == 3 and cov.partitions_searched < 3
    assert any("not searched" in n for n in cov.notes)
    assert answering[0].metrics.value("l2g_queries_total", {"outcome": "partial"}) == 1
    for w in fleet:
        w.stop()


def test_bad_queries_are_dead_lettered_once_and_answered_with_an_error(tmp_path: Path) -> None:
    broker = MemoryBroker(3)
    total = load(broker, cameras_on_partitions(1))
    fleet = workers(make_settings(tmp_path, storage={"allowed_ref_roots": [str(tmp_path)]}), broker, 2)
    run_until(fleet, ingested(broker, fleet, total))
    broker.append("l2g.queries", b"bad-json", b"{nope", [])
    broker.append("l2g.queries", b"bad-k", b'{"kind": "query", "query_id": "bad-k", "image": "AAAA", "k": 0}', [])
    send_query(broker, b"GIF89a not an image", query_id="bad-image")
    send_query(broker, png(camera_frame(1, 0)[:8, :8]), query_id="tiny")
    from stream.envelope import encode_message
    from stream.messages import Query

    out = encode_message(Query(query_id="bad-ref", image_ref="/etc/hostname"), source="t")
    broker.append("l2g.queries", out.key, out.value, out.headers)
    good = send_query(broker, png(camera_frame(1, 10)[CROP]), k=2)
    bad = ["bad-json", "bad-k", "bad-image", "tiny", "bad-ref"]
    run_until(fleet, answered(broker, good, *bad))
    res = results(broker)
    for qid in bad:
        assert len(res[qid]) == 1, qid
        assert res[qid][0].status == "error" and res[qid][0].error
    assert res[good][0].status == "complete" and res[good][0].matches
    letters = dead_letters(broker)
    assert sorted((d.stage, d.reason) for d in letters) == sorted([
        ("query", "invalid_json"), ("query", "schema_violation"), ("query", "unsupported_image"),
        ("query", "bad_image"), ("query", "ref_not_allowed")])
    assert {d.original_topic for d in letters} == {"l2g.queries"}
    assert sum(w.metrics.value("l2g_dead_letters_total", {"stage": "query"}) for w in fleet) == 5
    assert sum(w.metrics.value("l2g_queries_total", {"outcome": "error"}) for w in fleet) == 5
    for w in fleet:
        w.stop()


def test_filters_restrict_cameras_and_time(tmp_path: Path) -> None:
    broker = MemoryBroker(3)
    cams = cameras_on_partitions(2)
    total = load(broker, cams)
    (w,) = workers(make_settings(tmp_path), broker, 1)
    run_until([w], ingested(broker, [w], total))
    image = png(camera_frame(1, 10)[CROP])
    q1 = send_query(broker, image, k=20, cameras=[cams[1]])
    q2 = send_query(broker, image, k=20, time_from=START + 2.0, time_to=START + 3.0)
    run_until([w], answered(broker, q1, q2))
    r = results(broker)
    assert {m.camera_id for m in r[q1][0].matches} <= {cams[1]}
    assert all(START + 2.0 <= m.timestamp <= START + 3.0 for m in r[q2][0].matches)
    w.stop()


def test_query_features_too_large_for_a_message_are_cut_with_a_note(tmp_path: Path) -> None:
    broker = MemoryBroker(3)
    total = load(broker, cameras_on_partitions(1))
    (w,) = workers(make_settings(tmp_path, kafka={"max_message_bytes": 100_000, "max_request_size": 110_000}),
                   broker, 1)
    run_until([w], ingested(broker, [w], total))
    import cv2

    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(camera_frame(1, 10), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    big = bytes(jpg)  # a whole frame: 256 features, 64 KB of float32 (86 KB in base64)
    qid = send_query(broker, big, k=2, mode="global_to_local")
    run_until([w], answered(broker, qid))
    (res,) = results(broker)[qid]
    assert res.status == "complete" and res.matches[0].frame == 10
    assert any(n.startswith("query features cut to the strongest") for n in res.coverage.notes)
    assert all(len(r.value or b"") <= 100_000 for r in broker.records("l2g.candidates"))
    w.stop()


def test_a_query_image_that_crashes_the_extractor_is_answered_with_an_error(tmp_path: Path) -> None:
    """Issue 11: no message stops a worker. A query extractor that crashes (a bug, not bad input) gives the asker an
    error result and a dead letter ``extractor_crash`` with the query (to reproduce it); the worker goes on."""
    from plugins import get_extractor
    from stream.ports import FeatureExtractor
    from stream.settings import Settings
    from stream.testing import MemoryConnector
    from stream.worker import Worker

    from .test_ingest import FaultyExtractor

    broker = MemoryBroker(3)
    load(broker, cameras_on_partitions(1))
    made: list[object] = []

    def factory(settings: Settings) -> FeatureExtractor:  # the ingest extractor is sound, the query one crashes
        made.append(None)
        return get_extractor("toy") if len(made) == 1 else FaultyExtractor(lambda: RuntimeError("boom"), bad="always")

    worker = Worker(make_settings(tmp_path), connector=MemoryConnector(broker), extractor_factory=factory).open()
    qid = send_query(broker, png(camera_frame(1, 10)[CROP]), k=3)
    run_until([worker], answered(broker, qid))
    (res,) = results(broker)[qid]
    assert res.status == "error" and "extractor_crash" in (res.error or "") and "boom" in (res.error or "")
    assert [(d.stage, d.reason) for d in dead_letters(broker)] == [("query", "extractor_crash")]
    assert worker.metrics.value("l2g_extractor_errors_total") == 1
    assert not worker.stopping
    worker.stop()
