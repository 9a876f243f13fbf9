"""The ``restart`` part of ``bench.bench_reliability``: the broker restarts empty while a worker ingests and answers.

One in-process worker (``topics.create`` on, the default) ingests ``--cameras`` synthetic cameras at ``--realtime``
times real time (every decoded frame indexed) and answers queries at ``--restart-qps``; after ``--restart-warmup``
seconds the broker (its own tansu, in memory) is stopped for ``--restart-outage`` seconds and started again empty on
the same port. The camera gateway buffers what it could not deliver, and replays the chunks it delivered in the last
``--restart-replay`` seconds when a delivery fails and when it is told the broker came back empty (tansu lost what
it held, including chunks delivered just before the stop that no worker had read); the worker skips frames it holds
by frame identity. The query client counts a query whose publication failed as refused (it was
told); every query it published must get a result or a dead letter.

Reported: frames published / indexed / lost (by frame identity: camera and frame number), queries sent / refused /
unanswered, the time from the restart to readiness and to the first good answer, readiness sampled every 0.1 s
(ready samples while the broker was away, how long after the stop readiness turned false), the partition counts of
the recreated topics, and the producer warnings logged after the restart.
"""

from __future__ import annotations

import argparse
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_reliability import FPS, POOL_FRAMES, SEGMENT_S, Camera, crop_png, make_cameras, settings_for
from bench.common import progress
from stream.broker import EmbeddedBroker, free_port
from stream.envelope import decode_message, encode_message
from stream.errors import BrokerError, StreamError
from stream.kafka import KafkaSink, KafkaSource, KafkaTopicAdmin
from stream.messages import DeadLetter, Query, QueryResult, VideoChunk
from stream.settings import Settings
from stream.worker import Worker

START = 1_700_000_000.0
_Chunk = tuple[str, int]  # (camera, sequence)


@dataclass
class Gateway:
    """A camera gateway: one chunk per camera every ``1 / chunks_per_s`` s; undelivered chunks are kept and sent
    again (in order), and after a failure the chunks delivered in the last ``replay_s`` are sent once more."""

    settings: Settings
    cameras: list[Camera]
    chunks_per_s: float
    replay_s: float
    stop: threading.Event = field(default_factory=threading.Event)
    replay: threading.Event = field(default_factory=threading.Event)  # told the broker lost data
    delivered: dict[_Chunk, tuple[float, int]] = field(default_factory=dict)  # chunk -> (delivered at, frames)
    failures: int = 0

    def _recent(self, rounds: int) -> list[tuple[Camera, int]]:
        since = time.time() - self.replay_s
        return [(c, n) for c in self.cameras for n in range(rounds)
                if self.delivered.get((c.name, n), (0.0, 0))[0] >= since]

    def _send(self, sink: KafkaSink, cam: Camera, n: int) -> None:
        seg = cam.pool[n % len(cam.pool)]
        chunk = VideoChunk(camera_id=cam.name, sequence=n, first_frame=n * seg.frame_count,
                           start_time=START + n * SEGMENT_S, fps=seg.frame_count / SEGMENT_S, container="mpegts",
                           codec=seg.codec, frame_count=seg.frame_count, data=seg.data)
        out = encode_message(chunk, source="bench-gateway", max_bytes=self.settings.kafka.max_message_bytes)
        sink.send(self.settings.topics.video, out.value, key=out.key, headers=out.headers)

    def run(self) -> None:
        sink: KafkaSink | None = None
        backlog: list[tuple[Camera, int]] = []
        t0 = time.monotonic()
        rounds = 0
        while not self.stop.is_set():
            if time.monotonic() >= t0 + rounds / self.chunks_per_s:
                backlog += [(cam, rounds) for cam in self.cameras]
                rounds += 1
            if self.replay.is_set():  # the broker restarted empty: what it held is gone
                self.replay.clear()
                backlog = self._recent(rounds) + backlog
            try:
                sink = sink or KafkaSink(self.settings.kafka, client_id="bench-gateway")
                batch = list(backlog)
                for cam, n in batch:
                    self._send(sink, cam, n)
                sink.flush(10.0)
            except StreamError as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    progress(f"restart: gateway cannot deliver ({str(exc)[:100]}); {len(backlog)} chunk(s) kept")
                if self.failures == 1:  # the broker may have lost what it had: replay the recent past once
                    backlog = self._recent(rounds) + backlog
                self.stop.wait(0.5)
                continue
            now = time.time()
            for cam, n in batch:
                self.delivered.setdefault((cam.name, n), (now, cam.pool[n % len(cam.pool)].frame_count))
            backlog = backlog[len(batch):]
            if self.failures and not backlog:
                self.failures = 0
            self.stop.wait(max(0.0, min(0.05, t0 + rounds / self.chunks_per_s - time.monotonic())))
        if sink is not None:
            sink.close()


@dataclass
class Answers:
    """Reads results and dead letters from their start, following topics that are recreated or re-partitioned."""

    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    results: dict[str, tuple[float, QueryResult]] = field(default_factory=dict)
    dead_letters: set[str] = field(default_factory=set)

    def _take(self, topic: str, rec: Any) -> None:
        if topic == self.settings.topics.results:
            res = decode_message(rec.value, rec.headers, QueryResult)
            self.results.setdefault(res.query_id, (time.time(), res))
            return
        letter = decode_message(rec.value, rec.headers, DeadLetter)
        if letter.original_topic == self.settings.topics.queries and letter.original_key:
            self.dead_letters.add(letter.original_key.decode("utf-8", "replace"))

    def read_all(self) -> None:
        """Everything the topics hold now, from their start (a fresh consumer: what the live one may have missed)."""
        for t in (self.settings.topics.results, self.settings.topics.dead_letters):
            src = KafkaSource(self.settings.kafka, client_id=f"bench-final-{t}", fetch_max_wait_ms=20)
            try:
                if not src.assign_all(t, from_end=False):
                    continue
                idle = 0
                while idle < 5:
                    records = src.poll(0.2, 1000)
                    idle = 0 if records else idle + 1
                    for rec in records:
                        self._take(t, rec)
            finally:
                src.close()

    def run(self) -> None:
        topics = [self.settings.topics.results, self.settings.topics.dead_letters]
        sources = {t: KafkaSource(self.settings.kafka, client_id=f"bench-{t}", fetch_max_wait_ms=20) for t in topics}
        assigned: dict[str, set[Any]] = {t: set() for t in topics}
        next_check = 0.0
        try:
            while not self.stop.is_set():
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + 1.0
                    for t, src in sources.items():
                        try:
                            if set(src.partitions_for(t)) != assigned[t]:
                                assigned[t] = set(src.assign_all(t, from_end=False))
                        except BrokerError:
                            pass
                for t, src in sources.items():
                    if not assigned[t]:
                        continue
                    try:
                        records = src.poll(0.05, 500)
                    except BrokerError:
                        continue
                    for rec in records:
                        self._take(t, rec)
                if not any(assigned.values()):
                    time.sleep(0.1)
        finally:
            for src in sources.values():
                src.close()


class _Count(logging.Handler):
    """Counts WARNING+ records of the producer loggers."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "producer" in record.name:
            self.count += 1


def _index_identities(worker: Worker) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for _, index in list(worker.index.items() if worker.index is not None else []):
        for shard in index.shards():
            out.update((k.camera_id, int(k.sequence)) for k in shard.keys)
    return out


def run_restart(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The broker-restart scenario (see the module docstring); returns the JSON record."""
    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp / "tansu-restart.log").start()
    base = settings_for(broker, tmp / "restart", args, retention=None, bucket_s=60.0)
    settings = base.model_copy(update={"ingest": base.ingest.model_copy(update={"sample_fps": 0.0})})
    cameras = make_cameras(args.cameras, args.width, args.height)
    worker = Worker(settings).start()
    assert worker.wait_ready(120), "worker not ready"
    answers = Answers(settings)
    gateway = Gateway(settings, cameras, chunks_per_s=args.realtime / SEGMENT_S, replay_s=args.restart_replay)
    threads = [threading.Thread(target=answers.run, daemon=True), threading.Thread(target=gateway.run, daemon=True)]
    for t in threads:
        t.start()
    ready_samples: list[tuple[float, bool]] = []
    sent: dict[str, float] = {}
    refused = 0
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            ready_samples.append((time.monotonic(), worker.ready))
            stop.wait(0.1)

    counter = _Count()
    threading.Thread(target=sample, daemon=True).start()
    rng = random.Random(5)
    sink: KafkaSink | None = None
    t_start = time.monotonic()
    t_stop = t_start + args.restart_warmup
    t_back: float | None = None
    end = t_stop + args.restart_outage + args.restart_after
    progress(f"restart: {len(cameras)} camera(s), {args.restart_qps} queries/s; broker down after "
             f"{args.restart_warmup:g} s for {args.restart_outage:g} s, then {args.restart_after:g} s more")
    i = 0
    while time.monotonic() < end:
        if t_back is None and time.monotonic() >= t_stop:
            broker.stop()
            logging.getLogger().addHandler(counter)
            time.sleep(args.restart_outage)
            broker = EmbeddedBroker(port=port, log_path=tmp / "tansu-restart.log").start()
            t_back = time.monotonic()
            gateway.replay.set()  # the operator tells the gateways: the broker came back empty
        cam = rng.choice(cameras)
        done = max(1, len([c for c in gateway.delivered if c[0] == cam.name]) - 1)
        now = time.time()
        frame = cam.cam.frame(rng.randrange(min(done * int(FPS * SEGMENT_S), POOL_FRAMES)))
        q = Query(query_id=f"restart-{i}", image=crop_png(frame, rng), k=5, deadline=now + args.budget, sent_at=now)
        i += 1
        try:
            sink = sink or KafkaSink(settings.kafka, client_id="bench-queries")
            out = encode_message(q, source="bench", max_bytes=settings.kafka.max_message_bytes)
            sink.send(settings.topics.queries, out.value, key=out.key, headers=out.headers)
            sink.flush(5.0)
            sent[q.query_id] = time.monotonic()
        except StreamError:
            refused += 1
        time.sleep(max(0.0, t_start + i / args.restart_qps - time.monotonic()))
    gateway.stop.set()
    threads[1].join(30)
    deadline = time.monotonic() + args.budget + 60.0
    published = {(c, n * f + k) for (c, n), (_, f) in gateway.delivered.items() for k in range(f)}
    while time.monotonic() < deadline and (
            not all(q in answers.results or q in answers.dead_letters for q in sent)
            or not published <= _index_identities(worker)):
        time.sleep(0.5)
    indexed = _index_identities(worker) & published
    stats = worker.ingest.stats if worker.ingest is not None else None
    lost_chunks = sorted({(c, f // int(FPS * SEGMENT_S)) for c, f in published - indexed})
    stop.set()
    answers.stop.set()
    threads[0].join(10)
    seen_live = len(answers.results)
    answers.read_all()
    logging.getLogger().removeHandler(counter)
    admin = KafkaTopicAdmin(settings)
    try:
        partitions = admin.partitions([settings.topics.video, settings.topics.queries, settings.topics.candidates,
                                       settings.topics.results, settings.topics.dead_letters])
    finally:
        admin.close()
    if sink is not None:
        sink.close()
    worker.stop()
    broker.stop()
    assert t_back is not None
    after = [(t, ok) for t, ok in ready_samples if t >= t_back]
    ready_again = next((t for j, (t, ok) in enumerate(after) if all(o for _, o in after[j:j + 10])), None)
    outage = [ok for t, ok in ready_samples if t_stop <= t <= t_back]
    turned_false = next((t for t, ok in ready_samples if t >= t_stop and not ok), None)
    good = [answers.results[q][0] for q, t in sent.items() if t >= t_back and q in answers.results
            and answers.results[q][1].status == "complete" and answers.results[q][1].matches]
    unanswered = [q for q in sent if q not in answers.results and q not in answers.dead_letters]
    statuses = [answers.results[q][1].status for q in sent if q in answers.results]
    back_wall = time.time() - (time.monotonic() - t_back)
    return {
        "part": "restart", "extractor": args.extractor, "cameras": len(cameras), "outage_s": args.restart_outage,
        "frames_published": len(published), "frames_indexed": len(indexed), "frames_lost": len(published - indexed),
        "chunks_delivered": len(gateway.delivered), "queries_sent": len(sent), "queries_refused": refused,
        "queries_unanswered": len(unanswered), "answered_complete": statuses.count("complete"),
        "answered_partial": statuses.count("partial"), "answered_error": statuses.count("error"),
        "time_to_ready_s": None if ready_again is None else round(ready_again - t_back, 2),
        "time_to_first_good_answer_s": round(min(good) - back_wall, 2) if good else None,
        "ready_samples_during_outage": sum(outage), "samples_during_outage": len(outage),
        "not_ready_after_stop_s": None if turned_false is None else round(turned_false - t_stop, 2),
        "partitions_after_restart": sorted(set(partitions.values())),
        "topics_after_restart": len(partitions), "producer_warnings_after_restart": counter.count,
        "lost_chunks": [f"{c}/{n}" for c, n in lost_chunks[:10]],
        "unanswered_sent_at_s": [round(sent[q] - t_back, 1) for q in unanswered[:20]],
        "results_missed_by_the_live_reader": len(answers.results) - seen_live,
        "ingest_skipped": dict(stats.skipped) if stats else None, "ingest_dead_letters": stats.dead_letters
        if stats else None,
    }
