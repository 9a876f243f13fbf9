"""The worker's periodic progress line (``stream.progress``) and its lag in seconds (``stream.lag``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from stream.lag import ConsumerLag
from stream.metrics import StreamMetrics
from stream.ports import Partition, Record
from stream.progress import ProgressLog
from stream.sampling import LoadShedder
from stream.testing import MemoryBroker, MemoryConnector
from stream.worker import Worker

from .conftest import camera_chunks, make_settings, publish
from .helpers import ingested, run_until

pytestmark = pytest.mark.timeout(60)

P0, P1 = Partition("v", 0), Partition("v", 1)


def _record(part: Partition, offset: int, ts_ms: int) -> Record:
    return Record(part.topic, part.partition, offset, b"cam", b"x", [], ts_ms)


def test_lag_in_seconds_is_the_age_of_the_last_consumed_message_and_zero_when_caught_up() -> None:
    metrics = StreamMetrics()
    lag = ConsumerLag(metrics)
    lag.consumed([_record(P0, 0, 1_000_000), _record(P0, 1, 1_004_000), _record(P1, 0, 1_001_000)])
    lag.observe({P0: 7, P1: 0}, now=1_010.0)
    assert metrics.value("l2g_consumer_lag_seconds", {"partition": "0"}) == pytest.approx(6.0)
    assert metrics.value("l2g_consumer_lag_seconds", {"partition": "1"}) == 0.0
    assert metrics.value("l2g_consumer_lag_messages", {"partition": "0"}) == 7
    assert (lag.messages, lag.seconds) == (7, pytest.approx(6.0))
    lag.observe({P0: 7, P1: 0}, now=1_020.0)  # no progress: it grows with the clock
    assert lag.seconds == pytest.approx(16.0)
    lag.forget([P0])
    lag.observe({P0: 3}, now=1_030.0)  # behind, nothing consumed since (re)assigned: unknown
    assert lag.seconds is None and lag.messages == 3
    assert metrics.value("l2g_consumer_lag_seconds", {"partition": "0"}) == 0.0


def test_the_line_reports_frames_fps_lag_sampling_and_queries_over_the_interval() -> None:
    metrics = StreamMetrics()
    shedder = LoadShedder(2.0, 0.25, lag_high=50, lag_low=5)
    lag = ConsumerLag(metrics)
    progress = ProgressLog(metrics, shedder, lag)
    start = time.monotonic()
    metrics.frames_indexed.labels("cam").inc(40)
    metrics.queries.labels("l2g", "ok").inc(3)
    lag.consumed([_record(P0, 0, 1_000_000)])
    lag.observe({P0: 120}, now=1_002.5)
    shedder.update(120)
    line = progress.line(now=start + 10.0)
    assert line == ("progress: 40 frames indexed (+40, 4.0 fps), lag 120 messages / 2.5 s, sampling 1 fps "
                    "(shedding on), 3 queries answered (+3)")
    metrics.frames_indexed.labels("cam").inc(10)
    lag.observe({P0: 0})
    for _ in range(3):
        shedder.update(0)
    assert progress.line(now=start + 15.0) == ("progress: 50 frames indexed (+10, 2.0 fps), lag 0 messages / 0.0 s, "
                                               "sampling 2 fps (shedding off), 3 queries answered (+0)")


def test_without_ingest_the_line_has_no_lag_nor_sampling() -> None:
    progress = ProgressLog(StreamMetrics())
    line = progress.line(now=time.monotonic() + 1)
    assert line == "progress: 0 frames indexed (+0, 0.0 fps), 0 queries answered (+0)"


def test_every_frame_sampling_is_named_as_such() -> None:
    shedder = LoadShedder(0.0, 0.25, lag_high=50, lag_low=5)
    progress = ProgressLog(StreamMetrics(), shedder, ConsumerLag(StreamMetrics()))
    assert "sampling all frames (shedding off)" in progress.line()
    shedder.update(100)
    assert "sampling 0.5 of the frames (shedding on)" in progress.line()


def test_an_ingesting_worker_reports_its_lag_in_seconds(tmp_path: Path) -> None:
    broker = MemoryBroker(3)
    worker = Worker(make_settings(tmp_path), connector=MemoryConnector(broker)).open()
    try:
        publish(broker, "l2g.video", camera_chunks("cam-a", 1))
        run_until([worker], ingested(broker, [worker], 8))
        worker.step()
        assert worker.ingest is not None
        assert worker.ingest.lag.messages == 0 and worker.ingest.lag.seconds == 0.0
        assert "l2g_consumer_lag_seconds{" in worker.metrics.render().decode()
    finally:
        worker.stop()


def test_a_running_worker_logs_the_line_every_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stream.progress")
    broker = MemoryBroker(3)
    worker = Worker(make_settings(tmp_path, runtime={"progress_interval_s": 0.05}), connector=MemoryConnector(broker))
    worker.start()
    try:
        publish(broker, "l2g.video", camera_chunks("cam-a", 1))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("8 frames indexed" in r.getMessage() for r in caplog.records):
            time.sleep(0.02)
    finally:
        worker.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "stream.progress"]
    assert any(line.startswith("progress: 8 frames indexed") and "lag 0 messages" in line for line in lines), lines
    assert {r.levelno for r in caplog.records if r.name == "stream.progress"} == {logging.INFO}


def test_interval_zero_starts_no_progress_thread(tmp_path: Path) -> None:
    worker = Worker(make_settings(tmp_path, runtime={"progress_interval_s": 0}),
                    connector=MemoryConnector(MemoryBroker(3)))
    worker.start()
    try:
        assert "l2g-progress" not in {t.name for t in worker._threads}
    finally:
        worker.stop()
