"""A truncated MP4 chunk against the real tansu broker and a running worker: the frames that decode are indexed,
the offset is committed as usual, and a ``truncated_video`` dead letter reports the frames declared and decoded.

Before: a faststart MP4 cut at 40 % indexed its first ~100 of 250 frames and nothing reported the loss (the chunk
carried no ``frame_count``; the container's own count was never compared).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.broker import EmbeddedBroker
from stream.decode import decode_chunk
from stream.envelope import encode_message
from stream.messages import DeadLetter, VideoChunk
from stream.worker import Worker
from tests.reliability.test_truncated_video import FPS, FRAMES, encode

from .conftest import kafka_settings, read_topic
from .test_stream_kafka import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

START = 1_700_000_000.0


def test_a_truncated_mp4_is_indexed_as_far_as_it_decodes_and_dead_lettered_with_the_counts(
        kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    from stream.kafka import KafkaSink

    settings = kafka_settings(kafka_broker, tmp_path, ingest={"sample_fps": 0.0, "load_shed": False},
                              query={"enabled": False})
    whole = encode(workdir=tmp_path)
    cut = whole[: int(len(whole) * 0.4)]
    decodable = decode_chunk(cut, container="mp4", select=lambda i, t: False).decoded
    assert 0 < decodable < FRAMES
    chunks = [VideoChunk(camera_id="cut", sequence=0, first_frame=0, start_time=START, fps=FPS, container="mp4",
                         codec="h264", data=cut),
              VideoChunk(camera_id="whole", sequence=0, first_frame=0, start_time=START, fps=FPS, container="mp4",
                         codec="h264", data=whole)]
    sink = KafkaSink(settings.kafka, client_id="it-truncated")
    try:
        with Worker(settings) as worker:
            assert worker.wait_ready(30), worker.health.ready()
            for chunk in chunks:
                out = encode_message(chunk, source="it")
                sink.send(settings.topics.video, out.value, key=out.key, headers=out.headers)
            sink.flush()
            ingest = worker.ingest
            assert ingest is not None
            wait_for(lambda: sum(ingest.positions.values()) >= 2, 60, "both chunks read")
            wait_for(lambda: sum(ingest.committed.values()) >= 2, 60, "both offsets committed")
            assert len(worker.index or []) == decodable + FRAMES  # every frame that decoded is indexed
            assert ingest.stats.frames_indexed == decodable + FRAMES
            letters = read_topic(settings, settings.topics.dead_letters, DeadLetter, count=1)
            assert worker.metrics.value("l2g_dead_letters_total") == 1
    finally:
        sink.close()
    assert len(letters) == 1, letters
    letter = letters[0]
    assert (letter.stage, letter.reason, letter.original_key) == ("ingest", "truncated_video", b"cut")
    assert f"{decodable} of {FRAMES}" in letter.error_message, letter.error_message
