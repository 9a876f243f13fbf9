"""The four retrieval modes compared in one run on real images: mAP and query latency per mode.

Datasets (from ``../shared/data``; the bench exits with a message when it is absent):

* ``landmarks``: the landmark photos of ``gt/landmark_groups.json``; every photo queries all the others;
  positives are the other photos of its group (revisited protocol, the query itself is junk).
* ``video``: frames sampled from the real clips in ``video/`` (one camera per clip); queries are partial
  views of random frames: a 25-50 % area crop, rescaled by 0.6-1.4 and with brightness/gamma changed.
  Positives are frames of the same clip within ``--window`` seconds of the source frame.

Run: ``python -m bench.bench_retrieval [--extractor xfeat] [--datasets landmarks video]``; JSON lines on stdout.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from bench.common import SHARED_DATA, emit, machine, percentiles, progress
from l2g_core import MODES, FrameFeatures, FrameKey, IndexConfig, RetrievalConfig, Retriever, RollingIndex
from l2g_core.evaluation import GroundTruth, load_groups, mean_average_precision, precision_at_k, recall_at_k
from l2g_core.index.backend import configure_faiss


@dataclass
class Collection:
    """Database frames and queries with their ground truth."""

    name: str
    keys: list[FrameKey]
    images: list[np.ndarray]
    query_images: list[np.ndarray]
    query_gt: list[GroundTruth]


def _load_rgb(path: Path, max_side: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cannot read {path}")
    scale = max_side / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img[:, :, ::-1])


def landmarks(root: Path, max_side: int) -> Collection:
    groups = load_groups(root / "gt" / "landmark_groups.json")
    paths = [p for items in groups.values() for p in items]
    keys = [FrameKey(Path(p).parent.name, float(i), i) for i, p in enumerate(paths)]
    key_of = dict(zip(paths, keys, strict=True))
    images = [_load_rgb(root / p, max_side) for p in paths]
    gts = []
    for p in paths:
        group = next(items for items in groups.values() if p in items)
        gts.append(GroundTruth(ok=frozenset(key_of[o] for o in group if o != p), junk=frozenset({key_of[p]})))
    return Collection("landmarks", keys, images, images, gts)


def _sample_clip(path: Path, fps: float, max_side: int, limit: int) -> Iterator[tuple[float, np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_t = 0.0
        count = 0
        for frame in container.decode(stream):
            if frame.time is None or frame.time + 1e-6 < next_t:
                continue
            next_t = frame.time + 1.0 / fps
            scale = min(1.0, max_side / max(frame.width, frame.height))
            w, h = int(frame.width * scale) // 2 * 2, int(frame.height * scale) // 2 * 2
            yield float(frame.time), frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
            count += 1
            if count >= limit:
                return


def _partial_view(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    area = rng.uniform(0.25, 0.5)
    aspect = rng.uniform(0.75, 1.33)
    ch = int(min(h, np.sqrt(area * h * w / aspect)))
    cw = int(min(w, area * h * w / max(ch, 1)))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = img[y : y + ch, x : x + cw]
    scale = rng.uniform(0.6, 1.4)
    crop = cv2.resize(crop, (max(32, int(cw * scale)), max(32, int(ch * scale))), interpolation=cv2.INTER_AREA)
    gain, gamma = rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.4)
    out = np.clip(255.0 * (crop / 255.0) ** gamma * gain, 0, 255)
    return np.ascontiguousarray(out.astype(np.uint8))


def video(root: Path, max_side: int, fps: float, per_clip: int, queries_per_clip: int, window: float,
          seed: int = 0) -> Collection:
    rng = np.random.default_rng(seed)
    keys: list[FrameKey] = []
    images: list[np.ndarray] = []
    q_images: list[np.ndarray] = []
    gts: list[GroundTruth] = []
    for clip in sorted((root / "video").iterdir()):
        start = len(keys)
        for t, img in _sample_clip(clip, fps, max_side, per_clip):
            keys.append(FrameKey(clip.stem, t, len(keys)))
            images.append(img)
        clip_keys = keys[start:]
        progress(f"  {clip.name}: {len(clip_keys)} frames")
        for i in rng.choice(len(clip_keys), size=min(queries_per_clip, len(clip_keys)), replace=False):
            src = clip_keys[int(i)]
            q_images.append(_partial_view(images[start + int(i)], rng))
            gts.append(GroundTruth(ok=frozenset(k for k in clip_keys if abs(k.timestamp - src.timestamp) <= window)))
    return Collection("video", keys, images, q_images, gts)


def extract_all(extractor: object, images: list[np.ndarray]) -> list[FrameFeatures]:
    out: list[FrameFeatures] = []
    for img in images:
        out += extractor.extract(img[None])  # type: ignore[attr-defined]
    return out


def _field_value(config: RetrievalConfig, name: str, text: str) -> object:
    """``text`` converted to the type of ``config``'s field ``name`` (unknown names are left to ``replace``)."""
    current = getattr(config, name, text)
    return text if isinstance(current, str) else type(current)(text)


def run(collection: Collection, extractor_name: str, config: RetrievalConfig, k: int,
        modes: Sequence[str] = MODES) -> None:
    import plugins

    extractor = plugins.get_extractor(extractor_name)
    progress(f"{collection.name}: extracting {len(collection.images)} frames and "
             f"{len(collection.query_images)} queries with {extractor_name}")
    t0 = time.perf_counter()
    db = extract_all(extractor, collection.images)
    extract_s = time.perf_counter() - t0
    queries = extract_all(extractor, collection.query_images)
    index = RollingIndex(IndexConfig(local_dim=extractor.local_dim, global_dim=extractor.global_dim,
                                     retention_seconds=None, bucket_seconds=1e6, index_kind="flat"))
    index.add(collection.keys, db)
    retriever = Retriever(index, config)
    for mode in modes:
        rankings, times = [], []
        for q in queries:
            t = time.perf_counter()
            res = retriever.search(q, mode=mode, k=min(k, len(index)))
            times.append(time.perf_counter() - t)
            rankings.append([h.key for h in res.hits])
        gts = collection.query_gt
        pairs = list(zip(rankings, gts, strict=True))
        emit({
            "bench": "retrieval", "dataset": collection.name, "extractor": extractor_name, "mode": mode,
            "db_frames": len(index), "queries": len(queries),
            "mAP": round(100 * mean_average_precision(rankings, gts), 2),
            "P@1": round(100 * float(np.mean([precision_at_k(r, g, 1) for r, g in pairs])), 2),
            "R@10": round(100 * float(np.nanmean([recall_at_k(r, g, 10) for r, g in pairs])), 2),
            **percentiles(times, (50, 95)), "extract_db_s": round(extract_s, 1),
            "config": {"shortlist": config.shortlist, "rerank_k": config.rerank_k,
                       "fusion_weight": config.fusion_weight, "graph_neighbors": config.graph_neighbors,
                       "mds_query_weight": config.mds_query_weight, "mds_score": config.mds_score},
            **machine(),
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--extractor", default="xfeat")
    parser.add_argument("--datasets", nargs="+", default=["landmarks", "video"])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video")
    parser.add_argument("--per-clip", type=int, default=40)
    parser.add_argument("--queries-per-clip", type=int, default=6)
    parser.add_argument("--window", type=float, default=2.0, help="seconds around the source frame that count")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--fusion-weight", type=float, default=None)
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="RetrievalConfig fields, e.g. mds_query_weight=1000 mds_score=distance")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"shared data not found at {args.data}; nothing to benchmark")
    torch.set_num_threads(2)
    configure_faiss()  # process-wide FAISS settings, as the worker applies them
    config = RetrievalConfig(shortlist=700, rerank_k=100)
    if args.fusion_weight is not None:
        config = config.replace(fusion_weight=args.fusion_weight)
    if args.set:
        config = config.replace(**{k: _field_value(config, k, v) for k, v in (a.split("=", 1) for a in args.set)})
    for name in args.datasets:
        coll = landmarks(args.data, args.max_side) if name == "landmarks" else video(
            args.data, args.max_side, args.fps, args.per_clip, args.queries_per_clip, args.window)
        run(coll, args.extractor, config, args.k, args.modes)


if __name__ == "__main__":
    main()
