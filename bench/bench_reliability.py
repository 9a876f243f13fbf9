"""Reliability under load: query latency and deadline misses while ingesting, and memory with retention evicting.

Both parts run one in-process worker (``stream.worker.Worker``, default extractor ``toy``) against the embedded
tansu broker on loopback, with real H.264 MPEG-TS chunks of synthetic cameras and real snapshots on disk.

* ``load``: cameras are published at ``--realtime`` times real time while queries (crops of published frames) arrive
  at ``--qps`` with a ``--budget`` second deadline each. Reported: end-to-end latency (sent → result read back)
  p50/p95/p99, the share of queries whose result came after their deadline or never, the share answered
  ``partial``, the ingest rate, and consumer lag.
* ``burst``: ``--burst`` queries published at once after the cameras are ingested (one warm-up query first). Reported:
  answered / unanswered, complete / partial (shed or cut at the deadline), how late each answer came relative to its
  deadline (p50/p95/p99/max) and the share no later than 100 ms past it.
* ``memory``: event time runs ``--memory-speed`` times faster than the wall clock (chunks carry advancing
  timestamps), with ``--retention`` seconds of retention, so the index fills and then evicts whole buckets. The
  resident memory (VmRSS) of the process is sampled every second; reported at the start of the steady state (once
  eviction has begun), in the middle and at the end, with a least-squares slope over the steady state (MB/min),
  next to the index size and the snapshot directory size.

* ``restart``: the broker restarts empty while a worker ingests and answers queries (:mod:`bench.bench_restart`):
  frames lost, queries unanswered, time to recover, readiness during the outage.

Run: ``python -m bench.bench_reliability [--parts load memory] [--seconds 60] [--memory-seconds 120]``; JSON lines on
stdout (one per part), progress on stderr. Every loop is bounded by its duration.
"""

from __future__ import annotations

from stream.runtime import configure_process

configure_process()  # OMP_WAIT_POLICY, before torch and FAISS load OpenMP (see stream/runtime.py)

import argparse  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import emit, machine, peak_rss_mb, percentiles, progress  # noqa: E402
from l2g_core import MODES  # noqa: E402
from stream.broker import EmbeddedBroker  # noqa: E402
from stream.envelope import decode_message, encode_message  # noqa: E402
from stream.kafka import KafkaSink, KafkaSource  # noqa: E402
from stream.messages import Query, QueryResult, VideoChunk  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.video import Segment, SyntheticCamera, encode_segments  # noqa: E402
from stream.worker import Worker  # noqa: E402

START = 1_700_000_000.0
FPS = 10.0
SEGMENT_S = 1.0
POOL_FRAMES = 120  # distinct frames per camera, encoded once and re-published with new frame numbers and times


def rss_mb() -> float:
    """Current resident memory of this process (VmRSS) in MiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def settings_for(broker: EmbeddedBroker, tmp: Path, args: argparse.Namespace, *, retention: float | None,
                 bucket_s: float) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(
        kafka={"bootstrap_servers": broker.bootstrap, "session_timeout_ms": 2000, "heartbeat_interval_ms": 500,
               "max_poll_interval_ms": 8000},
        topics={"video": f"{tag}.video", "queries": f"{tag}.queries", "candidates": f"{tag}.candidates",
                "results": f"{tag}.results", "dead_letters": f"{tag}.dlq", "partitions": 3},
        ingest={"group_id": f"{tag}-ingest", "sample_fps": args.sample_fps, "commit_interval_s": 2.0},
        query={"merge_group_id": f"{tag}-merge", "default_timeout_s": args.budget, "poll_timeout_s": 0.05},
        index={"snapshot_dir": str(tmp / "snapshots"), "retention_seconds": retention, "bucket_seconds": bucket_s,
               "retrieval": {"shortlist": 100, "rerank_k": 30, "g2l_shortlist": 30}},
        extractor={"name": args.extractor},
        http={"enabled": False},
        runtime={"worker_id": f"bench-{tag}", "progress": False, "torch_threads": 1, "faiss_threads": 1},
    )


@dataclass
class Camera:
    name: str
    cam: SyntheticCamera
    pool: list[Segment]
    next_chunk: int = 0


def make_cameras(n: int, width: int, height: int) -> list[Camera]:
    cams = []
    for i in range(n):
        cam = SyntheticCamera(100 + i, width, height, world_frames=POOL_FRAMES)
        pool = list(encode_segments(cam.frames(POOL_FRAMES), FPS, segment_seconds=SEGMENT_S))
        cams.append(Camera(f"cam-{i}", cam, pool))
    return cams


def publish_chunk(sink: KafkaSink, settings: Settings, camera: Camera, event_seconds_per_chunk: float) -> None:
    """The camera's next chunk: pool segment ``n % len(pool)`` with stream-wide frame numbers and event time."""
    n = camera.next_chunk
    seg = camera.pool[n % len(camera.pool)]
    per = seg.frame_count
    chunk = VideoChunk(camera_id=camera.name, sequence=n, first_frame=n * per,
                       start_time=START + n * event_seconds_per_chunk, fps=per / event_seconds_per_chunk,
                       container="mpegts", codec=seg.codec, frame_count=per, data=seg.data)
    out = encode_message(chunk, source="bench", max_bytes=settings.kafka.max_message_bytes)
    sink.send(settings.topics.video, out.value, key=out.key, headers=out.headers)
    camera.next_chunk += 1


@dataclass
class Publisher:
    """Publishes every camera's next chunk ``chunks_per_s`` times a second until stopped."""

    settings: Settings
    cameras: list[Camera]
    chunks_per_s: float
    event_seconds_per_chunk: float
    stop: threading.Event = field(default_factory=threading.Event)
    published: int = 0

    def run(self) -> None:
        sink = KafkaSink(self.settings.kafka, client_id="bench-publisher")
        try:
            t0 = time.monotonic()
            while not self.stop.is_set():
                for cam in self.cameras:
                    publish_chunk(sink, self.settings, cam, self.event_seconds_per_chunk)
                    self.published += 1
                sink.flush(10.0)
                rounds = self.published / len(self.cameras)
                self.stop.wait(max(0.0, t0 + rounds / self.chunks_per_s - time.monotonic()))
        finally:
            sink.close()


@dataclass
class ResultReader:
    """Reads the results topic from its end; first result per query id with its arrival time."""

    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    results: dict[str, tuple[float, QueryResult]] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        source = KafkaSource(self.settings.kafka, client_id="bench-results", group_id=None, fetch_max_wait_ms=20)
        try:
            parts: list[Any] = []
            while not parts and not self.stop.is_set():
                parts = source.assign_all(self.settings.topics.results, from_end=True)
                if not parts:
                    time.sleep(0.1)
            self.ready.set()
            while not self.stop.is_set():
                for rec in source.poll(0.1, 200):
                    now = time.time()
                    res = decode_message(rec.value, rec.headers, QueryResult)
                    self.results.setdefault(res.query_id, (now, res))
        finally:
            source.close()


def crop_png(image: np.ndarray, rng: random.Random) -> bytes:
    h, w = image.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 0.8)), int(w * rng.uniform(0.5, 0.8))
    y, x = rng.randrange(0, h - ch + 1), rng.randrange(0, w - cw + 1)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image[y:y + ch, x:x + cw], cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def run_load(args: argparse.Namespace, broker: EmbeddedBroker, tmp: Path) -> dict[str, Any]:
    settings = settings_for(broker, tmp / "load", args, retention=None, bucket_s=60.0)
    cameras = make_cameras(args.cameras, args.width, args.height)
    worker = Worker(settings).start()
    assert worker.wait_ready(120), "worker not ready"
    reader = ResultReader(settings)
    threading.Thread(target=reader.run, name="bench-results", daemon=True).start()
    reader.ready.wait(30)
    publisher = Publisher(settings, cameras, chunks_per_s=args.realtime / SEGMENT_S, event_seconds_per_chunk=SEGMENT_S)
    pub_thread = threading.Thread(target=publisher.run, name="bench-publisher", daemon=True)
    pub_thread.start()
    time.sleep(args.warmup)  # something to search
    rng = random.Random(0)
    sink = KafkaSink(settings.kafka, client_id="bench-queries")
    sent: dict[str, float] = {}
    frames_at_start = len(worker.index or [])
    t_start = time.monotonic()
    progress(f"load: {args.qps} queries/s for {args.seconds} s while publishing {len(cameras)} cameras at "
             f"{args.realtime}x real time")
    try:
        i = 0
        while time.monotonic() - t_start < args.seconds:
            cam = rng.choice(cameras)
            done_chunks = max(1, cam.next_chunk - 2)
            frame = rng.randrange(0, done_chunks * int(FPS * SEGMENT_S)) % POOL_FRAMES
            now = time.time()
            q = Query(query_id=f"bench-{i}", image=crop_png(cam.cam.frame(frame), rng), k=5, mode=args.mode,
                      deadline=now + args.budget, sent_at=now)
            out = encode_message(q, source="bench", max_bytes=settings.kafka.max_message_bytes)
            sink.send(settings.topics.queries, out.value, key=out.key, headers=out.headers)
            sink.flush(5.0)
            sent[q.query_id] = now
            i += 1
            time.sleep(max(0.0, t_start + i / args.qps - time.monotonic()))
        time.sleep(args.budget + 2.0)  # the last answers
    finally:
        publisher.stop.set()
        pub_thread.join(15)
        sink.close()
    elapsed = time.monotonic() - t_start
    frames_indexed = len(worker.index or []) - frames_at_start
    stats = worker.ingest.stats if worker.ingest is not None else None
    lag = worker.metrics.value("l2g_consumer_lag_messages")  # the gauge (the consumer belongs to its thread)
    reader.stop.set()
    worker.stop()
    latencies, late, missing, partial, errors = [], 0, 0, 0, 0
    for qid, t_sent in sent.items():
        if qid not in reader.results:
            missing += 1
            continue
        t_recv, res = reader.results[qid]
        latencies.append(t_recv - t_sent)
        late += t_recv > t_sent + args.budget
        partial += res.status == "partial"
        errors += res.status == "error"
    n = len(sent)
    return {
        "part": "load", "extractor": args.extractor, "mode": args.mode or "l2g", "cameras": len(cameras),
        "realtime_factor": args.realtime, "qps_target": args.qps, "queries": n, "budget_s": args.budget,
        "seconds": round(elapsed, 1), **percentiles(latencies),
        "deadline_miss_rate": round((late + missing) / n, 4) if n else None, "late": late, "unanswered": missing,
        "partial_rate": round(partial / n, 4) if n else None, "errors": errors,
        "frames_indexed_during": frames_indexed, "ingest_fps": round(frames_indexed / elapsed, 2),
        "chunks_published": publisher.published, "chunks_consumed": stats.chunks if stats else None,
        "frames_shed": stats.skipped.get("load_shed", 0) if stats else None,
        "lag_at_end": lag, "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def run_burst(args: argparse.Namespace, broker: EmbeddedBroker, tmp: Path) -> dict[str, Any]:
    """``--burst`` queries published at once (one worker, the cameras ingested first): lateness and shedding."""
    settings = settings_for(broker, tmp / "burst", args, retention=None, bucket_s=60.0)
    cameras = make_cameras(args.cameras, args.width, args.height)
    worker = Worker(settings).start()
    assert worker.wait_ready(120), "worker not ready"
    reader = ResultReader(settings)
    threading.Thread(target=reader.run, name="bench-results", daemon=True).start()
    reader.ready.wait(30)
    sink = KafkaSink(settings.kafka, client_id="bench-burst")
    for _ in range(4):
        for cam in cameras:
            publish_chunk(sink, settings, cam, SEGMENT_S)
    sink.flush(10.0)
    deadline = time.monotonic() + 120
    while worker.ingest is not None and sum(worker.ingest.positions.values()) < 4 * len(cameras) and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    rng = random.Random(1)
    queries = []
    for i in range(args.burst + 1):
        cam = rng.choice(cameras)
        queries.append(Query(query_id=f"burst-{i}", image=crop_png(cam.cam.frame(rng.randrange(0, 30)), rng), k=5,
                             mode=args.mode))
    warm = queries.pop(0)  # one query alone first: the worker learns what a search costs
    now = time.time()
    out = encode_message(warm.model_copy(update={"deadline": now + 30.0, "sent_at": now}), source="bench")
    sink.send(settings.topics.queries, out.value, key=out.key, headers=out.headers)
    sink.flush(5.0)
    while warm.query_id not in reader.results and time.time() < now + 35.0:
        time.sleep(0.05)
    progress(f"burst: {len(queries)} queries at once, {args.budget} s budget each ({args.extractor})")
    now = time.time()
    deadlines = {}
    for q in queries:
        q = q.model_copy(update={"deadline": now + args.budget, "sent_at": now})
        out = encode_message(q, source="bench", max_bytes=settings.kafka.max_message_bytes)
        sink.send(settings.topics.queries, out.value, key=out.key, headers=out.headers)
        deadlines[q.query_id] = now + args.budget
    sink.flush(10.0)
    end = time.time() + args.budget + 10.0
    while time.time() < end and not all(q in reader.results for q in deadlines):
        time.sleep(0.05)
    reader.stop.set()
    shed = worker.metrics.value("l2g_queries_shed_total")
    worker.stop()
    sink.close()
    late_by = [reader.results[q][0] - d for q, d in deadlines.items() if q in reader.results]
    statuses = [reader.results[q][1].status for q in deadlines if q in reader.results]
    n = len(deadlines)
    return {
        "part": "burst", "extractor": args.extractor, "mode": args.mode or "l2g", "queries": n,
        "budget_s": args.budget, "answered": len(late_by), "unanswered": n - len(late_by),
        "complete": statuses.count("complete"), "partial": statuses.count("partial"), "errors": statuses.count("error"),
        "shed": shed, **{f"late_by_{k}": v for k, v in percentiles(late_by).items()},
        "late_by_max_s": round(max(late_by), 3) if late_by else None,
        "within_100ms_of_deadline": round(sum(x <= 0.1 for x in late_by) / n, 4) if n else None,
    }


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 3:
        return float("nan")
    t = np.array([s[0] for s in samples])
    y = np.array([s[1] for s in samples])
    return float(np.polyfit(t / 60.0, y, 1)[0])


def run_memory(args: argparse.Namespace, broker: EmbeddedBroker, tmp: Path) -> dict[str, Any]:
    settings = settings_for(broker, tmp / "memory", args, retention=args.retention, bucket_s=args.retention / 6)
    cameras = make_cameras(args.cameras, args.width, args.height)
    worker = Worker(settings).start()
    assert worker.wait_ready(120), "worker not ready"
    # event time runs memory_speed x faster than the wall clock: each 1-s chunk covers memory_speed seconds
    publisher = Publisher(settings, cameras, chunks_per_s=1.0 / SEGMENT_S, event_seconds_per_chunk=args.memory_speed)
    pub_thread = threading.Thread(target=publisher.run, name="bench-publisher", daemon=True)
    progress(f"memory: {args.memory_seconds} s, retention {args.retention} s of event time, event time "
             f"{args.memory_speed}x the wall clock")
    samples: list[tuple[float, float, int, float]] = []  # (t, rss, index frames, evicted)
    t0 = time.monotonic()
    pub_thread.start()
    evicted_at: float | None = None
    try:
        while time.monotonic() - t0 < args.memory_seconds:
            time.sleep(1.0)
            # frames evicted = indexed - held, measured independently of l2g_index_evicted_frames_total (which
            # counts RollingIndex.add's AddReport.evicted and the checkpoints' evictions); both are reported
            indexed = worker.ingest.stats.frames_indexed if worker.ingest is not None else 0
            evicted = float(indexed - len(worker.index or []))
            if evicted > 0 and evicted_at is None:
                evicted_at = time.monotonic() - t0
            samples.append((time.monotonic() - t0, rss_mb(), len(worker.index or []), evicted))
    finally:
        publisher.stop.set()
        pub_thread.join(15)
    snapshots_mb = dir_mb(tmp / "memory" / "snapshots")
    evicted_metric = worker.metrics.value("l2g_index_evicted_frames_total")
    stats = worker.ingest.stats if worker.ingest is not None else None
    worker.stop()
    steady = [s for s in samples if evicted_at is not None and s[0] >= evicted_at]
    if len(steady) < 3:
        steady = samples[len(samples) // 2:]
    start, middle, end = steady[0], steady[len(steady) // 2], steady[-1]
    return {
        "part": "memory", "extractor": args.extractor, "cameras": len(cameras), "seconds": args.memory_seconds,
        "retention_s": args.retention, "event_speed": args.memory_speed,
        "event_seconds_per_camera": publisher.published / len(cameras) * args.memory_speed,
        "eviction_began_s": None if evicted_at is None else round(evicted_at, 1),
        "rss_mb": {"before_eviction": round(samples[0][1], 1), "steady_start": round(start[1], 1),
                   "steady_middle": round(middle[1], 1), "steady_end": round(end[1], 1)},
        "rss_slope_mb_per_min": round(slope_mb_per_min([(s[0], s[1]) for s in steady]), 2),
        "rss_slope_second_half_mb_per_min": round(
            slope_mb_per_min([(s[0], s[1]) for s in steady[len(steady) // 2:]]), 2),
        "index_frames": {"steady_start": start[2], "steady_middle": middle[2], "steady_end": end[2],
                         "max": max(s[2] for s in samples)},
        "frames_indexed": stats.frames_indexed if stats else None, "frames_evicted": end[3],
        "evicted_metric": evicted_metric,
        "snapshot_dir_mb_end": round(snapshots_mb, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=["load", "burst", "memory", "restart"],
                        default=["load", "burst", "memory", "restart"])
    parser.add_argument("--extractor", default="toy")
    parser.add_argument("--mode", choices=MODES, default=None)
    parser.add_argument("--burst", type=int, default=50, help="burst: queries published at once")
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--sample-fps", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="load: query phase duration")
    parser.add_argument("--warmup", type=float, default=5.0, help="load: ingest before the first query")
    parser.add_argument("--qps", type=float, default=4.0, help="load: queries per second")
    parser.add_argument("--budget", type=float, default=2.0, help="load: deadline of each query (s)")
    parser.add_argument("--realtime", type=float, default=1.0, help="load: publish rate, times real time")
    parser.add_argument("--memory-seconds", type=float, default=120.0)
    parser.add_argument("--retention", type=float, default=60.0, help="memory: retention (event seconds)")
    parser.add_argument("--memory-speed", type=float, default=4.0, help="memory: event seconds per wall second")
    parser.add_argument("--restart-warmup", type=float, default=10.0, help="restart: seconds before the outage")
    parser.add_argument("--restart-outage", type=float, default=3.0, help="restart: seconds the broker is down")
    parser.add_argument("--restart-after", type=float, default=30.0, help="restart: seconds after the outage")
    parser.add_argument("--restart-qps", type=float, default=2.0, help="restart: queries per second")
    parser.add_argument("--restart-replay", type=float, default=30.0,
                        help="restart: seconds of delivered chunks the gateway replays after a failure")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    broker = EmbeddedBroker(log_path=tmp / "tansu.log").start()
    try:
        emit({"part": "machine", **machine()})
        if "load" in args.parts:
            emit(run_load(args, broker, tmp))
        if "burst" in args.parts:
            emit(run_burst(args, broker, tmp))
        if "memory" in args.parts:
            emit(run_memory(args, broker, tmp))
        if "restart" in args.parts:  # its own broker: the restart must not touch the other parts
            from bench.bench_restart import run_restart

            emit(run_restart(args, tmp))
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
