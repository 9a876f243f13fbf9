"""A worker SIGKILLed inside an extractor batch, or half-way through writing a snapshot file, then restarted.

The worker runs as a real process (``l2g-stream worker``) through ``tests.reliability.worker_harness``, whose
``slowtoy`` extractor and slow-disk hook write markers, so the kill lands at the intended instant (not at a random
one, as in ``test_worker_restart.py``). After the kill, every snapshot on disk must load; after the restart, the
index must hold every frame of the topic exactly once and the committed offsets must cover every chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from stream.broker import EmbeddedBroker, free_port
from stream.client import publish_segments
from stream.kafka import KafkaSink, ensure_topics
from stream.kafka.admin import committed_offsets
from stream.video import SyntheticCamera, encode_segments
from tests.reliability import faults

from .conftest import kafka_settings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FPS = 10.0
FRAMES = 120
START = 1_700_000_000.0


def _scenario(broker: EmbeddedBroker, tmp_path: Path, hooks: dict[str, str],
              kill_when: Callable[[list[str]], bool]) -> dict[str, object]:
    port = free_port()
    settings = kafka_settings(
        broker, tmp_path,
        ingest={"sample_fps": 0.0, "load_shed": False, "commit_interval_s": 0.5, "max_poll_records": 1,
                "batch_size": 4},
        extractor={"name": "slowtoy"}, http={"port": port}, query={"enabled": False})
    config = faults.write_config(settings, tmp_path / "worker.yaml")
    cams = {"north": SyntheticCamera(11, 256, 160, world_frames=FRAMES),
            "south": SyntheticCamera(12, 256, 160, world_frames=FRAMES)}
    segments = {n: list(encode_segments(c.frames(FRAMES), FPS, segment_seconds=1.0)) for n, c in cams.items()}
    chunks = sum(len(s) for s in segments.values())
    total = sum(s.frame_count for segs in segments.values() for s in segs)
    ensure_topics(settings)  # clients never create topics
    sink = KafkaSink(settings.kafka, client_id="it-fault-kill")
    for name, segs in segments.items():
        publish_segments(settings, name, segs, start_time=START, sink=sink)
    sink.close()

    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "worker.log"
    marker_file = tmp_path / "markers.txt"
    snapshots = tmp_path / "snapshots"
    victim = faults.start_worker(config, log, "victim", L2G_TEST_MARKERS=str(marker_file), **hooks)
    try:
        faults.wait_until(lambda: faults.scrape(url).get("l2g_commits_total", 0) >= 1, 90, "a first commit",
                          victim, log)
        faults.wait_until(lambda: kill_when(faults.markers(marker_file)), 60, "the kill point", victim, log,
                          poll_s=0.005)
        faults.kill9(victim)
    finally:
        faults.kill9(victim)
    at_kill = faults.markers(marker_file)[-1]
    indexed_at_kill = sum(1 for m in faults.markers(marker_file) if m.startswith("batch-end"))
    torn = faults.temporaries(snapshots)
    keys_at_kill, offsets_at_kill = faults.snapshot_keys(snapshots)  # every snapshot on disk loads
    assert len(keys_at_kill) == len(set(keys_at_kill))

    survivor = faults.start_worker(config, log, "successor")
    try:
        faults.wait_until(lambda: faults.scrape(url).get("l2g_index_frames", 0) >= total, 120,
                          f"{total} frames indexed", survivor, log)
        after = faults.scrape(url)
        assert faults.stop(survivor) == 0, log.read_text()[-3000:]
    finally:
        faults.kill9(survivor)
    keys, _ = faults.snapshot_keys(snapshots)
    assert len(keys) == len(set(keys)) == total, "a frame is missing or indexed twice"
    assert set(keys) == {(n, i) for n in segments for i in range(FRAMES)}
    committed = committed_offsets(settings, settings.ingest.group_id, settings.topics.video)
    assert sum(committed.values()) == chunks
    assert not faults.temporaries(snapshots), "leftover temporaries after the next save"
    return {"killed_at": at_kill, "batches_done_at_kill": indexed_at_kill, "torn_temporaries": len(torn),
            "frames_in_snapshots_at_kill": len(keys_at_kill), "snapshot_offsets_at_kill": offsets_at_kill,
            "frames_total": total, "reindexed_after_restart": after.get("l2g_frames_indexed_total", 0.0)}


@pytest.mark.timeout(240)
def test_sigkill_inside_an_extractor_batch(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    def in_batch(lines: list[str]) -> bool:
        done = sum(1 for m in lines if m.startswith("batch-end"))
        return bool(lines) and lines[-1].startswith("batch-start") and done >= 6

    out = _scenario(kafka_broker, tmp_path, {"L2G_TEST_SLEEP_PER_FRAME": "0.05"}, in_batch)
    print(f"kill inside a batch: {out}")
    assert str(out["killed_at"]).startswith("batch-start")


@pytest.mark.timeout(240)
def test_sigkill_half_way_through_a_snapshot_file(kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    def in_snapshot(lines: list[str]) -> bool:
        manifests = sum(1 for m in lines if m.startswith("snap-end") and m.endswith("manifest.json"))
        return bool(lines) and lines[-1] == "snap-torn" and manifests >= 2

    out = _scenario(kafka_broker, tmp_path,
                    {"L2G_TEST_SLEEP_PER_FRAME": "0.01", "L2G_TEST_SNAPSHOT_SLEEP": "0.5"}, in_snapshot)
    print(f"kill inside a snapshot write: {out}")
    assert out["killed_at"] == "snap-torn"
    assert int(str(out["torn_temporaries"])) >= 1  # the kill did leave a half-written file behind
