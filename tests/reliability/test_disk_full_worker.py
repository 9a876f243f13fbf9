"""A full snapshot volume under a running worker (in-memory broker, toy extractor, real snapshots on disk).

A checkpoint whose snapshot fails commits nothing (the previous snapshot and its committed offset stay the truth, so
a crash during the outage loses nothing) and counts ``l2g_snapshot_failures_total``; a worker restarted after the
outage ends with every frame once. For availability, the worker keeps ingesting and answering queries while the disk
is full and checkpoints again once space returns.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import l2g_core.index.persistence as persistence
from stream.envelope import decode_message, encode_message
from stream.messages import Query, QueryResult
from stream.settings import Settings
from stream.testing import MemoryBroker, MemoryConnector
from stream.video import SyntheticCamera, chunk_messages, encode_segments
from stream.worker import Worker
from tests.reliability import faults

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

START = 1_700_000_000.0
FPS = 10.0


def _settings(tmp: Path, worker_id: str = "w") -> Settings:
    return Settings(
        extractor={"name": "toy"},
        ingest={"sample_fps": 0.0, "load_shed": False, "batch_size": 4, "commit_interval_s": 0.2,
                "poll_timeout_s": 0.01, "max_poll_records": 2},
        query={"poll_timeout_s": 0.01, "default_timeout_s": 10.0, "k": 3},
        index={"snapshot_dir": str(tmp / "snapshots"), "retention_seconds": None,
               "retrieval": {"shortlist": 50, "rerank_k": 20, "g2l_shortlist": 20}},
        http={"enabled": False}, topics={"partitions": 3}, runtime={"worker_id": worker_id, "progress": False},
    )


def _publish(broker: MemoryBroker, camera: str, seed: int, seconds: int, first: int = 0) -> None:
    """Frames ``first .. first + seconds * FPS`` of one camera, as 1-s chunks numbered within the whole stream."""
    cam = SyntheticCamera(seed, 256, 160, world_frames=200)
    segs = [dataclasses.replace(s, first_frame=s.first_frame + first, start=s.start + first / FPS)
            for s in encode_segments(cam.frames(int(seconds * FPS), start=first), FPS, segment_seconds=1.0)]
    for _, out in chunk_messages(camera, segs, start_time=START, max_bytes=900_000, source="t",
                                 first_sequence=first // int(FPS)):
        broker.append("l2g.video", out.key, out.value, out.headers)


def _ask(broker: MemoryBroker, worker: Worker, image: np.ndarray, timeout_s: float = 20.0) -> QueryResult | None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    q = Query(query_id=f"q{time.monotonic_ns()}", image=bytes(buf), sent_at=time.time(), k=3, mode="local")
    out = encode_message(q, source="t")
    broker.append("l2g.queries", out.key, out.value, out.headers)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not worker.stopping:
        for r in broker.records("l2g.results"):
            res = decode_message(r.value, r.headers, QueryResult)
            if res.query_id == q.query_id:
                return res
        time.sleep(0.05)
    return None


class _FullDisk:
    """While ``full`` is set, every snapshot file write fails with ENOSPC."""

    def __init__(self) -> None:
        self.full = False
        self.refused = 0
        self._original = persistence._atomic_write

    def __call__(self, path: Path, write: Any) -> None:
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._original(path, write)


def _step(worker: Worker) -> bool:
    """One iteration of every loop, as ``Worker._run_loop`` would (a failed checkpoint is reported in its
    ``SnapshotReport`` and counted, never raised: the loop goes on)."""
    worker.step()
    return True


def _committed(broker: MemoryBroker) -> int:
    return sum(broker.committed("l2g-ingest", p) or 0 for p in broker.partitions_of("l2g.video"))


def test_a_failed_checkpoint_commits_nothing_and_a_restart_recovers_every_frame(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = MemoryBroker(3)
    disk = _FullDisk()
    monkeypatch.setattr(persistence, "_atomic_write", disk)
    worker = Worker(_settings(tmp_path), connector=MemoryConnector(broker)).open()
    _publish(broker, "cam-a", 1, 4)
    faults.wait_until(lambda: (_step(worker), _committed(broker) >= 1)[1], 30, "a first commit")
    faults.wait_until(lambda: (_step(worker), len(worker.index or []) >= 40)[1], 30, "40 frames")
    _step(worker)
    worker.ingest.checkpoint()  # type: ignore[union-attr]
    committed_before = _committed(broker)
    keys_before, offsets_before = faults.snapshot_keys(tmp_path / "snapshots")

    disk.full = True
    _publish(broker, "cam-a", 1, 4, first=40)
    faults.wait_until(lambda: (_step(worker), len(worker.index or []) >= 80)[1], 30, "80 frames while full")
    for _ in range(20):  # several checkpoints fail meanwhile
        _step(worker)
        time.sleep(0.01)
    assert disk.refused >= 1 and not worker.stopping
    assert worker.metrics.value("l2g_snapshot_failures_total") >= 1
    assert _committed(broker) == committed_before, "offsets were committed for frames that are not on disk"
    keys_during, offsets_during = faults.snapshot_keys(tmp_path / "snapshots")  # the old snapshots still load
    assert (keys_during, offsets_during) == (keys_before, offsets_before)
    worker.stop()  # a crash would do the same: its final checkpoint fails too, nothing more is committed
    assert _committed(broker) == committed_before

    disk.full = False
    successor = Worker(_settings(tmp_path, "w2"), connector=MemoryConnector(broker)).open()
    faults.wait_until(lambda: (_step(successor), len(successor.index or []) >= 80)[1], 60, "80 frames")
    successor.stop()
    keys, _ = faults.snapshot_keys(tmp_path / "snapshots")
    assert len(keys) == len(set(keys)) == 80
    assert _committed(broker) == len(broker.records("l2g.video"))


def test_the_worker_keeps_serving_while_the_disk_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broker = MemoryBroker(3)
    disk = _FullDisk()
    monkeypatch.setattr(persistence, "_atomic_write", disk)
    worker = Worker(_settings(tmp_path), connector=MemoryConnector(broker)).start()
    try:
        assert worker.wait_ready(30)
        _publish(broker, "cam-b", 2, 4)
        faults.wait_until(lambda: _committed(broker) >= 1, 30, "a first commit")
        disk.full = True
        _publish(broker, "cam-b", 2, 4, first=40)
        faults.wait_until(lambda: disk.refused >= 1 or worker.stopping, 30, "the disk to refuse a snapshot")
        time.sleep(1.0)
        assert not worker.stopping, f"the worker stopped on a full disk: {worker.error!r}"
        result = _ask(broker, worker, SyntheticCamera(2, 256, 160, world_frames=200).frame(55))
        assert result is not None and result.matches, "no answer while the disk is full"
        assert result.matches[0].camera_id == "cam-b"
        disk.full = False
        faults.wait_until(lambda: _committed(broker) == len(broker.records("l2g.video")), 30,
                          "a commit of every chunk once space returns")
    finally:
        worker.stop()
    keys, _ = faults.snapshot_keys(tmp_path / "snapshots")
    assert len(keys) == len(set(keys)) == 80
