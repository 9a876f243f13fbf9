"""``l2g-stream show`` on a real query: a crop of a real clip, published through the real broker, found by a worker
(xfeat), its frame fetched back from Kafka and drawn with the query's outline where the crop was cut."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.broker import EmbeddedBroker
from stream.cli import main
from stream.client import QueryClient, publish_segments
from stream.contact_sheet import OUTLINE_RGB
from stream.decode import decode_chunk
from stream.kafka import KafkaSource
from stream.sampling import keep_frame
from stream.show import find_query_image, find_result, show_result
from stream.video import segment_file
from stream.worker import Worker

from .conftest import kafka_settings

pytestmark = [pytest.mark.kafka, pytest.mark.shared_data, pytest.mark.slow, pytest.mark.timeout(300)]

CLIP = "intel_one-by-one-person-detection.mp4"  # a fixed camera: the crop's place is the same in nearby frames
START = 1_700_000_000.0
SAMPLE_FPS = 1.0


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return bytes(buf)


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def wait_for(cond, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_show_draws_the_matched_frame_with_the_outline_where_the_crop_was_cut(
        kafka_broker: EmbeddedBroker, shared_data: Path, tmp_path: Path) -> None:
    clip = shared_data / "video" / CLIP
    if not clip.is_file():
        pytest.skip(f"{clip} not found")  # (kind from the shared_data marker)
    settings = kafka_settings(kafka_broker, tmp_path, extractor={"name": "xfeat"},
                              ingest={"sample_fps": SAMPLE_FPS}, query={"verify_top": 5, "default_timeout_s": 30.0})
    segments = list(itertools.islice(segment_file(clip, segment_seconds=2.0), 4))
    # the query: a crop of a frame the worker indexes, decoded exactly as ingest decodes it
    seg = segments[2]
    chunk_start = START + seg.start
    decoded = decode_chunk(seg.data, max_side=settings.ingest.frame_max_side,
                           select=lambda i, off: keep_frame(chunk_start + off, seg.fps, SAMPLE_FPS))
    frame = decoded.frames[0].image
    h, w = frame.shape[:2]
    crop_box = (int(0.30 * w), int(0.25 * h), int(0.75 * w), int(0.75 * h))
    x0, y0, x1, y1 = crop_box
    crop = np.ascontiguousarray(frame[y0:y1, x0:x1])
    with Worker(settings) as worker:
        assert worker.wait_ready(60), worker.health.ready()
        chunks = publish_segments(settings, "entrance", segments, start_time=START).chunks
        assert worker.ingest is not None
        wait_for(lambda: sum(worker.ingest.positions.values()) >= chunks, 180, "ingest")  # type: ignore[union-attr]
        with QueryClient(settings) as client:
            result = client.ask(png(crop), timeout_s=30.0, k=5, query_id="show-it")
    assert result.status == "complete", result
    top = result.matches[0]
    assert top.camera_id == "entrance" and abs(top.timestamp - (chunk_start + decoded.frames[0].offset)) <= 1.01
    assert top.frame_ref is not None and top.frame_ref.topic == settings.topics.video
    g = top.geometry
    assert g is not None and g.status == "verified", g
    assert g.box is not None and g.frame_size == (w, h)
    assert iou(g.box, crop_box) > 0.5, (g.box, crop_box)
    assert result.segments and result.segments[0].match_indices[0] == 0

    # the sheet, drawn from frames fetched back from Kafka; the query image read back from the queries topic
    source = KafkaSource(settings.kafka, client_id="show-it", group_id=None, fetch_max_wait_ms=20)
    try:
        assert find_result(settings, "show-it", source=source, timeout_s=20).query_id == "show-it"
        image = find_query_image(settings, "show-it", source=source, timeout_s=20)
        assert image is not None
        report = show_result(settings, result, source=source, query_image=image, top=4, timeout_s=20)
    finally:
        source.close()
    assert report.frames_shown == min(4, len(result.matches)) and not report.frames_missing
    sheet = report.sheet.image
    assert sheet.ndim == 3 and sheet.shape[1] == 12 + 4 * (300 + 12) and sheet.shape[0] > 300
    tile = report.sheet.tiles[0]
    assert tile.match_index == 0 and tile.width == 300 and tile.height == round(h * 300 / w)
    # the outline drawn on the first tile lies where the crop was cut (in the frame's pixels)
    drawn = np.all(sheet[tile.y:tile.y + tile.height, tile.x:tile.x + tile.width] == OUTLINE_RGB, axis=2)
    ys, xs = np.nonzero(drawn)
    assert xs.size > 100
    outline_box = (xs.min() / tile.scale, ys.min() / tile.scale, (xs.max() + 1) / tile.scale,
                   (ys.max() + 1) / tile.scale)
    assert iou(outline_box, crop_box) > 0.5, (outline_box, crop_box)
    # the tile shows the fetched frame: away from the drawing it is the frame, resized
    expected = cv2.resize(frame, (tile.width, tile.height), interpolation=cv2.INTER_AREA).astype(np.int16)
    shown = sheet[tile.y:tile.y + tile.height, tile.x:tile.x + tile.width].astype(np.int16)
    assert np.median(np.abs(shown - expected)) <= 2

    # the command: the result read from the results topic by query id, the PNG written
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"kafka": {"bootstrap_servers": settings.kafka.bootstrap_servers},
                                  "topics": settings.topics.model_dump(mode="json"),
                                  "ingest": {"frame_max_side": settings.ingest.frame_max_side}}))
    out = tmp_path / "sheet.png"
    assert main(["show", "show-it", "--config", str(config), "--out", str(out), "--top", "4"]) == 0
    written = cv2.imread(str(out))
    assert written is not None and written.shape == sheet.shape
    saved = tmp_path / "result.json"
    saved.write_text(result.model_dump_json())
    out2 = tmp_path / "sheet2.png"
    assert main(["show", "--json", str(saved), "--image", str(tmp_path / "missing.png"), "--out", str(out2),
                 "--config", str(config)]) == 2  # an unreadable --image is bad input
    assert not out2.exists()
