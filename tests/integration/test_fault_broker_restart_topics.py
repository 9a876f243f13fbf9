"""A broker restarted empty must not wedge the worker quietly (issue "No silent loss, no poison message", item 5).

Tansu keeps everything in memory: after a restart no topic exists. kafka-python 3.0.12 ignores
``allow_auto_create_topics=False``, so before the fix the worker's own consumers and producer recreated the topics
with tansu's default of 4 partitions (configured: 3) within a second; the query loop kept reading partitions 0-2
only (queries keyed to partition 3 got neither a result nor a dead letter) and ``/readyz`` stayed green.

Now only the admin path creates topics: with ``topics.create`` the worker recreates them with ``topics.partitions``;
without it the worker reports them missing (not ready) and waits. A topic that comes back with another partition
count is consumed whole (the query loop assigns the new partitions, the ingest group rebalances). Readiness is false
while the broker is away or a topic is missing, and true again only when everything is consumed again.

The settings here are the defaults of the version under test apart from the test topics (``topics.check_interval_s``
1 s, ``kafka.metadata_max_age_ms`` 10 s), so the same file runs against the code before the fix.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from kafka import KafkaAdminClient
from kafka.partitioner.default import murmur2

from stream.broker import EmbeddedBroker, free_port
from stream.client import QueryClient, publish_segments
from stream.kafka import KafkaSink, ensure_topics
from stream.settings import Settings
from stream.video import SyntheticCamera, encode_segments
from stream.worker import Worker
from tests.reliability import faults

from .conftest import kafka_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FPS = 10.0
FRAMES = 30
START = 1_700_000_000.0


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _key_for(prefix: str, partition: int, partitions: int) -> str:
    """The first ``prefix-N`` that kafka-python's default partitioner puts on ``partition``."""
    return next(f"{prefix}-{i}" for i in range(10_000)
                if (murmur2(f"{prefix}-{i}".encode()) & 0x7FFFFFFF) % partitions == partition)


def _topic_partitions(settings: Settings) -> dict[str, int]:
    """Partition count of every configured topic that exists (an admin request never creates one)."""
    t = settings.topics
    admin = KafkaAdminClient(bootstrap_servers=[settings.kafka.bootstrap_servers])
    try:
        described = admin.describe_topics([t.video, t.queries, t.candidates, t.results, t.dead_letters])
    finally:
        admin.close()
    return {d["name"].split(".", 1)[1]: len(d["partitions"]) for d in described if d["error_code"] == 0}


class ReadySampler:
    """Samples ``/readyz`` every 0.1 s in a thread: ``(monotonic time, ready)``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import urllib.error
        import urllib.request

        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                    ok = resp.status == 200
            except (urllib.error.URLError, OSError):
                ok = False
            self.samples.append((time.monotonic(), ok))
            self._stop.wait(0.1)

    def __enter__(self) -> ReadySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, t0: float, t1: float) -> list[bool]:
        return [ok for t, ok in self.samples if t0 <= t <= t1]


def _restart(broker: EmbeddedBroker, port: int, tmp_path: Path) -> EmbeddedBroker:
    broker.stop()  # the outage: every connection drops, every topic is gone
    time.sleep(3.0)
    return EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log").start()


def _ask_every_partition(settings: Settings, cam: SyntheticCamera, camera_id: str, partitions: int,
                         tag: str) -> dict[int, str]:
    """One query keyed to each partition of the query topic; the outcome of each (``ok`` or why not)."""
    out: dict[int, str] = {}
    with QueryClient(settings) as client:
        for p in range(partitions):
            qid = _key_for(f"{tag}-q", p, partitions)
            try:
                result = client.ask(_png(cam.frame(12)), timeout_s=10.0, k=3, query_id=qid)
            except Exception as exc:  # reported per partition
                out[p] = f"{type(exc).__name__}: {str(exc)[:80]}"
                continue
            good = bool(result.matches) and result.matches[0].camera_id == camera_id
            cov = result.coverage
            out[p] = "ok" if good and result.status == "complete" else (
                f"{result.status}, {len(result.matches)} hits, {cov.partitions_searched}/{cov.partitions_total} "
                f"partitions searched: {'; '.join(cov.notes)[:200]}")
    return out


@pytest.mark.timeout(240)
def test_a_broker_restarted_empty_gets_its_topics_back_with_their_partition_count(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``topics.create`` (the default): the worker recreates the topics with 3 partitions (before: its own clients
    recreated them with 4 and partition 3 of the query topic was never read), is not ready meanwhile, and answers
    queries on every partition afterwards."""
    caplog.set_level(logging.WARNING)
    port, http_port = free_port(), free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log").start()
    settings = kafka_settings(broker, tmp_path, ingest={"sample_fps": 0.0, "commit_interval_s": 0.5},
                              http={"port": http_port}, query={"default_timeout_s": 8.0})
    cam = SyntheticCamera(41, 256, 160, world_frames=FRAMES)
    segments = list(encode_segments(cam.frames(FRAMES), FPS, segment_seconds=1.0))
    url = f"http://127.0.0.1:{http_port}"
    worker = Worker(settings).start()
    try:
        assert worker.wait_ready(60), "worker not ready"
        publish_segments(settings, "dock", segments, start_time=START)
        faults.wait_until(lambda: len(worker.index or []) >= FRAMES, 60, "the first ingest")
        before = _ask_every_partition(settings, cam, "dock", 3, "before")
        assert set(before.values()) == {"ok"}, before
        with ReadySampler(url) as sampler:
            t_stop = time.monotonic()
            broker = _restart(broker, port, tmp_path)
            t_back = time.monotonic()
            caplog.clear()
            faults.wait_until(lambda: sampler.samples and sampler.samples[-1][0] > t_back and
                              sampler.samples[-1][1], 60, "ready again after the restart")
            t_ready = time.monotonic()
        counts = _topic_partitions(settings)
        # the topics are the configured ones again, created by the worker's admin path (never by a data client)
        assert counts == dict.fromkeys(["video", "queries", "candidates", "results", "dlq"], 3), counts
        outage = sampler.between(t_stop + 1.0, t_back)
        assert outage and not any(outage), "ready while the broker was away"
        # the source replays (tansu lost the video); every partition of the query topic is read and answered
        publish_segments(settings, "dock", segments, start_time=START)
        after = _ask_every_partition(settings, cam, "dock", 3, "after")
        assert after == {0: "ok", 1: "ok", 2: "ok"}, after
        assert len(worker.index or []) == FRAMES and not worker.stopping
        producer_warnings = [r for r in caplog.records if "producer" in r.name and r.levelno >= logging.WARNING]
        print(f"ready again {t_ready - t_back:.1f} s after the restart; {len(producer_warnings)} producer "
              f"warnings after it")
        assert len(producer_warnings) < 30, [r.getMessage()[:120] for r in producer_warnings[:10]]
    finally:
        worker.stop()
        broker.stop()


@pytest.mark.timeout(240)
def test_topics_recreated_with_another_partition_count_are_awaited_then_consumed_whole(tmp_path: Path) -> None:
    """``topics.create`` false: the worker creates nothing (before: its clients recreated the topics), is not ready
    until the topics are back, and consumes every partition of topics that come back with 4 partitions."""
    port, http_port = free_port(), free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu.log").start()
    settings = kafka_settings(broker, tmp_path, ingest={"sample_fps": 0.0, "commit_interval_s": 0.5},
                              http={"port": http_port}, query={"default_timeout_s": 8.0}, topics={"create": False})
    ensure_topics(settings)  # the operator's tooling creates the topics (3 partitions)
    cams = {p: (_key_for("cam", p, 4), SyntheticCamera(50 + p, 256, 160, world_frames=FRAMES)) for p in range(4)}
    url = f"http://127.0.0.1:{http_port}"
    worker = Worker(settings).start()
    try:
        assert worker.wait_ready(60), "worker not ready"
        with ReadySampler(url) as sampler:
            broker = _restart(broker, port, tmp_path)
            time.sleep(8.0)  # longer than a topic check and a metadata refresh of every client
            created_meanwhile = _topic_partitions(settings)
            waiting = sampler.between(time.monotonic() - 3.0, time.monotonic())
            assert created_meanwhile == {}, f"a data client created topics: {created_meanwhile}"
            assert waiting and not any(waiting), "ready while the topics are missing"
            # someone else creates the topics, with 4 partitions
            ensure_topics(settings.model_copy(update={"topics": settings.topics.model_copy(update={"partitions": 4})}))
            faults.wait_until(lambda: sampler.samples[-1][1], 60, "ready once the topics exist")
        assert worker.query is not None and len(worker.query.assigned) == 4
        sink = KafkaSink(settings.kafka, client_id="it-restart-4")
        for name, cam in cams.values():  # one camera on each of the 4 video partitions
            segs = list(encode_segments(cam.frames(FRAMES), FPS, segment_seconds=1.0))
            publish_segments(settings, name, segs, start_time=START, sink=sink)
        sink.close()
        faults.wait_until(lambda: len(worker.index or []) >= 4 * FRAMES, 90,
                          "every video partition indexed (the ingest group rebalanced onto 4 partitions)")
        name, cam = cams[3]
        answers = _ask_every_partition(settings, cam, name, 4, "four")
        assert answers == {0: "ok", 1: "ok", 2: "ok", 3: "ok"}, answers
    finally:
        worker.stop()
        broker.stop()
