"""Benchmark collections from ``../shared/data``: database frames plus queries with their ground truth.

* ``landmarks``: the landmark photos of ``gt/landmark_groups.json``; every photo queries all the others; positives
  are the other photos of its group (revisited protocol, the query itself is junk).
* ``landmarks+video``: the same queries against the landmarks plus every sampled frame of the clips as distractors
  (the "+1M" setting in small).
* ``video``: frames sampled from the real clips in ``video/`` (one camera per clip) at ``fps``. Two kinds of query:

  - ``crop``: a partial view of a database frame: 10-50 % of its area, rescaled by 0.6-1.4, brightness and gamma
    changed, and sometimes rotated by up to 10 degrees or blurred;
  - ``frame``: a whole frame that is *not* in the database (half a sampling interval after a database frame),
    with a mild brightness change: its positives are the database frames where the same view is visible.

  Positives are the frames of the same clip within ``window`` seconds of the query's source time; ``same_clip``
  ground truth counts every frame of the clip.

Clips are split once: :data:`REPORT_CLIPS` are never used for tuning (their queries form the ``report`` split, the
others the ``tune`` split; every clip's frames stay in the database of both).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import av
import cv2
import numpy as np

from bench.common import SHARED_DATA, progress
from l2g_core import FrameKey
from l2g_core.evaluation import GroundTruth, load_groups

__all__ = ["REPORT_CLIPS", "Collection", "Query", "landmarks", "video", "with_distractors"]

#: Clips whose queries are only ever reported, never tuned on (fixed cameras and hand-held, two of each).
REPORT_CLIPS = frozenset({"bgslibrary_video02", "intelcopy_person-bicycle-car-detection", "opencv_doc_cup",
                          "opencv_vtest"})

QueryKind = Literal["crop", "frame", "photo"]


@dataclass(frozen=True)
class Query:
    """One query image and its ground truth.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        gt: frame-level positives (within the time window for video, the group for landmarks).
        clip_gt: every frame of the source clip (video), the same as ``gt`` for landmarks.
        source: the (camera, time) the query was cut from, or the photo's own key.
        kind: ``crop``, ``frame`` or ``photo``.
        split: ``tune`` or ``report``.
    """

    image: np.ndarray
    gt: GroundTruth
    clip_gt: GroundTruth
    source: FrameKey
    kind: QueryKind
    split: str


@dataclass
class Collection:
    """Database frames and queries.

    Attributes:
        name: collection name.
        keys: database frame keys; ``images[i]`` is the ``(H, W, 3)`` uint8 RGB frame of ``keys[i]``.
        queries: the queries.
        window: seconds around a source time that count as positive (0 for photos).
    """

    name: str
    keys: list[FrameKey]
    images: list[np.ndarray]
    queries: list[Query]
    window: float = 0.0
    info: dict[str, int] = field(default_factory=dict)


def load_rgb(path: Path, max_side: int) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB with its longer side at most ``max_side``."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cannot read {path}")
    scale = max_side / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img[:, :, ::-1])


def landmarks(root: Path, max_side: int) -> Collection:
    """Every landmark photo against all the others (see the module docstring)."""
    groups = load_groups(root / "gt" / "landmark_groups.json")
    paths = [p for items in groups.values() for p in items]
    # every photo is its own "camera": a camera id must not encode the group (time-based re-ranking links the frames
    # of one camera, which would leak the ground truth)
    keys = [FrameKey(f"photo-{i:03d}", 0.0, i) for i, p in enumerate(paths)]
    key_of = dict(zip(paths, keys, strict=True))
    images = [load_rgb(root / p, max_side) for p in paths]
    queries = []
    for p, img in zip(paths, images, strict=True):
        group = next(items for items in groups.values() if p in items)
        gt = GroundTruth(ok=frozenset(key_of[o] for o in group if o != p), junk=frozenset({key_of[p]}))
        queries.append(Query(img, gt, gt, key_of[p], "photo", "report"))
    return Collection("landmarks", keys, images, queries)


def with_distractors(base: Collection, distractors: Collection) -> Collection:
    """``base``'s queries against ``base``'s frames plus every frame of ``distractors`` (never positive)."""
    offset = len(base.keys)
    keys = base.keys + [FrameKey(k.camera_id, k.timestamp, offset + i) for i, k in enumerate(distractors.keys)]
    return Collection(f"{base.name}+{distractors.name}", keys, base.images + distractors.images, base.queries,
                      base.window, {"distractors": len(distractors.keys)})


def _sample_clip(path: Path, fps: float, max_side: int, limit: int) -> Iterator[tuple[float, np.ndarray]]:
    """``(time, RGB frame)`` every ``1 / fps`` seconds, at most ``limit`` frames."""
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


def _photometric(img: np.ndarray, rng: np.random.Generator, gain: tuple[float, float],
                 gamma: tuple[float, float]) -> np.ndarray:
    g, y = rng.uniform(*gain), rng.uniform(*gamma)
    return np.clip(255.0 * (img / 255.0) ** y * g, 0, 255).astype(np.uint8)


def partial_view(img: np.ndarray, rng: np.random.Generator, area: tuple[float, float] = (0.1, 0.5)) -> np.ndarray:
    """A crop of ``area`` of ``img`` (a fraction), rescaled, with photometric change, maybe rotated or blurred.

    Args:
        img: ``(H, W, 3)`` uint8 RGB.

    Returns:
        ``(h, w, 3)`` uint8 RGB, at least 48 pixels on its shorter side.
    """
    h, w = img.shape[:2]
    frac = rng.uniform(*area)
    aspect = rng.uniform(0.75, 1.33)
    ch = int(min(h, np.sqrt(frac * h * w / aspect)))
    cw = int(min(w, frac * h * w / max(ch, 1)))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = img[y : y + ch, x : x + cw]
    scale = max(rng.uniform(0.6, 1.4), 48.0 / max(1, min(ch, cw)))
    crop = cv2.resize(crop, (max(48, int(cw * scale)), max(48, int(ch * scale))), interpolation=cv2.INTER_AREA)
    if rng.uniform() < 0.5:  # small in-plane rotation (the corners are filled by reflection)
        ch2, cw2 = crop.shape[:2]
        rot = cv2.getRotationMatrix2D((cw2 / 2, ch2 / 2), float(rng.uniform(-10, 10)), 1.0)
        crop = cv2.warpAffine(crop, rot, (cw2, ch2), borderMode=cv2.BORDER_REFLECT)
    if rng.uniform() < 0.3:
        crop = cv2.GaussianBlur(crop, (0, 0), float(rng.uniform(0.5, 1.5)))
    return np.ascontiguousarray(_photometric(crop, rng, (0.7, 1.3), (0.7, 1.4)))


def add_video_arguments(parser: argparse.ArgumentParser, *, fps: float, per_clip: int, crops_per_clip: int,
                        frames_per_clip: int) -> None:
    """The command-line options of :func:`video` (and ``--data``, ``--max-side`` for every collection), with a
    benchmark's own defaults; :func:`video_from_args` reads them back."""
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--fps", type=float, default=fps, help="database frames sampled per second of video")
    parser.add_argument("--per-clip", type=int, default=per_clip, help="database frames per clip at most")
    parser.add_argument("--crops-per-clip", type=int, default=crops_per_clip)
    parser.add_argument("--frames-per-clip", type=int, default=frames_per_clip)
    parser.add_argument("--window", type=float, default=2.0, help="seconds around the source frame that count")


def video_from_args(args: argparse.Namespace) -> Collection:
    """:func:`video` with the options of :func:`add_video_arguments`."""
    return video(args.data, args.max_side, args.fps, args.per_clip, args.crops_per_clip, args.frames_per_clip,
                 args.window)


def video(root: Path, max_side: int, fps: float, per_clip: int, crops_per_clip: int, frames_per_clip: int,
          window: float, seed: int = 0) -> Collection:
    """Frames of every clip in ``root / "video"`` and crop and frame queries (see the module docstring).

    The clip is decoded at ``2 * fps``: even samples are database frames (at most ``per_clip``), odd samples are the
    pool of ``frame`` queries.
    """
    rng = np.random.default_rng(seed)
    keys: list[FrameKey] = []
    images: list[np.ndarray] = []
    queries: list[Query] = []
    for clip in sorted((root / "video").iterdir()):
        start = len(keys)
        held: list[tuple[float, np.ndarray]] = []
        for i, (t, img) in enumerate(_sample_clip(clip, 2 * fps, max_side, 2 * per_clip)):
            if i % 2 == 0:
                keys.append(FrameKey(clip.stem, t, len(keys)))
                images.append(img)
            else:
                held.append((t, img))
        clip_keys = keys[start:]
        split = "report" if clip.stem in REPORT_CLIPS else "tune"
        clip_gt = GroundTruth(ok=frozenset(clip_keys))

        def positives(t: float, clip_keys: list[FrameKey] = clip_keys) -> GroundTruth:
            return GroundTruth(ok=frozenset(k for k in clip_keys if abs(k.timestamp - t) <= window))

        for i in rng.choice(len(clip_keys), size=crops_per_clip, replace=crops_per_clip > len(clip_keys)):
            src = clip_keys[int(i)]
            queries.append(Query(partial_view(images[start + int(i)], rng), positives(src.timestamp), clip_gt,
                                 src, "crop", split))
        for j in rng.choice(len(held), size=min(frames_per_clip, len(held)), replace=False):
            t, img = held[int(j)]
            frame = np.ascontiguousarray(_photometric(img, rng, (0.85, 1.15), (0.9, 1.1)))
            queries.append(Query(frame, positives(t), clip_gt, FrameKey(clip.stem, t, 0), "frame", split))
        progress(f"  {clip.name}: {len(clip_keys)} frames ({split})")
    return Collection("video", keys, images, queries, window)
