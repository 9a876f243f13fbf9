"""The service against the real tansu broker: real H.264 in, a crop of one frame found; bad input dead-lettered."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.broker import EmbeddedBroker
from stream.client import QueryClient, publish_segments
from stream.envelope import encode_message
from stream.messages import DeadLetter, VideoChunk
from stream.sampling import keep_frame
from stream.settings import Settings
from stream.video import SyntheticCamera, encode_segments
from stream.worker import Worker

from .conftest import kafka_settings, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

FPS = 10.0
START = 1_700_000_000.0


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return bytes(buf)


def wait_for(cond, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def publish_cameras(settings: Settings, cams: dict[str, SyntheticCamera], frames: int) -> int:
    chunks = 0
    for name, cam in cams.items():
        segs = encode_segments(cam.frames(frames), FPS, segment_seconds=2.0)
        chunks += publish_segments(settings, name, segs, start_time=START).chunks
    return chunks


def test_a_crop_of_a_real_h264_frame_is_found_at_the_right_camera_and_time(
        kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = kafka_settings(kafka_broker, tmp_path)
    cams = {"lobby": SyntheticCamera(1, 320, 192, world_frames=80),
            "garage": SyntheticCamera(2, 320, 192, world_frames=80)}
    with Worker(settings) as worker:
        assert worker.wait_ready(30), worker.health.ready()
        chunks = publish_cameras(settings, cams, 60)
        assert worker.ingest is not None
        wait_for(lambda: sum(worker.ingest.positions.values()) >= chunks, 60, "ingest")  # type: ignore[union-attr]
        expected = sum(keep_frame(START + i / FPS, FPS, 2.0) for i in range(60)) * 2
        assert len(worker.index or []) == expected
        target = cams["garage"].frame(30)[32:160, 64:256]  # a partial crop of garage frame 30 (t = START + 3 s)
        with QueryClient(settings) as client:
            result = client.ask(png(target), timeout_s=10.0, k=3, mode="global_to_local")
            l2g = client.ask(png(target), timeout_s=10.0, k=5)
        assert result.status == "complete", result
        top = result.matches[0]
        assert (top.camera_id, top.frame) == ("garage", 30)
        assert top.timestamp == pytest.approx(START + 3.0, abs=1e-3)
        assert ("garage", 30) in [(m.camera_id, m.frame) for m in l2g.matches]
        assert l2g.coverage.partitions_total == 3 and l2g.coverage.complete
        assert {"decode_image", "extract", "stage1", "stage2", "total"} <= set(l2g.latency_ms)
        assert worker.http_url is not None
        with urllib.request.urlopen(f"{worker.http_url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert 'l2g_frames_indexed_total{camera="garage"} 12.0' in text
        assert "l2g_ready 1.0" in text
        with urllib.request.urlopen(f"{worker.http_url}/readyz", timeout=5) as resp:
            assert resp.status == 200


def test_corrupt_chunks_and_bad_queries_are_dead_lettered_while_the_worker_keeps_answering(
        kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    from stream.kafka import KafkaSink

    settings = kafka_settings(kafka_broker, tmp_path)
    cam = SyntheticCamera(3, 320, 192, world_frames=80)
    sink = KafkaSink(settings.kafka, client_id="it-bad")
    with Worker(settings) as worker:
        assert worker.wait_ready(30)
        good = list(encode_segments(cam.frames(40), FPS, segment_seconds=2.0))
        bad = VideoChunk(camera_id="door", sequence=0, first_frame=0, start_time=START, fps=FPS,
                         data=good[0].data[:3000] + bytes(range(256)) * 40)
        out = encode_message(bad, source="it")
        sink.send(settings.topics.video, out.value, key=out.key, headers=out.headers)
        sink.send(settings.topics.video, b"not json at all", key=b"door")
        sink.flush()
        chunks = 2 + publish_segments(settings, "door", good, start_time=START).chunks
        wait_for(lambda: sum(worker.ingest.positions.values()) >= chunks, 60, "ingest")  # type: ignore[union-attr]
        with QueryClient(settings) as client:
            sink.send(settings.topics.queries, b"\x00garbage", key=b"broken-query")
            sink.flush()
            garbage = client.wait("broken-query", 15)
            not_image = client.ask(b"GIF89a....", timeout_s=5.0)
            answer = client.ask(png(cam.frame(20)[32:160, 64:256]), timeout_s=10.0, k=3, mode="global_to_local")
        assert garbage.status == "error" and "invalid_json" in (garbage.error or "")
        assert not_image.status == "error" and "unsupported_image" in (not_image.error or "")
        assert answer.status == "complete" and (answer.matches[0].camera_id, answer.matches[0].frame) == ("door", 20)
        letters = read_topic(settings, settings.topics.dead_letters, DeadLetter, count=4)
        got = sorted((d.stage, d.reason) for d in letters)
        assert got == sorted([("ingest", "corrupt_video"), ("ingest", "invalid_json"), ("query", "invalid_json"),
                              ("query", "unsupported_image")]), got
        assert worker.metrics.value("l2g_dead_letters_total") == 4
    sink.close()


def test_cli_publish_and_query_against_a_running_worker(kafka_broker: EmbeddedBroker, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from stream.cli import main

    settings = kafka_settings(kafka_broker, tmp_path, storage={"blob_dir": str(tmp_path / "blobs"),
                                                               "allowed_ref_roots": [str(tmp_path / "blobs")]},
                              kafka={"max_message_bytes": 30_000, "max_request_size": 40_000})
    config = tmp_path / "cli.yaml"
    data = settings.as_dict()
    data.pop("runtime")
    config.write_text(yaml.safe_dump(data))
    cam = SyntheticCamera(8, 320, 192, world_frames=60)
    clip = tmp_path / "parking.ts"
    clip.write_bytes(b"".join(s.data for s in encode_segments(cam.frames(40), FPS, segment_seconds=4.0)))
    crop = tmp_path / "crop.png"
    crop.write_bytes(png(cam.frame(20)[32:160, 64:256]))
    with Worker(settings) as worker:
        assert worker.wait_ready(30)
        assert main(["publish", str(clip), "--config", str(config), "--start-time", str(START),
                     "--segment-seconds", "1"]) == 0
        out = capsys.readouterr().out
        assert "published parking:" in out and "as references" in out  # segments over 30 KB went by reference
        wait_for(lambda: len(worker.index or []) >= 8, 60, "ingest")
        assert main(["query", str(crop), "--config", str(config), "--k", "3", "--mode", "local",
                     "--camera", "parking", "--since", str(START), "--until", str(START + 10)]) == 0
        table = capsys.readouterr().out
    assert "complete" in table and "parking" in table
    first = next(line for line in table.splitlines() if line.strip().startswith("1 "))
    assert first.split()[1:3] == ["parking", "20"], table
