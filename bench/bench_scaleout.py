"""Scale-out: several worker processes answer queries over one partitioned index (issue 13's 10M plan, checked).

One index per video partition, built once: ``--frames`` synthetic frames per partition (``SceneModel``: the
configured extractor's local and global dimensions, ``--features`` local features per frame, 8 cameras per
partition, 1 frame/s), written as that partition's snapshot exactly where a worker of these settings looks for it.
Then, for each worker count W of ``--workers``, W worker **processes** (``stream.worker.Worker``, one per process,
``cores // W`` torch and FAISS threads each) join the groups on the embedded broker, load the snapshots of the
partitions they are given, and answer ``--queries`` real query images (crops of a synthetic camera's frames,
extracted by every worker with the real extractor) one at a time, through Kafka.

Reported per W (JSON line): end-to-end latency (client send -> result read), the result's own breakdown (``extract``,
``stage1`` of the slowest partial, ``merge_wait``, ``stage2``, ``verify``, ``total``), p50 / p95; the resident memory
of each worker process; and the plan's prediction for the same query (``docs/scaling.md``, "Plan for 10M frames"):
``extract + max over workers of its partitions' stage 1 + stage 2 + verify``, each measured in this process on
the same snapshots with the same thread count, without Kafka. ``overhead_p50_ms`` (measured - predicted) is what
running as a service adds: the candidate partials' encoding, transport and decoding, the merge, and the worker's
other threads.

The synthetic frames say nothing about answer quality (the queries do not come from them); they give stage 1 the
scan work of real frames of the same shape. Run:
``python -m bench.bench_scaleout [--partitions 4] [--frames 15000] [--workers 1 2] [--queries 20]``; JSON lines on
stdout, progress on stderr.
"""

from __future__ import annotations

from stream.runtime import configure_process

configure_process()  # OMP_WAIT_POLICY, before torch and FAISS load OpenMP (see stream/runtime.py)

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.bench_reliability import crop_png  # noqa: E402
from bench.common import emit, machine, percentiles, progress  # noqa: E402
from l2g_core import IndexConfig, merge_candidates, stage2  # noqa: E402
from l2g_core.datasets import SceneModel  # noqa: E402
from l2g_core.geometry import verify_hits  # noqa: E402
from l2g_core.plan import SearchPlan  # noqa: E402
from l2g_core.prepared import prepare_query  # noqa: E402
from l2g_core.shortlist import stage1  # noqa: E402
from plugins.presets import DEFAULT_EXTRACTOR  # noqa: E402
from stream.broker import EmbeddedBroker  # noqa: E402
from stream.client import QueryClient  # noqa: E402
from stream.messages import CandidatePartial  # noqa: E402
from stream.ports import FeatureExtractor, Partition  # noqa: E402
from stream.settings import Settings  # noqa: E402
from stream.store import PartitionedIndex  # noqa: E402
from stream.video import SyntheticCamera  # noqa: E402
from stream.worker import KafkaConnector, Worker, configure_threads, make_extractor  # noqa: E402

START = 1_700_000_000.0
K = 10  # matches per answer
STAGES = ("extract", "stage1", "merge_wait", "stage2", "verify", "total")


def make_settings(bootstrap: str, snapshots: Path, args: argparse.Namespace, threads: int, worker: str) -> Settings:
    """The settings every worker of this run shares (``worker``: its id)."""
    return Settings(
        kafka={"bootstrap_servers": bootstrap, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
               "max_poll_interval_ms": 120_000},
        topics={"partitions": args.partitions},
        ingest={"commit_interval_s": 5.0},
        index={"snapshot_dir": str(snapshots), "retention_seconds": None},
        extractor={"name": args.extractor},
        query={"default_timeout_s": 30.0, "partial_version": args.partial_version},
        http={"enabled": False},
        runtime={"worker_id": worker, "progress": False, "torch_threads": threads, "faiss_threads": threads,
                 "log_level": "WARNING"},
    )


def partition_store(settings: Settings, extractor: FeatureExtractor) -> PartitionedIndex:
    """The partition indexes as a worker of ``settings`` with ``extractor`` keeps them (same snapshot tag)."""
    return PartitionedIndex.from_settings(settings.index, extractor=extractor.name,
                                          options=extractor.snapshot_identity(), local_dim=extractor.local_dim,
                                          global_dim=extractor.global_dim)


def build_snapshots(settings: Settings, args: argparse.Namespace) -> list[Partition]:
    """Write one snapshot of ``args.frames`` synthetic frames per partition; returns the partitions."""
    extractor = make_extractor(settings)
    store = partition_store(settings, extractor)
    parts = [Partition(settings.topics.video, p) for p in range(args.partitions)]
    for part in parts:
        t0 = time.perf_counter()
        model = SceneModel(num_scenes=max(50, args.frames // 50), features_per_frame=args.features,
                           local_dim=extractor.local_dim, global_dim=extractor.global_dim, noise=0.5,
                           global_noise=1.0, seed=part.partition)
        store.open(part)
        for keys, feats, _ in model.stream(args.frames, batch=2000, num_cameras=8, fps=1.0, start_time=START):
            store.add(part, [replace(k, camera_id=f"p{part.partition}-{k.camera_id}") for k in keys], feats)
        store.snapshot({part: 0}, {"extractor": extractor.name, "worker_id": "bench-scaleout"}, only=[part])
        stats = store.get(part).stats()
        progress(f"  {part}: {stats.frames} frames, {stats.nbytes / stats.frames:.0f} bytes/frame, "
                 f"{stats.segments} segments ({time.perf_counter() - t0:.0f} s)")
        store.close_partition(part)
    return parts


def query_images(n: int, seed: int = 0) -> list[tuple[bytes, np.ndarray]]:
    """``n`` crops (50-80 % of each side) of a synthetic 640x360 camera's frames: PNG bytes and ``(H, W, 3)`` uint8
    RGB."""
    cam, rng = SyntheticCamera(seed), random.Random(seed)
    out = []
    for i in range(n):
        png = crop_png(cam.frame(i * 7), rng)
        bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
        assert bgr is not None
        out.append((png, np.ascontiguousarray(bgr[:, :, ::-1])))
    return out


def predict(settings: Settings, parts: list[Partition], images: list[tuple[bytes, np.ndarray]], workers: int
            ) -> dict[str, Any]:
    """The plan's model of one query, per image: extraction + the slowest worker's stage 1 (its share of the
    partitions, searched one after another) + merge + stage 2 + proof, all in this process, no Kafka."""
    configure_threads(settings.runtime)
    config = settings.index.retrieval_config()
    extractor = make_extractor(settings)
    extractor.setup()
    store = partition_store(settings, extractor)
    for part in parts:
        store.open(part)  # loads the snapshot the workers load
    indexes = dict(store.items())
    shares = [parts[i::workers] for i in range(workers)]  # partitions spread evenly over the workers
    plan = SearchPlan.build("l2g", K, config)
    rows: dict[str, list[float]] = {s: [] for s in ("extract", "stage1", "stage2", "verify", "predicted")}
    for _, rgb in images:
        t0 = time.perf_counter()
        feats = extractor.extract(rgb[None])[0]
        t1 = time.perf_counter()
        prepared = prepare_query(feats, config, extractor.local_dim, extractor.global_dim)
        per_part, cands = {}, []
        for part in parts:
            t = time.perf_counter()
            cands.append(stage1(indexes[part], prepared, plan, config))
            per_part[part] = time.perf_counter() - t
        slowest = max(sum(per_part[p] for p in share) for share in shares)
        t2 = time.perf_counter()
        merged = merge_candidates(cands, plan, prepared)
        ranking = stage2(prepared, merged, plan, config)
        t3 = time.perf_counter()
        verify_hits(prepared, rgb.shape[:2], merged, ranking.hits, settings.query.verify_top, config=config,
                    min_inliers=settings.query.verify_min_inliers)
        t4 = time.perf_counter()
        rows["extract"].append(t1 - t0)
        rows["stage1"].append(slowest)
        rows["stage2"].append(t3 - t2)
        rows["verify"].append(t4 - t3)
        rows["predicted"].append((t1 - t0) + slowest + (t4 - t2))
    total = rows.pop("predicted")
    return {f"predicted_{s}_p50_ms": percentiles(v, (50,))["p50_ms"] for s, v in rows.items()} | {
        f"predicted_{k}": v for k, v in percentiles(total, (50, 95)).items()}


def _worker_main(settings_json: str, ready: Any, stop: Any) -> None:
    """One worker process: start, say so, run until told to stop."""
    settings = Settings.model_validate_json(settings_json)
    try:
        worker = Worker(settings).start()
    except Exception as exc:  # said to the parent, which stops the run with it
        ready.put((settings.runtime.worker_id, os.getpid(), f"cannot start: {type(exc).__name__}: {exc}"))
        raise
    ready.put((settings.runtime.worker_id, os.getpid(), "ready" if worker.wait_ready(300) else "not ready in 300 s"))
    stop.wait()
    worker.stop()


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_workers(bootstrap: str, snapshots: Path, args: argparse.Namespace, workers: int,
                images: list[tuple[bytes, np.ndarray]]) -> dict[str, Any]:
    """Start ``workers`` processes, wait until every partition answers, time the queries, stop them."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    procs = []
    for i in range(workers):
        s = make_settings(bootstrap, snapshots, args, threads, f"scaleout-{workers}-{i}")
        proc = ctx.Process(target=_worker_main, args=(s.model_dump_json(), ready, stop), daemon=True)
        proc.start()
        procs.append(proc)
    pids = {}
    for _ in procs:
        wid, pid, state = ready.get(timeout=600)
        if state != "ready":
            stop.set()
            raise SystemExit(f"worker {wid}: {state}")
        pids[wid] = pid
    settings = make_settings(bootstrap, snapshots, args, threads, "scaleout-client")
    with QueryClient(settings) as client:
        t_wait = time.monotonic()
        stable = 0
        while stable < 3:  # the group has settled: every partition's partial arrives, three queries in a row
            res = client.ask(images[0][0], timeout_s=60.0, k=K, mode="l2g")
            complete = res.coverage.partitions_searched == args.partitions and res.status == "complete"
            stable = stable + 1 if complete else 0
            assert time.monotonic() - t_wait < 600, f"partitions never all answered: {res.coverage}"
        progress(f"  {workers} worker(s) answering over {args.partitions} partitions "
                 f"({time.monotonic() - t_wait:.0f} s to settle)")
        end_to_end: list[float] = []
        stages: dict[str, list[float]] = {s: [] for s in STAGES}
        incomplete = 0
        for image, _ in images:
            t0 = time.perf_counter()
            res = client.ask(image, timeout_s=60.0, k=K, mode="l2g")
            end_to_end.append(time.perf_counter() - t0)
            incomplete += res.status != "complete"
            for stage in STAGES:
                stages[stage].append(res.latency_ms.get(stage, float("nan")) / 1e3)
    memory = {wid: round(rss_mb(pid)) for wid, pid in pids.items()}
    stop.set()
    for proc in procs:
        proc.join(120)
    return {
        "workers": workers, "threads_per_worker": threads, "queries": len(images), "incomplete": incomplete,
        **{f"end_to_end_{k}": v for k, v in percentiles(end_to_end, (50, 95)).items()},
        **{f"{s}_{k}": v for s in STAGES for k, v in percentiles(stages[s], (50, 95)).items()},
        "worker_rss_mb": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extractor", default=DEFAULT_EXTRACTOR)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--frames", type=int, default=15_000, help="synthetic frames per partition")
    parser.add_argument("--features", type=int, default=IndexConfig.max_features_per_frame,
                        help="local features per synthetic frame (default: as many as the index keeps)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--partial-versions", type=int, nargs="+", default=[CandidatePartial.KIND_VERSION],
                        choices=range(1, CandidatePartial.KIND_VERSION + 1),
                        help="candidate_partial versions the workers write (query.partial_version), one run each")
    args = parser.parse_args()
    args.partial_version = args.partial_versions[0]
    images = query_images(args.queries + 1)
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp, EmbeddedBroker() as broker:
        snapshots = Path(tmp) / "snapshots"
        base = make_settings(broker.bootstrap, snapshots, args, os.cpu_count() or 1, "scaleout-build")
        KafkaConnector(base).ensure_topics(base)
        progress(f"building {args.partitions} partition snapshots of {args.frames} frames")
        parts = build_snapshots(base, args)
        for version in args.partial_versions:
            args.partial_version = version
            for workers in args.workers:
                threads = max(1, (os.cpu_count() or 1) // workers)
                result = run_workers(broker.bootstrap, snapshots, args, workers, images[1:])
                model = predict(make_settings(broker.bootstrap, snapshots, args, threads, "scaleout-model"), parts,
                                images[1:], workers)
                result["overhead_p50_ms"] = round(result["end_to_end_p50_ms"] - model["predicted_p50_ms"], 1)
                emit({"bench": "scaleout", "extractor": args.extractor, "partitions": args.partitions,
                      "frames_per_partition": args.frames, "features_per_frame": args.features,
                      "partial_version": version, **result, **model, **machine()})


if __name__ == "__main__":
    main()
