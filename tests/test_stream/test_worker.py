"""The threaded worker over the in-memory broker: readiness, /metrics, graceful shutdown with a final checkpoint."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from stream.errors import ConfigurationError
from stream.ports import FeatureExtractor
from stream.settings import Settings
from stream.testing import MemoryBroker, MemoryConnector
from stream.worker import Worker

from .conftest import camera_chunks, camera_frame, make_settings, publish
from .helpers import png, results, send_query

pytestmark = pytest.mark.timeout(60)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_threaded_worker_serves_then_stops_gracefully(tmp_path: Path) -> None:
    broker = MemoryBroker(3)
    settings = make_settings(tmp_path, http={"enabled": True, "host": "127.0.0.1", "port": 0},
                             runtime={"torch_threads": 1, "faiss_threads": 1})
    worker = Worker(settings, connector=MemoryConnector(broker))
    worker.start()
    try:
        assert worker.wait_ready(10)
        assert worker.http_url is not None
        code, body = get(f"{worker.http_url}/readyz")
        assert code == 200 and json.loads(body)["conditions"] == {
            "extractor": True, "ingest_assigned": True, "query_assigned": True, "merge_assigned": True,
            "topics": True, "producer": True}
        publish(broker, "l2g.video", camera_chunks("cam-a", 1))
        deadline = time.monotonic() + 20
        while len(worker.index or []) < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(worker.index or []) == 8
        qid = send_query(broker, png(camera_frame(1, 10)[32:160, 64:256]), k=2, mode="local")
        while qid not in results(broker) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert results(broker)[qid][0].matches[0].frame == 10
        code, text = get(f"{worker.http_url}/metrics")
        assert code == 200 and "l2g_frames_indexed_total" in text and "l2g_build_info" in text
        assert get(f"{worker.http_url}/healthz")[0] == 200
    finally:
        worker.stop()
    # the final checkpoint committed everything that was indexed
    committed = {p.partition: broker.committed(settings.ingest.group_id, p)
                 for p in broker.partitions_of("l2g.video")}
    assert sum(o or 0 for o in committed.values()) == len(broker.records("l2g.video"))
    assert worker.error is None and not worker.ready
    assert list((tmp_path / "snapshots").glob("*/l2g.video-*"))


def test_a_failing_loop_stops_the_worker_with_an_error(tmp_path: Path) -> None:
    broker = MemoryBroker(3)
    worker = Worker(make_settings(tmp_path), connector=MemoryConnector(broker))
    worker.open()
    assert worker.ingest is not None

    def boom() -> int:
        raise RuntimeError("disk full")

    worker.ingest.run_once = boom  # type: ignore[method-assign]
    worker.start()
    deadline = time.monotonic() + 10
    while not worker.stopping and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.stop()
    assert isinstance(worker.error, RuntimeError)


def test_unknown_extractor_is_a_configuration_error(tmp_path: Path) -> None:
    worker = Worker(make_settings(tmp_path, extractor={"name": "nope"}), connector=MemoryConnector(MemoryBroker()))
    with pytest.raises(ConfigurationError, match="nope"):
        worker.open()
    worker.stop()


def test_a_failing_snapshot_does_not_stop_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import l2g_core.index.persistence as persistence

    broker = MemoryBroker(3)
    worker = Worker(make_settings(tmp_path, ingest={"commit_interval_s": 0.05}), connector=MemoryConnector(broker))

    def full(path: object, write: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persistence, "_atomic_write", full)
    worker.start()
    try:
        publish(broker, "l2g.video", camera_chunks("cam-a", 1))
        deadline = time.monotonic() + 20
        while worker.metrics.value("l2g_snapshot_failures_total") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.metrics.value("l2g_snapshot_failures_total") >= 2  # retried
        assert not worker.stopping and worker.error is None
        qid = send_query(broker, png(camera_frame(1, 10)[32:160, 64:256]), k=2, mode="local")
        while qid not in results(broker) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert results(broker)[qid][0].matches[0].frame == 10  # still answering
        assert all(broker.committed("l2g-ingest", p) is None for p in broker.partitions_of("l2g.video"))
    finally:
        monkeypatch.undo()
        worker.stop()
    assert sum(broker.committed("l2g-ingest", p) or 0 for p in broker.partitions_of("l2g.video")) == 2


def test_an_extractor_bug_stops_the_worker_without_dead_letters(tmp_path: Path) -> None:
    from plugins import get_extractor
    from stream.errors import ExtractorCrashError

    from .test_ingest import FaultyExtractor

    broker = MemoryBroker(3)
    made: list[object] = []

    def factory(settings: Settings) -> FeatureExtractor:  # the ingest extractor has the bug, the query one not
        made.append(None)
        return FaultyExtractor(lambda: RuntimeError("a bug"), bad="always") if len(made) == 1 else get_extractor("toy")

    worker = Worker(make_settings(tmp_path), connector=MemoryConnector(broker), extractor_factory=factory)
    worker.start()
    try:
        publish(broker, "l2g.video", camera_chunks("cam-a", 1))
        deadline = time.monotonic() + 20
        while not worker.stopping and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.stopping
    finally:
        worker.stop()
    assert isinstance(worker.error, ExtractorCrashError) and isinstance(worker.error.__cause__, RuntimeError)
    assert worker.metrics.value("l2g_extractor_errors_total", {"extractor": "toy"}) == 1
    assert worker.metrics.value("l2g_dead_letters_total") == 0 and broker.records("l2g.dead-letters") == []
    # nothing was indexed, so nothing is committed: a restarted worker reads every chunk again
    assert all(broker.committed("l2g-ingest", p) is None for p in broker.partitions_of("l2g.video"))

