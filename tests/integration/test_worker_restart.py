"""A worker process killed mid-stream (SIGKILL) and restarted loses no frame and indexes none twice."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from l2g_core.index.persistence import load_index
from stream.broker import EmbeddedBroker, free_port
from stream.client import publish_segments
from stream.kafka import KafkaSink, ensure_topics
from stream.kafka.admin import committed_offsets
from stream.settings import Settings
from stream.video import SyntheticCamera, encode_segments

from .conftest import REPO_ROOT, kafka_settings

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(150)]

FPS = 10.0
START = 1_700_000_000.0


def scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(l2g_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def start_worker(config: Path, log: Path, worker_id: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "L2G_RUNTIME__WORKER_ID": worker_id,
           "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "stream.cli", "worker", "--config", str(config)],
                                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_metric(port: int, name: str, at_least: float, timeout_s: float, proc: subprocess.Popen[bytes],
                log: Path) -> dict[str, float]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        values = scrape(port)
        if values.get(name, 0.0) >= at_least:
            return values
        time.sleep(0.05)
    raise AssertionError(f"{name} < {at_least} after {timeout_s} s; last {scrape(port)}\n{log.read_text()[-3000:]}")


def test_sigkill_mid_stream_then_restart_loses_nothing_and_indexes_nothing_twice(
        kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    port = free_port()
    settings: Settings = kafka_settings(
        kafka_broker, tmp_path,
        ingest={"sample_fps": 0.0, "load_shed": False, "commit_interval_s": 0.3, "max_poll_records": 1},
        http={"port": port})
    config = tmp_path / "worker.yaml"
    data = settings.as_dict()
    data.pop("runtime")
    config.write_text(yaml.safe_dump(data))
    cams = {"east": SyntheticCamera(5, 320, 192, world_frames=200), "west": SyntheticCamera(6, 320, 192,
                                                                                             world_frames=200)}
    segments = {name: list(encode_segments(cam.frames(200), FPS, segment_seconds=1.0)) for name, cam in cams.items()}
    total = sum(s.frame_count for segs in segments.values() for s in segs)
    log = tmp_path / "worker.log"

    ensure_topics(settings)  # 3 partitions (a produce to a missing topic would auto-create it with tansu's default)
    sink = KafkaSink(settings.kafka, client_id="it-restart")
    first = start_worker(config, log, "victim")
    try:
        for name, segs in segments.items():  # the first half of each camera
            publish_segments(settings, name, segs[:10], start_time=START, sink=sink)
        wait_metric(port, "l2g_commits_total", 1, 60, first, log)
        for name, segs in segments.items():  # the rest, while the worker is busy
            publish_segments(settings, name, segs[10:], start_time=START + 10.0, sink=sink)
        seen = wait_metric(port, "l2g_frames_indexed_total", 250, 60, first, log)
        assert seen["l2g_frames_indexed_total"] < total, "too late: the worker finished before it was killed"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    killed_at = seen["l2g_frames_indexed_total"]

    second = start_worker(config, log, "successor")
    try:
        after = wait_metric(port, "l2g_index_frames", total, 90, second, log)
        assert after["l2g_index_frames"] == total
        # only frames that were not in a snapshot were extracted again (at-least-once, then dedup by frame key)
        assert after["l2g_frames_indexed_total"] <= total
        second.send_signal(signal.SIGTERM)  # graceful: final snapshot and commit
        assert second.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
    sink.close()

    keys: list[tuple[str, int]] = []
    for part_dir in sorted((tmp_path / "snapshots").glob("*/*")):
        index, _, _ = load_index(part_dir)
        keys += [(k.camera_id, int(k.sequence)) for shard in index.shards() for k in shard.keys]
    assert len(keys) == len(set(keys)) == total, "a frame is missing or indexed twice"
    assert set(keys) == {(name, i) for name in segments for i in range(200)}
    assert all(int(p.name.rsplit("-", 1)[1]) < 3 for p in (tmp_path / "snapshots").glob("*/*"))
    committed = committed_offsets(settings, settings.ingest.group_id, settings.topics.video)
    assert sum(committed.values()) == sum(len(s) for s in segments.values())
    assert 0 < killed_at < total
