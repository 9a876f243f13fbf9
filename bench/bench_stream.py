"""The stream service end to end on the embedded tansu broker, in one run:

* ``decode_only``: PyAV decode (+ RGB conversion of the sampled frames) of the clip's chunks, no Kafka, no extractor;
* ``extract_only``: the extractor alone on the sampled frames (decoded beforehand), in batches of
  ``ingest.batch_size``: the rate ingest would reach if decoding cost nothing;
* ``ingest``: the same chunks through Kafka into a worker (decode, sample, extract, index, snapshot+commit);
  ``ratio_vs_decode_only`` = ingest decoded-frames/s over decode-only decoded-frames/s, ``ratio_vs_extract_only`` =
  ingest sampled-frames/s over extract-only frames/s (decode overlapped with extraction: close to 1), and
  ``cameras_25fps`` = how many cameras at the clip's frame rate, sampled at ``--sample-fps``, this worker keeps up
  with (ingest sampled-frames/s over ``--sample-fps``, when frames/s is the clip's);
* ``query_during_ingest``: query latency while the worker ingests (client send -> result received, and the worker's
  own ``total``), p50/p99;
* ``query_idle``: the same once ingest is done;
* ``publish_to_result``: a new chunk is published and a crop of one of its frames is queried repeatedly: time from
  publishing the chunk to the first result that contains that frame (freshness, end to end).

Video: ``--clip`` (default: ``intel_bottle-detection.mp4`` from ``../shared/data/video`` when present, re-muxed at its
key frames; else synthetic 640x360 H.264). Queries are 60 % crops of sampled frames.

Run: ``python -m bench.bench_stream [--extractor toy|xfeat] [--sample-fps 2]``; JSON lines on stdout.
"""

from __future__ import annotations

from stream.runtime import configure_process

configure_process()  # OMP_WAIT_POLICY, before torch and FAISS load OpenMP (see stream/runtime.py)

import argparse  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import SHARED_DATA, emit, machine, percentiles, progress  # noqa: E402
from stream.broker import EmbeddedBroker  # noqa: E402
from stream.client import QueryClient, publish_segments  # noqa: E402
from stream.decode import decode_chunk  # noqa: E402
from stream.sampling import keep_frame  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.video import Segment, SyntheticCamera, encode_segments, segment_file  # noqa: E402
from stream.worker import Worker  # noqa: E402

CLIP = SHARED_DATA / "video" / "intel_bottle-detection.mp4"
START = 1_700_000_000.0


def load_segments(clip: Path | None, seconds: float) -> tuple[str, list[Segment]]:
    if clip is not None and clip.is_file():
        segs = [s for s in segment_file(clip, segment_seconds=2.0) if s.start < seconds]
        return clip.stem, segs
    cam = SyntheticCamera(7)
    return "synthetic", list(encode_segments(cam.frames(int(seconds * 25)), 25.0, segment_seconds=2.0))


def _sampler(start: float, fps: float, rate: float) -> Callable[[int, float], bool]:
    """``decode_chunk``'s ``select``: the frames kept at ``rate`` per second of event time."""

    def select(index: int, offset: float) -> bool:
        return keep_frame(start + offset, fps, rate)

    return select


def decode_only(segs: list[Segment], rate: float, max_side: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    decoded = kept = 0
    for seg in segs:
        start = START + seg.start
        d = decode_chunk(seg.data, select=_sampler(start, seg.fps, rate),
                         max_side=max_side)
        decoded += d.decoded
        kept += len(d.frames)
    dt = time.perf_counter() - t0
    return {"frames_decoded": decoded, "frames_sampled": kept, "seconds": round(dt, 3),
            "decoded_fps": round(decoded / dt, 1)}


def extract_only(segs: list[Segment], rate: float, max_side: int, extractor_name: str, batch: int
                 ) -> dict[str, Any]:
    """The extractor alone on the clip's sampled frames (``(H, W, 3)`` uint8, decoded beforehand)."""
    from plugins import get_extractor

    frames = []
    for seg in segs:
        start = START + seg.start
        d = decode_chunk(seg.data, select=_sampler(start, seg.fps, rate),
                         max_side=max_side)
        frames += [f.image for f in d.frames]
    extractor = get_extractor(extractor_name)
    extractor.setup()
    extractor.extract(np.stack(frames[:1]))  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(frames), batch):
        extractor.extract(np.stack(frames[i:i + batch]))
    dt = time.perf_counter() - t0
    return {"frames_sampled": len(frames), "seconds": round(dt, 3), "sampled_fps": round(len(frames) / dt, 2),
            "ms_per_frame": round(1e3 * dt / len(frames), 1)}


def crops(segs: list[Segment], rate: float, max_side: int, n: int) -> list[tuple[bytes, int]]:
    """``n`` PNG crops (60 %) of sampled frames spread over the clip, with their frame numbers."""
    out: list[tuple[bytes, int]] = []
    for seg in segs[:: max(1, len(segs) // n)]:
        start = START + seg.start
        d = decode_chunk(seg.data, select=_sampler(start, seg.fps, rate),
                         max_side=max_side)
        if not d.frames:
            continue
        fr = d.frames[len(d.frames) // 2]
        h, w = fr.image.shape[:2]
        crop = fr.image[int(h * 0.2) // 16 * 16:, int(w * 0.2) // 16 * 16:][: int(h * 0.6) // 16 * 16,
                                                                           : int(w * 0.6) // 16 * 16]
        ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGR))
        assert ok
        out.append((bytes(buf), seg.first_frame + fr.index))
    return out[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extractor", default="toy")
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--seconds", type=float, default=40.0, help="seconds of the clip used")
    parser.add_argument("--sample-fps", type=float, default=2.0)
    parser.add_argument("--mode", default="l2g")
    parser.add_argument("--query-interval", type=float, default=0.25, help="pause between queries during ingest")
    args = parser.parse_args()

    camera, segs = load_segments(args.clip, args.seconds)
    frames = sum(s.frame_count for s in segs)
    progress(f"{camera}: {len(segs)} chunks, {frames} frames, {sum(len(s.data) for s in segs) / 1e6:.1f} MB")
    base = {"bench": "stream", "extractor": args.extractor, "clip": camera, "chunks": len(segs), "frames": frames,
            "sample_fps": args.sample_fps, "mode": args.mode, **machine()}
    dec = decode_only(segs, args.sample_fps, 640)
    emit({**base, "metric": "decode_only", **dec})
    queries = crops(segs, args.sample_fps, 640, 8)
    ext = extract_only(segs, args.sample_fps, 640, args.extractor, 8)
    emit({**base, "metric": "extract_only", **ext})

    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp, EmbeddedBroker() as broker:
        settings = Settings(
            kafka={"bootstrap_servers": broker.bootstrap, "session_timeout_ms": 2000, "heartbeat_interval_ms": 500,
                   "max_poll_interval_ms": 60_000},
            topics={"partitions": 3},
            ingest={"sample_fps": args.sample_fps, "commit_interval_s": 5.0, "load_shed": False},
            index={"snapshot_dir": str(Path(tmp) / "snap"), "retention_seconds": None},
            extractor={"name": args.extractor},
            query={"default_timeout_s": 30.0},
            http={"enabled": False},
            runtime={"worker_id": "bench", "progress": False},
        )
        with Worker(settings) as worker:
            assert worker.wait_ready(60), worker.health.ready()
            assert worker.ingest is not None
            client = QueryClient(settings)
            lat_client: list[float] = []
            lat_worker: list[float] = []
            stop = threading.Event()

            def ask(image: bytes, into: tuple[list[float], list[float]]) -> Any:
                t = time.perf_counter()
                res = client.ask(image, timeout_s=30.0, k=5, mode=args.mode)
                into[0].append(time.perf_counter() - t)
                into[1].append(res.latency_ms.get("total", 0.0) / 1e3)
                return res

            def query_loop() -> None:
                i = 0
                while not stop.is_set():
                    if worker.metrics.value("l2g_frames_indexed_total") > 0:
                        ask(queries[i % len(queries)][0], (lat_client, lat_worker))
                        i += 1
                    stop.wait(args.query_interval)

            t_pub = time.perf_counter()
            publish_segments(settings, camera, segs[:-1], start_time=START)
            progress(f"published {len(segs) - 1} chunks in {time.perf_counter() - t_pub:.2f} s")
            querier = threading.Thread(target=query_loop, daemon=True)
            querier.start()
            first_consumed: float | None = None
            while sum(worker.ingest.positions.values()) < len(segs) - 1:
                if first_consumed is None and worker.metrics.value("l2g_chunks_consumed_total") > 0:
                    first_consumed = time.perf_counter()
                time.sleep(0.01)
            t_done = time.perf_counter()
            stop.set()
            querier.join(60)
            st = worker.ingest.stats
            span = t_done - (first_consumed or t_pub)
            ingest_fps = st.frames_decoded / span
            emit({**base, "metric": "ingest", "seconds": round(span, 3), "frames_decoded": st.frames_decoded,
                  "frames_indexed": st.frames_indexed, "decoded_fps": round(ingest_fps, 1),
                  "indexed_fps": round(st.frames_indexed / span, 2),
                  "ratio_vs_decode_only": round(ingest_fps / dec["decoded_fps"], 3),
                  "sampled_fps": round(st.frames_sampled / span, 2),
                  "ratio_vs_extract_only": round(st.frames_sampled / span / ext["sampled_fps"], 3),
                  "cameras_25fps": round(st.frames_sampled / span / args.sample_fps, 2),
                  "decode_seconds": round(st.decode_seconds, 3), "extract_seconds": round(st.extract_seconds, 3),
                  "extract_ms_per_frame": round(1e3 * st.extract_seconds / max(1, st.frames_indexed), 1)})
            emit({**base, "metric": "query_during_ingest", "n": len(lat_client),
                  "client": percentiles(lat_client), "worker_total": percentiles(lat_worker)})

            idle_c: list[float] = []
            idle_w: list[float] = []
            hits = 0
            stages: dict[str, list[float]] = {}
            for image, frame in queries * 2:
                res = ask(image, (idle_c, idle_w))
                hits += bool(res.matches) and abs(res.matches[0].frame - frame) <= 3 * segs[0].fps
                for k, v in res.latency_ms.items():
                    stages.setdefault(k, []).append(v)
            emit({**base, "metric": "query_idle", "n": len(idle_c), "client": percentiles(idle_c),
                  "worker_total": percentiles(idle_w), "top1_within_3s": round(hits / len(idle_c), 3),
                  "stage_p50_ms": {k: round(float(np.median(v)), 1) for k, v in stages.items()}})

            # freshness: a new camera's chunk is published; a crop of one of its frames is queried until found
            fresh = next(encode_segments(SyntheticCamera(11).frames(50), 25.0, segment_seconds=2.0))
            (image, frame), = crops([fresh], args.sample_fps, 640, 1)
            t0 = time.perf_counter()
            publish_segments(settings, "fresh-camera", [fresh], start_time=START + 100.0)
            found_at = None
            tries = 0
            while time.perf_counter() - t0 < 60:
                res = client.ask(image, timeout_s=30.0, k=5, mode=args.mode)
                tries += 1
                if any((m.camera_id, m.frame) == ("fresh-camera", frame) for m in res.matches):
                    found_at = time.perf_counter() - t0
                    break
            emit({**base, "metric": "publish_to_result", "seconds": round(found_at, 3) if found_at else None,
                  "queries_needed": tries, "last_query_total_ms": round(res.latency_ms.get("total", 0.0), 1)})
            client.close()


if __name__ == "__main__":
    main()
