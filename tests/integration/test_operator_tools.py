"""Operator tools against the real tansu broker: ``dead-letters inspect|redrive``, ``replay`` (ListOffsets by
timestamp), and a worker process that stops on SIGTERM without kafka noise and logs its progress line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kafka import KafkaProducer

from stream.broker import EmbeddedBroker, free_port
from stream.cli import main
from stream.deadletter import DeadLetterPublisher, dead_letter_for
from stream.envelope import OutboundMessage, decode_message
from stream.errors import SchemaError, VideoDecodeError
from stream.kafka import KafkaSink, ensure_topics
from stream.messages import VideoChunk
from stream.metrics import StreamMetrics
from stream.ports import Record
from stream.redrive import REDRIVE_HEADER
from stream.replay import REPLAY_HEADER, replay_camera
from stream.scan import open_reader, scan
from stream.settings import Settings
from stream.video import SyntheticCamera, chunk_messages, encode_segments

from .conftest import REPO_ROOT, kafka_settings

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


def _config(settings: Settings, path: Path) -> Path:
    data = settings.as_dict()
    data.pop("runtime")
    path.write_text(yaml.safe_dump(data))
    return path


def _chunks(camera: str, seed: int, start: float, segments: int = 3) -> list[tuple[VideoChunk, OutboundMessage]]:
    cam = SyntheticCamera(seed, 160, 96, world_frames=10 * segments)
    segs = encode_segments(cam.frames(10 * segments), 10.0, segment_seconds=1.0)
    return list(chunk_messages(camera, segs, start_time=start, max_bytes=900_000, source="test"))


def _all(settings: Settings, topic: str) -> list[Record]:
    source = open_reader(settings, "test")
    try:
        return list(scan(source, topic))
    finally:
        source.close()


def test_dead_letters_are_inspected_and_the_carried_originals_redriven(
        kafka_broker: EmbeddedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = kafka_settings(kafka_broker, tmp_path)
    ensure_topics(settings)
    config = ["--config", str(_config(settings, tmp_path / "s.yaml"))]
    t = settings.topics
    (_, chunk), = _chunks("gate", 1, time.time(), segments=1)
    originals = [  # (topic, key, value, stage, error, reason, carried)
        (t.video, chunk.key, chunk.value, "ingest", VideoDecodeError("moov atom not found"), None, True),
        (t.video, b"big", b"x" * 5000, "ingest", VideoDecodeError("too big to carry"), None, False),
        (t.queries, b"q1", b'{"kind": "query"}', "query", SchemaError("no image"), None, True),
        (t.candidates, b"q1", b"{}", "merge", SchemaError("bad partial"), "inconsistent_partial", True),
    ]
    sink = KafkaSink(settings.kafka, client_id="it-dlq")
    publisher = DeadLetterPublisher(sink, t.dead_letters, "it-worker", StreamMetrics(),
                                    settings.kafka.max_message_bytes)
    for offset, (topic, key, value, stage, error, reason, carried) in enumerate(originals):
        rec = Record(topic, 0, offset, key, value, list(chunk.headers) if topic == t.video else [])
        letter = dead_letter_for(rec, stage=stage, error=error, worker_id="it-worker", reason=reason,
                                 value_limit=65_536 if carried else 100)
        publisher.publish(letter)
    sink.flush()

    assert main(["dead-letters", "inspect", "--json", *config]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["summary"] == {"letters": 4, "redrivable": 2, "by_reason": {
        "ingest/corrupt_video": 2, "merge/inconsistent_partial": 1, "query/schema_violation": 1}}
    assert [(x["reason"], x["value_carried"], x["redrivable"]) for x in lines[:-1]] == [
        ("corrupt_video", True, True), ("corrupt_video", False, False), ("schema_violation", True, True),
        ("inconsistent_partial", True, False)]
    assert main(["dead-letters", "inspect", "--reason", "schema_violation", *config]) == 0
    text = capsys.readouterr().out
    assert "1 dead letters in" in text and "query/schema_violation" in text and "corrupt_video" not in text

    assert main(["dead-letters", "redrive", *config]) == 2  # neither --reason nor --all
    assert "--reason" in capsys.readouterr().err
    assert main(["dead-letters", "redrive", "--reason", "corrupt_video", "--dry-run", "--json", *config]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["sent"], report["to"], report["dry_run"]) == (1, {t.video: 1}, True)
    assert "is not carried" in report["skipped_letters"][0]["why"]
    assert _all(settings, t.video) == []  # (nothing was sent)

    assert main(["dead-letters", "redrive", "--reason", "corrupt_video", *config]) == 0
    assert "sent 1 to" in capsys.readouterr().out
    (redriven,) = _all(settings, t.video)
    assert (redriven.key, redriven.value) == (chunk.key, chunk.value)
    headers = dict(redriven.headers)
    assert headers[REDRIVE_HEADER].decode().startswith(f"{t.dead_letters}/")
    assert decode_message(redriven.value, redriven.headers, VideoChunk).camera_id == "gate"
    assert main(["dead-letters", "redrive", "--all", "--json", *config]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sent"] == 2 and report["skipped"] == 2  # not carried; a merge-stage partial
    assert any("stage 'merge'" in s["why"] for s in report["skipped_letters"])
    sink.close()


def test_replay_of_a_camera_starts_at_the_time_offset_and_republishes_only_that_camera(
        kafka_broker: EmbeddedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = kafka_settings(kafka_broker, tmp_path, ingest={"max_future_s": 300.0})
    ensure_topics(settings)
    now = time.time()
    hour_ago = now - 3600
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    sent: dict[str, list[VideoChunk]] = {"gate": [], "yard": []}
    for camera, seed in (("gate", 1), ("yard", 2)):
        for start, publish_ms in ((hour_ago, int(hour_ago * 1000)), (now, None)):  # an hour ago, then now
            for chunk, out in _chunks(camera, seed, start):
                producer.send(settings.topics.video, out.value, key=out.key, headers=list(out.headers),
                              timestamp_ms=publish_ms)
                sent[camera].append(chunk)
    producer.flush()
    producer.close()

    since = now - 600
    report = replay_camera(settings, "gate", since, to=f"{settings.topics.video}.replay", dry_run=True)
    assert report.lookup == "offsets_for_times"
    # the records published now, of both cameras: the hour-old ones are not read (Kafka) or read and skipped by their
    # timestamp (tansu's lookup can answer an older batch's offset)
    assert report.scanned - report.before_lookup == 6
    assert (report.matched, report.sent) == (3, 0)

    to = f"{settings.topics.video}.replay"
    ensure_topics(settings.with_overrides(topics={"video": to}))  # (--to names an existing topic)
    assert main(["replay", "--camera", "gate", "--since", str(since), "--to", to, "--json",
                 "--config", str(_config(settings, tmp_path / "s.yaml"))]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["matched"], out["sent"], out["lookup"]) == (3, 3, "offsets_for_times")
    replayed = _all(settings, to)
    chunks = [decode_message(r.value, r.headers, VideoChunk) for r in replayed]
    assert [(c.camera_id, c.sequence) for c in chunks] == [("gate", c.sequence) for c in sent["gate"][3:]]
    assert all(dict(r.headers)[REPLAY_HEADER].decode().startswith(f"{settings.topics.video}/") for r in replayed)

    # an event-time window inside the hour-old chunks: the lookup starts early enough to find them
    early = replay_camera(settings, "yard", hour_ago + 1.0, hour_ago + 1.5, dry_run=True)
    assert (early.matched, early.scanned, early.before_lookup) == (1, 12, 0)
    # after the last record: tansu's "offset 0, timestamp -1" is read as "nothing that recent"
    later = replay_camera(settings, "gate", now + 3600, dry_run=True)
    assert (later.scanned, later.matched) == (0, 0) and set(later.start.values()) == {None}


def test_a_worker_stops_on_sigterm_without_kafka_noise_and_logs_progress(
        kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    port = free_port()
    settings = kafka_settings(kafka_broker, tmp_path, http={"port": port},
                              runtime={"progress_interval_s": 0.2})
    ensure_topics(settings)
    config = _config(settings, tmp_path / "worker.yaml")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1",
           "L2G_RUNTIME__PROGRESS_INTERVAL_S": "0.2"}
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker", "--config", str(config)],
                                cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        sink = KafkaSink(settings.kafka, client_id="it-sigterm")
        for _, out in _chunks("gate", 1, time.time() - 5):
            sink.send(settings.topics.video, out.value, key=out.key, headers=list(out.headers))
        sink.flush()
        sink.close()

        def caught_up() -> bool:  # a progress line after the chunks were indexed
            return any(" frames indexed" in line and "progress: 0 frames" not in line and "lag 0 messages" in line
                       for line in log_path.read_text().splitlines())

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None and not caught_up():
            time.sleep(0.1)
        assert proc.poll() is None and caught_up(), log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert not [line for line in log.splitlines() if " kafka" in line and (" ERROR " in line or " WARNING " in line)]
    assert "blocking the event loop" not in log
    assert "SIGTERM received: shutting down gracefully" in log
    progress = [line for line in log.splitlines() if "stream.progress: progress:" in line]
    assert any("lag 0 messages / 0.0 s, sampling 2 fps (shedding off)" in line for line in progress), log[-3000:]
