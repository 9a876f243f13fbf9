"""A model much slower than the video: the worker sheds load instead of stalling its consumer group.

The ``slowtoy`` extractor (tests.reliability.worker_harness) sleeps 1 s per frame, so at the configured 2 frames per
second per camera the worker needs 2 s of extraction per second of video and camera, while a backlog of two cameras
waits in the topic. With the group timings of the tests (``max_poll_interval_ms=8000``) one poll of 4 one-second
chunks at the full rate is 8 s of extraction: a worker that kept every sampled frame blocks its poll loop past the
interval and is thrown out of its group (the control run, ``load_shed=False``, shows it). The ingest loop must instead
lower ``l2g_sampling_fps`` (counting ``l2g_frames_skipped_total{reason="load_shed"}``), stay in the group (one
assignment, no rebalance), keep ``/healthz`` green, and still consume and commit every chunk.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from stream.broker import EmbeddedBroker, free_port
from stream.client import publish_segments
from stream.kafka import KafkaSink, ensure_topics
from stream.kafka.admin import committed_offsets
from stream.video import SyntheticCamera, encode_segments
from stream.worker import Worker
from tests.reliability import faults, worker_harness

from .conftest import kafka_settings

assert worker_harness.SlowToyExtractor.name == "slowtoy"  # importing it registers the extractor
pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FPS = 10.0
SECONDS = 40
SLEEP_PER_FRAME = "1.0"
START = 1_700_000_000.0


@pytest.mark.timeout(300)
def test_slow_extractor_sheds_load_without_a_rebalance(kafka_broker: EmbeddedBroker, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("L2G_TEST_SLEEP_PER_FRAME", SLEEP_PER_FRAME)
    http_port = free_port()
    settings = kafka_settings(
        kafka_broker, tmp_path,
        ingest={"sample_fps": 2.0, "min_sample_fps": 0.2, "load_shed": True, "lag_high_messages": 6,
                "lag_low_messages": 1, "max_poll_records": 4, "batch_size": 4, "commit_interval_s": 1.0},
        extractor={"name": "slowtoy"}, http={"port": http_port}, query={"enabled": False})
    cams = {"lobby": SyntheticCamera(31, 256, 160, world_frames=400),
            "yard": SyntheticCamera(32, 256, 160, world_frames=400)}
    frames = int(SECONDS * FPS)
    segments = {n: list(encode_segments(c.frames(frames), FPS, segment_seconds=1.0)) for n, c in cams.items()}
    chunks = sum(len(s) for s in segments.values())
    url = f"http://127.0.0.1:{http_port}"

    ensure_topics(settings)  # clients never create topics
    sink = KafkaSink(settings.kafka, client_id="it-fault-slow")
    for name, segs in segments.items():  # the backlog is there before the worker starts
        publish_segments(settings, name, segs, start_time=START, sink=sink)
    sink.close()

    worker = Worker(settings).start()
    rates: list[float] = []
    health: list[int] = []
    t0 = time.monotonic()
    try:
        assert worker.wait_ready(60)

        def done() -> bool:
            samples = faults.scrape_labelled(url, "l2g_sampling_fps")
            if samples:
                rates.append(min(samples.values()))
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                health.append(resp.status)
            m = faults.scrape(url)
            return m.get("l2g_chunks_consumed_total", 0) >= chunks and m.get("l2g_consumer_lag_messages", 1) == 0

        faults.wait_until(done, 240, f"{chunks} chunks consumed", poll_s=0.25)
        elapsed = time.monotonic() - t0
        worker.ingest.checkpoint()  # type: ignore[union-attr]
        m = faults.scrape(url)
        skipped = faults.scrape_labelled(url, "l2g_frames_skipped_total")
        assert not worker.stopping and worker.error is None
    finally:
        worker.stop()
    shed = sum(v for labels, v in skipped.items() if 'reason="load_shed"' in labels)
    committed = committed_offsets(settings, settings.ingest.group_id, settings.topics.video)
    report = {"chunks": chunks, "seconds": round(elapsed, 1), "video_seconds": SECONDS * len(cams),
              "min_sampling_fps": min(rates), "final_sampling_fps": rates[-1],
              "frames_indexed": m.get("l2g_frames_indexed_total"), "frames_shed": shed,
              "frames_at_full_rate": SECONDS * len(cams) * 2, "rebalances": m.get("l2g_rebalances_total"),
              "committed": sum(committed.values())}
    print(f"slow extractor: {report}")
    assert m.get("l2g_rebalances_total") == 1, "the worker was thrown out of its group"
    assert set(health) == {200}
    assert min(rates) < 2.0 and shed > 0, "the sampling rate never degraded"
    assert m.get("l2g_frames_indexed_total", 0) < SECONDS * len(cams) * 2
    assert m.get("l2g_frames_indexed_total", 0) >= SECONDS * len(cams) * 0.2 * 0.5  # never starved below the floor
    assert sum(committed.values()) == chunks


@pytest.mark.timeout(300)
def test_control_without_load_shedding_the_group_evicts_the_worker(kafka_broker: EmbeddedBroker, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same model with ``load_shed=False``: polls outlast ``max_poll_interval_ms`` and the group rebalances (the
    consumer rejoins: ``l2g_rebalances_total`` > 1). This is what the test above guards against.

    Polls here take 8 chunks, not 4: 16 s of extraction per poll, twice the interval. At 4 chunks a poll is 8 s of
    sleep, level with the interval, and whether one runs over by enough for the heartbeat thread to notice is a coin
    toss per poll (alone it took 43-59 s to happen; beside a full CI run it did not within 120 s)."""
    monkeypatch.setenv("L2G_TEST_SLEEP_PER_FRAME", SLEEP_PER_FRAME)
    http_port = free_port()
    settings = kafka_settings(
        kafka_broker, tmp_path,
        ingest={"sample_fps": 2.0, "load_shed": False, "max_poll_records": 8, "batch_size": 4,
                "commit_interval_s": 1.0},
        extractor={"name": "slowtoy"}, http={"port": http_port}, query={"enabled": False})
    cam = SyntheticCamera(33, 256, 160, world_frames=400)
    segs = list(encode_segments(cam.frames(int(SECONDS * FPS)), FPS, segment_seconds=1.0))
    ensure_topics(settings)  # clients never create topics
    sink = KafkaSink(settings.kafka, client_id="it-fault-slow-control")
    publish_segments(settings, "hall", segs, start_time=START, sink=sink)
    sink.close()
    url = f"http://127.0.0.1:{http_port}"
    worker = Worker(settings).start()
    t0 = time.monotonic()
    try:
        assert worker.wait_ready(60)
        faults.wait_until(lambda: faults.scrape(url).get("l2g_rebalances_total", 0) >= 2, 120,
                          "a rebalance (the worker evicted for a slow poll)", poll_s=0.25)
        print(f"control without load shedding: rebalanced after {time.monotonic() - t0:.1f} s")
    finally:
        worker.request_stop()
        worker.stop(5.0)
