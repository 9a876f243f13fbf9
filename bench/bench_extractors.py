"""Feature extractors: throughput, stored bytes per frame, and correctness on real images.

* ``throughput``: frames/s per extractor at 640x360 and 1280x720, batch 1 and 8 on the CPU; with CUDA also on
  the GPU at batch 1, 8 and 32. Frames are decoded from ``../shared/data/video/*.mp4`` (PyAV) when present,
  else synthetic.
* ``bytes``: bytes of one frame's features as produced (fp32 descriptors + keypoints + scores + global) and
  as held by a flat ``l2g_core.RollingIndex`` at its default settings (top 512 features indexed in fp32,
  top 128 kept in fp16 with keypoints for re-ranking), plus the IVF-PQ estimate of the same index.
* ``correctness`` (needs ``../shared/data``): graf1 -> graf3 share of mutual-NN matches consistent with the
  ground-truth homography within 5 px; box -> box_in_scene RANSAC homography inliers; landmark retrieval mAP
  (``gt/landmark_groups.json``, every image queries the others) through ``RollingIndex`` + ``Retriever``.

Extractors are given as ``name[:option=value,...]`` (e.g. ``xfeat:global_from=efficientnet``).
Run: ``python -m bench.bench_extractors [--extractors xfeat rootsift] [--skip-throughput]``; JSON lines on stdout.

Measured 2026-12-02 on the 2-vCPU ``python`` machine (torch 2 threads, no GPU), real video frames, nothing else
running (1-minute load 0.3-1.5):

| extractor | feats/frame | fps 640x360 (b1 / b8) | fps 1280x720 (b1 / b8) | raw / index-flat / IVF-PQ bytes/frame |
|---|---|---|---|---|
| xfeat (1024 kp, 640 px) | ~970 | 41.6 / 47.1 | 40.3 / 40.4 | 261 120 / 152 896 / 34 112 |
| xfeat-fast (256 kp, 480 px) | 256 | 75.5 / 75.0 | 58.3 / 58.2 | 68 864 / 85 312 / 25 920 |
| efficientnet-gem (512 px) | 0 | 20.9 / 21.7 | 29.6 / 29.9 | 5 120 / 5 184 / 5 184 |
| rootsift (1000 kp, 640 px) | ~360 | 19.9 / 19.9 | 31.5 / 31.8 | 169 222 / 168 228 / 42 903 |
| xfeat + efficientnet global | ~975 | 14.7 / 14.9 | 17.4 / 17.3 | 265 984 / 157 760 / 38 976 |
| aliked-n16 (1024 kp, 640 px) | 1024 | 1.66 / 1.52 | 1.66 / 1.51 | 537 088 / 300 608 / 50 752 |

(Measured 2026-11-22 with three other agents on the two cores: xfeat 28.6 / 26.1, rootsift 25.0 / 22.6 at 640x360.)
xfeat, efficientnet-gem and rootsift see the same network input at 640x360 and 1280x720 (``max_side``); the
differences between the two sizes are decode-side resizing and run-to-run noise (about 15 %).
Correctness (deterministic):

| extractor | graf1->graf3 within 5 px (share, count) | box inliers | landmark mAP global / local / l2g |
|---|---|---|---|
| xfeat | 0.58, 235 of 408 | 151 of 238 | 85.4 / 89.6 / 91.6 |
| xfeat-fast | 0.36, 38 of 105 | 29 of 67 | 81.3 / 90.1 / 87.6 |
| efficientnet-gem | - | - | 96.4 / - / - |
| rootsift | 0.59, 288 of 490 | 87 of 257 | 78.4 / 82.6 / 76.4 |
| xfeat + efficientnet global | 0.58 | 151 | 96.4 / 89.6 / 97.3 |
| aliked-n16 | 0.70, 356 of 509 | 206 of 258 | 87.6 / 99.1 / 96.8 |
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bench.common import SHARED_DATA, emit, machine, peak_rss_mb, percentiles, progress
from l2g_core import FrameFeatures, FrameKey, IndexConfig, RetrievalConfig, Retriever, RollingIndex
from l2g_core.evaluation import group_ground_truth, load_groups, mean_average_precision
from l2g_core.geometry import mutual_matches, ransac_inliers
from l2g_core.index.backend import configure_faiss

DEFAULT_EXTRACTORS = ("xfeat", "xfeat-fast", "xfeat-effnet-320", "efficientnet-gem", "rootsift",
                      "xfeat:global_from=efficientnet")
ALIKED_WEIGHTS = SHARED_DATA / "weights" / "aliked-n16.pth"  # added to the defaults when present
SIZES = ((360, 640), (720, 1280))


# ------------------------------------------------------------------------------------------ extractors


def build(spec: str, **extra: Any) -> Any:
    """An extractor from ``name[:option=value,...]`` (values parsed as JSON when they parse, else strings)."""
    import plugins

    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return plugins.get_extractor(name, **options, **extra)


# ---------------------------------------------------------------------------------------------- frames


def synthetic_frames(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``(n, h, w, 3)`` uint8 frames of smoothed noise with random shapes (corners and blobs to detect)."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        base = cv2.resize(rng.random((h // 16, w // 16, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        img = (base * 160 + 40).clip(0, 255).astype(np.uint8)
        for _ in range(60):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.rectangle(img, (x, y), (x + int(rng.integers(8, w // 8)), y + int(rng.integers(8, h // 8))), color, -1)
        out[i] = img
    return out


def video_frames(n: int, size: tuple[int, int], root: Path = SHARED_DATA) -> tuple[np.ndarray, str]:
    """``n`` frames resized to ``size=(h, w)``, spread over the ``video/*.mp4`` clips; synthetic when absent."""
    clips = sorted((root / "video").glob("*.mp4")) if root.is_dir() else []
    if not clips:
        return synthetic_frames(n, size), "synthetic"
    import av

    h, w = size
    per_clip = -(-n // len(clips))
    frames: list[np.ndarray] = []
    for clip in clips:
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            taken = 0
            for k, frame in enumerate(container.decode(stream)):
                if k % 15:
                    continue  # about two frames per second of video: different content
                frames.append(frame.reformat(width=w, height=h, format="rgb24").to_ndarray())
                taken += 1
                if taken == per_clip:
                    break
    return np.stack(frames[:n]), f"video ({len(clips)} mp4 clips)"


# ------------------------------------------------------------------------------------------ throughput


def throughput(name: str, frames: np.ndarray, batch: int, device: str, min_seconds: float, min_batches: int,
               ) -> dict[str, Any]:
    """Frames per second of ``extract`` on batches of ``batch`` frames cycled from ``frames``."""
    extractor = build(name, device=device)
    extractor.setup()
    batches = [np.ascontiguousarray(frames[i : i + batch]) for i in range(0, frames.shape[0] - batch + 1, batch)]
    if not batches:  # fewer frames than one batch: repeat them
        batches = [np.ascontiguousarray(np.resize(frames, (batch, *frames.shape[1:])))]
    extractor.extract(batches[0])  # warm-up: lazy inits, allocator, cuDNN autotune
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    times: list[float] = []
    features = 0
    t_start = time.perf_counter()
    while len(times) < min_batches or time.perf_counter() - t_start < min_seconds:
        b = batches[len(times) % len(batches)]
        t0 = time.perf_counter()
        out = extractor.extract(b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        features += sum(f.num_features for f in out)
    total = sum(times)
    extractor.close()
    # fps over the whole run, and from the median batch time: the latter resists intermittent contention from
    # other processes on a shared machine (os.getloadavg() is recorded next to both).
    return {"fps": round(batch * len(times) / total, 2), "fps_p50": round(batch / float(np.median(times)), 2),
            "batches": len(times), **percentiles(times, (50, 95)),
            "features_per_frame": round(features / (batch * len(times)), 1),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


# ------------------------------------------------------------------------------------------ bytes/frame


def feature_bytes(name: str, frames: np.ndarray) -> dict[str, Any]:
    """Mean bytes per frame: as produced, and as held by a default RollingIndex (flat, and IVF-PQ estimate)."""
    extractor = build(name, device="cpu")
    feats: list[FrameFeatures] = []
    for i in range(frames.shape[0]):
        feats += extractor.extract(frames[i : i + 1])
    raw = [f.descriptors.nbytes + f.keypoints.nbytes + f.scores.nbytes + f.global_descriptor.nbytes for f in feats]
    config = IndexConfig(local_dim=extractor.local_dim, global_dim=extractor.global_dim, retention_seconds=None,
                         index_kind="flat")
    index = RollingIndex(config)
    index.add([FrameKey("bench", float(i), i) for i in range(len(feats))], feats)
    stats = index.stats()
    ivfpq = stats.nbytes - stats.features * config.local_dim * 4 + stats.features * (config.pq_bytes + 8)
    extractor.close()
    return {"features_per_frame": round(float(np.mean([f.num_features for f in feats])), 1),
            "local_dim": extractor.local_dim, "global_dim": extractor.global_dim,
            "raw_bytes_per_frame": round(float(np.mean(raw))),
            "index_flat_bytes_per_frame": round(stats.nbytes / stats.frames),
            "index_ivfpq_bytes_per_frame_est": round(ivfpq / stats.frames),
            "index_settings": {"max_features_per_frame": config.max_features_per_frame,
                               "rerank_features": config.rerank_features, "pq_bytes": config.pq_bytes}}


# ----------------------------------------------------------------------------------------- correctness


@functools.lru_cache(maxsize=64)
def _read_rgb(path: Path, max_side: int | None = None) -> np.ndarray:
    """RGB image, shrunk to ``max_side``; cached (read-only) because several extractors read the same files."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    if max_side is not None and max(img.shape[:2]) > max_side:
        scale = max_side / max(img.shape[:2])
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    out = np.ascontiguousarray(img[:, :, ::-1])
    out.flags.writeable = False
    return out


def _homography_consistency(a: FrameFeatures, b: FrameFeatures, h: np.ndarray, tol: float) -> dict[str, Any]:
    m = mutual_matches(a.descriptors, b.descriptors, -1.0)
    if m.shape[0] == 0:
        return {"matches": 0, "consistent": 0, "share": 0.0}
    src = np.hstack([a.keypoints[m[:, 0]], np.ones((m.shape[0], 1), np.float32)]) @ h.T
    err = np.linalg.norm(src[:, :2] / src[:, 2:3] - b.keypoints[m[:, 1]], axis=1)
    good = int((err <= tol).sum())
    return {"matches": int(m.shape[0]), "consistent": good, "share": round(good / m.shape[0], 4)}


def graf_consistency(extractor: Any, root: Path = SHARED_DATA, tol: float = 5.0) -> dict[str, Any]:
    """graf1 -> graf3 (strong viewpoint change): mutual-NN matches consistent with ``H1to3p`` within ``tol`` px."""
    images = root / "images"
    fs = cv2.FileStorage(str(images / "opencv_H1to3p.xml"), cv2.FILE_STORAGE_READ)
    h = fs.getFirstTopLevelNode().mat()
    fs.release()
    a, b = extractor.extract(np.stack([_read_rgb(images / "opencv_graf1.png"), _read_rgb(images / "opencv_graf3.png")]))
    return _homography_consistency(a, b, h, tol)


def box_inliers(extractor: Any, root: Path = SHARED_DATA, threshold: float = 5.0) -> dict[str, Any]:
    """box.png found in box_in_scene.png: RANSAC homography inliers among the mutual-NN matches."""
    images = root / "images"
    (a,) = extractor.extract(_read_rgb(images / "opencv_box.png")[None])
    (b,) = extractor.extract(_read_rgb(images / "opencv_box_in_scene.png")[None])
    matches = mutual_matches(a.descriptors, b.descriptors, -1.0)
    inliers = ransac_inliers(a.descriptors, a.keypoints, b.descriptors, b.keypoints, min_similarity=-1.0,
                             threshold=threshold)
    return {"matches": int(matches.shape[0]), "inliers": inliers}


def landmark_map(extractor: Any, root: Path = SHARED_DATA, modes: Sequence[str] = ("global",),
                 max_side: int = 640) -> dict[str, float]:
    """mAP (percent) per retrieval mode on ``gt/landmark_groups.json``: every image queries all the others."""
    groups = load_groups(root / "gt" / "landmark_groups.json")
    paths = [p for items in groups.values() for p in items]
    keys = [FrameKey(f"photo-{i:03d}", 0.0, i) for i in range(len(paths))]  # own camera: no group in the key
    key_of = dict(zip(paths, keys, strict=True))
    feats: list[FrameFeatures] = []
    for p in paths:
        feats += extractor.extract(_read_rgb(root / p, max_side)[None])
    index = RollingIndex(IndexConfig(local_dim=extractor.local_dim, global_dim=extractor.global_dim,
                                     retention_seconds=None, index_kind="flat"))
    index.add(keys, feats)
    retriever = Retriever(index, RetrievalConfig(shortlist=len(keys), rerank_k=len(keys), device="cpu"))
    gts = group_ground_truth(keys, {g: [key_of[p] for p in items] for g, items in groups.items()})
    out: dict[str, float] = {}
    for mode in modes:
        rankings = [[hit.key for hit in retriever.search(q, mode=mode, k=len(keys)).hits] for q in feats]
        out[mode] = round(100 * mean_average_precision(rankings, gts), 2)
    return out


def correctness(name: str, root: Path) -> dict[str, Any]:
    extractor = build(name, device="cpu")
    record: dict[str, Any] = {}
    if extractor.local_dim > 1:
        record["graf_H_5px"] = graf_consistency(extractor, root)
        record["box_in_scene"] = box_inliers(extractor, root)
    modes = ("global", "local", "l2g") if extractor.local_dim > 1 else ("global",)
    record["landmarks_mAP"] = landmark_map(extractor, root, modes)
    extractor.close()
    return record


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = list(DEFAULT_EXTRACTORS) + ([f"aliked:weights={ALIKED_WEIGHTS}"] if ALIKED_WEIGHTS.is_file() else [])
    parser.add_argument("--extractors", nargs="+", default=default)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="timed seconds per configuration")
    parser.add_argument("--min-batches", type=int, default=3)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--sizes", nargs="+", default=[f"{w}x{h}" for h, w in SIZES], help="WxH frame sizes")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8], help="CPU batch sizes")
    args = parser.parse_args()
    torch.set_num_threads(2)
    configure_faiss()  # process-wide FAISS settings, as the worker applies them
    cuda = torch.cuda.is_available()
    info = machine()

    if not args.skip_throughput:
        sizes = [(int(hw.split("x")[1]), int(hw.split("x")[0])) for hw in args.sizes]
        for size in sizes:
            frames, source = video_frames(32, size, args.data)
            progress(f"{size[1]}x{size[0]}: {frames.shape[0]} frames from {source}")
            runs = [("cpu", b) for b in args.batches] + ([("cuda", b) for b in (1, 8, 32)] if cuda else [])
            for name in args.extractors:
                for device, batch in runs:
                    if device == "cuda" and name.startswith("rootsift"):
                        continue
                    progress(f"  {name} {device} batch {batch}")
                    rec = throughput(name, frames, batch, device, args.min_seconds, args.min_batches)
                    emit({"bench": "extractors", "what": "throughput", "extractor": name, "device": device,
                          "size": f"{size[1]}x{size[0]}", "batch": batch, "frames": source, **rec,
                          "peak_rss_mb": round(peak_rss_mb()), **info})
        frames, source = video_frames(16, SIZES[0], args.data)
        for name in args.extractors:
            progress(f"bytes per frame: {name}")
            emit({"bench": "extractors", "what": "bytes", "extractor": name, "size": "640x360", "frames": source,
                  **feature_bytes(name, frames)})

    if not args.skip_correctness:
        if not args.data.is_dir():
            progress(f"shared data not found at {args.data}: no correctness figures")
            return
        for name in args.extractors:
            progress(f"correctness: {name}")
            t0 = time.perf_counter()
            rec = correctness(name, args.data)
            emit({"bench": "extractors", "what": "correctness", "extractor": name, **rec,
                  "seconds": round(time.perf_counter() - t0, 1), **info})


if __name__ == "__main__":
    main()
