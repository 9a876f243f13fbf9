"""Helpers of the deployment integration tests (``tests/integration/test_deploy_*.py``): real workers against the
embedded tansu broker, configured the way ``deploy/`` configures them (env-style settings, shared snapshots)."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from kafka.partitioner.default import murmur2
from prometheus_client.parser import text_string_to_metric_families

from stream.broker import EmbeddedBroker, free_port
from stream.envelope import OutboundMessage, decode_message, encode_message
from stream.errors import BrokerError
from stream.kafka import KafkaSink, KafkaSource, ensure_topics
from stream.messages import Query, QueryResult, VideoChunk
from stream.settings import ENV_PREFIX, Settings
from stream.video import SyntheticCamera, chunk_messages, encode_segments
from stream.worker import Worker
from tests import _harness

ROOT = Path(__file__).resolve().parents[2]

# Group timings that work with tansu (see /work/shared/docs/infra.md): a 1.1 s join, a dead member replaced in
# about 10 s. Production keeps the defaults (Apache Kafka drops a dead member after the session timeout).
GROUP_TIMEOUTS = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "max_poll_interval_ms": 8000}
PARTITIONS = 3
START = 1_700_000_000.0
FPS = 10.0
FRAMES = 40  # 4 s per camera; sampled at 2 fps: 8 indexed frames per camera
WIDTH, HEIGHT = 320, 192
CROP = (slice(32, 160), slice(64, 256))  # rows, cols: on the toy extractor's 16-pixel grid


def embedded_broker() -> Iterator[EmbeddedBroker]:
    """A running tansu broker for a test module (skips when the binary is unavailable; a failure under CI)."""
    try:
        broker = EmbeddedBroker().start()
    except BrokerError as exc:
        _harness.skip(_harness.Kind.BROKER, f"embedded broker unavailable: {exc}")
    try:
        yield broker
    finally:
        broker.stop()


def make_settings(bootstrap: str, prefix: str, worker_id: str, snapshot_dir: Path | None,
                  **groups: dict[str, Any]) -> Settings:
    """Worker settings for one deployment ``prefix`` (its own topics and groups) on the test broker."""
    base: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": bootstrap, **GROUP_TIMEOUTS},
        "topics": {"video": f"{prefix}.video", "queries": f"{prefix}.queries",
                   "candidates": f"{prefix}.candidates", "results": f"{prefix}.results",
                   "dead_letters": f"{prefix}.dlq", "partitions": PARTITIONS, "create": True},
        "ingest": {"group_id": f"{prefix}-ingest", "sample_fps": 2.0, "batch_size": 4, "commit_interval_s": 1.0,
                   "poll_timeout_s": 0.05, "max_poll_records": 4},
        "query": {"merge_group_id": f"{prefix}-merge", "poll_timeout_s": 0.05, "default_timeout_s": 30.0,
                  "k": 5},
        "index": {"snapshot_dir": str(snapshot_dir) if snapshot_dir is not None else None,
                  "retention_seconds": None,
                  "retrieval": {"shortlist": 50, "rerank_k": 20, "g2l_shortlist": 20}},
        "extractor": {"name": "toy"},
        "http": {"enabled": False},
        "runtime": {"worker_id": worker_id, "progress": False, "torch_threads": 1, "faiss_threads": 1},
    }
    for name, values in groups.items():
        base[name] = {**base.get(name, {}), **values}
    return Settings.model_validate(base)


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the ``L2G_*`` environment variables a container would get (compose, the chart)."""
    env: dict[str, str] = {}
    for group, values in settings.model_dump(mode="json").items():
        for name, value in values.items():
            if value is None:
                continue
            if isinstance(value, dict | list):
                text = json.dumps(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[f"{ENV_PREFIX}{group.upper()}__{name.upper()}"] = text
    return env


class WorkerProcess:
    """``l2g-stream worker`` (the image's command) in its own process, configured by environment variables only
    (like a container), with its HTTP endpoint on ``port``; :meth:`kill` crashes it (SIGKILL: no snapshot, no
    commit, no LeaveGroup)."""


    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.port = free_port()
        settings = settings.with_overrides(http={"enabled": True, "host": "127.0.0.1", "port": self.port})
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
        env.update(settings_env(settings))
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in kill/stop
        self.proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "worker"], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        """``(status, body)`` of ``GET path``; ``(0, b"")`` while nothing listens."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except OSError:
            return 0, b""

    def metric(self, name: str) -> float:
        """Sum of the samples named ``name`` on ``/metrics`` (0 when absent or unreachable)."""
        status, body = self.get("/metrics")
        if status != 200:
            return 0.0
        return sum(s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
                   if s.name == name)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"worker process exited with {self.proc.returncode}:\n{self.log()}")
        return self.get("/readyz")[0] == 200

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def cameras_on_partitions(n: int, partitions: int = PARTITIONS) -> list[str]:
    """``n`` camera ids whose keys the Kafka default partitioner (murmur2) spreads over every partition in turn."""
    names: list[str] = []
    i = 0
    while len(names) < n:
        name = f"cam-{i}"
        if (murmur2(name.encode()) & 0x7FFFFFFF) % partitions == len(names) % partitions:
            names.append(name)
        i += 1
    return names


@functools.lru_cache(maxsize=16)
def camera_chunks(camera: str, seed: int) -> tuple[tuple[VideoChunk, OutboundMessage], ...]:
    """Real H.264 MPEG-TS chunks (2 s segments) of a synthetic panning camera."""
    segments = encode_segments(SyntheticCamera(seed, WIDTH, HEIGHT).frames(FRAMES), FPS, segment_seconds=2.0)
    return tuple(chunk_messages(camera, segments, start_time=START, max_bytes=900_000, source="test"))


def camera_frame(seed: int, i: int) -> np.ndarray:
    return SyntheticCamera(seed, WIDTH, HEIGHT).frame(i)


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return bytes(buf)


def frames_per_camera() -> int:
    return int(FRAMES / FPS * 2.0)


class Client:
    """Publisher of chunks and queries, reader of results, for one or more deployments on one broker."""

    def __init__(self, bootstrap: str) -> None:
        self.settings = Settings(kafka={"bootstrap_servers": bootstrap, **GROUP_TIMEOUTS},
                                 runtime={"worker_id": "test-client", "progress": False})
        self.sink = KafkaSink(self.settings.kafka, client_id="test-client")
        self._readers: dict[str, KafkaSource] = {}
        self._results: dict[str, dict[str, list[QueryResult]]] = {}

    def create_topics(self, settings: Settings) -> None:
        ensure_topics(settings)

    def publish_cameras(self, topic: str, cameras: Sequence[str]) -> int:
        """Publish every camera's chunks; returns the frames a worker will index."""
        for seed, camera in enumerate(cameras, start=1):
            for _, out in camera_chunks(camera, seed):
                self.sink.send(topic, out.value, key=out.key, headers=out.headers)
        self.sink.flush(30.0)
        return frames_per_camera() * len(cameras)

    def send_query(self, topic: str, image: bytes, **fields: Any) -> str:
        qid = str(fields.pop("query_id", uuid.uuid4().hex[:10]))
        out = encode_message(Query(query_id=qid, image=image, sent_at=time.time(), **fields), source="test")
        self.sink.send(topic, out.value, key=out.key, headers=out.headers)
        self.sink.flush(10.0)
        return qid

    def result(self, topic: str, query_id: str, timeout_s: float = 60.0) -> QueryResult:
        """The first result for ``query_id`` on ``topic`` (results are read from the beginning)."""
        if topic not in self._readers:
            reader = KafkaSource(self.settings.kafka, client_id=f"test-results-{topic}")
            deadline = time.monotonic() + 30.0
            while not reader.assign_all(topic, from_end=False):
                assert time.monotonic() < deadline, f"topic {topic} never appeared"
                time.sleep(0.2)
            self._readers[topic] = reader
            self._results[topic] = {}
        seen = self._results[topic]
        deadline = time.monotonic() + timeout_s
        while query_id not in seen:
            assert time.monotonic() < deadline, f"no result for {query_id} on {topic} within {timeout_s} s"
            self._read(topic, 0.2)
        return seen[query_id][0]

    def _read(self, topic: str, timeout_s: float) -> None:
        for record in self._readers[topic].poll(timeout_s, 100):
            res = decode_message(record.value, record.headers, QueryResult)
            self._results[topic].setdefault(res.query_id, []).append(res)

    def all_results(self, topic: str, query_id: str, settle_s: float = 1.0) -> list[QueryResult]:
        """Every result for ``query_id`` read so far, after reading ``topic`` for ``settle_s`` more."""
        self.result(topic, query_id)
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            self._read(topic, 0.1)
        return list(self._results[topic][query_id])

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self.sink.close()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str,
             workers: Sequence[Worker] = ()) -> None:
    """Poll ``condition`` until true; fail with ``what`` (and any worker's loop error) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        for worker in workers:
            if worker.error is not None:
                raise AssertionError(f"worker {worker.worker_id} failed: {worker.error!r}") from worker.error
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.1)


def indexed_frames(workers: Sequence[Worker]) -> int:
    return sum(len(w.index) for w in workers if w.index is not None)


def owned_partitions(worker: Worker) -> set[int]:
    """Video partitions whose index the worker holds."""
    return {p.partition for p in worker.index.partitions()} if worker.index is not None else set()


def matches(result: QueryResult) -> list[dict[str, Any]]:
    """The matches as plain data, each ``frame_ref.topic`` without its deployment prefix (``fleet.video`` and
    ``solo.video`` name the same clips in two deployments; partition, offset and frame must still agree)."""
    dumped = [m.model_dump() for m in result.matches]
    for match in dumped:
        ref = match.get("frame_ref")
        if ref is not None:
            ref["topic"] = ref["topic"].split(".", 1)[-1]
    return dumped
