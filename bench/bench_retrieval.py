"""The four retrieval modes compared on the same real queries, with bootstrap intervals and paired differences.

Collections (``bench.collections``; from ``../shared/data``, the bench exits with a message when it is absent):
``landmarks``, ``landmarks+video`` (the landmark queries with every video frame as a distractor) and ``video``
(crop and whole-frame queries of the real clips, reported separately for the ``tune`` and the held-out ``report``
clips, see :data:`bench.collections.REPORT_CLIPS`).

Per mode and query set: frame-level mAP, same-clip mAP, segment AP (the ranking merged into per-camera time
segments by :func:`l2g_core.segments.segment_hits`; the first segment that overlaps the positive window counts),
P@1, the median time error of the top match, each with a 95 % bootstrap interval over queries; and the paired
bootstrap of ``l2g - mode`` for every baseline (``significant``: the interval excludes 0).

Run: ``python -m bench.bench_retrieval [--extractor xfeat] [--datasets landmarks video] [--set FIELD=VALUE ...]``;
JSON lines on stdout, a table on stderr.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.collections import Collection, add_video_arguments, landmarks, video_from_args, with_distractors
from bench.common import emit, field_overrides, machine, percentiles, progress
from bench.feature_cache import DEFAULT_CACHE, cached_features
from l2g_core import MODES, FrameFeatures, IndexConfig, RetrievalConfig, Retriever, RollingIndex
from l2g_core.evaluation import average_precision, precision_at_k, segment_average_precision, time_error
from l2g_core.index.backend import configure_faiss
from l2g_core.segments import default_gap, segment_hits
from l2g_core.statistics import bootstrap_mean, paired_difference
from l2g_core.types import Hit
from plugins.presets import DEFAULT_EXTRACTOR

METRICS = ("mAP", "clip_mAP", "segment_AP", "P@1")


@dataclass
class ModeRun:
    """Per-query results of one mode on one collection.

    Attributes:
        values: metric name -> ``(Q,)`` float64 per-query values (AP, P@1 ... in [0, 1]; NaN when undefined).
        time_error_s: ``(Q,)`` seconds between the top match and the source frame (inf: other camera).
        latency_s: ``(Q,)`` query seconds.
    """

    values: dict[str, np.ndarray]
    time_error_s: np.ndarray
    latency_s: np.ndarray


def score_rankings(collection: Collection, rankings: Sequence[Sequence[Hit]], gap: float) -> dict[str, np.ndarray]:
    """Per-query metrics of ``rankings`` (one per query of ``collection``), plus ``time_error``."""
    out: dict[str, list[float]] = {m: [] for m in (*METRICS, "time_error")}
    for query, hits in zip(collection.queries, rankings, strict=True):
        keys = [h.key for h in hits]
        out["mAP"].append(average_precision(keys, query.gt))
        out["clip_mAP"].append(average_precision(keys, query.clip_gt))
        out["P@1"].append(precision_at_k(keys, query.gt, 1))
        src = query.source
        if collection.window > 0:
            segments = [(s.camera_id, s.start, s.end) for s in segment_hits(hits, gap)]
            window = (src.timestamp - collection.window, src.timestamp + collection.window)
            out["segment_AP"].append(segment_average_precision(segments, src.camera_id, window))
            top = hits[0].key if hits else None
            out["time_error"].append(float("inf") if top is None else
                                     time_error(top.camera_id, top.timestamp, src.camera_id, src.timestamp))
        else:
            out["segment_AP"].append(float("nan"))
            out["time_error"].append(float("nan"))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def run_modes(collection: Collection, db: list[FrameFeatures], queries: list[FrameFeatures], config: RetrievalConfig,
              k: int, modes: Sequence[str], gap: float, index_options: Mapping[str, Any] | None = None,
              ) -> dict[str, ModeRun]:
    """Every mode over the same index and queries (``index_options``: IndexConfig fields, e.g. ``index_kind``)."""
    first = db[0]
    options = {"retention_seconds": None, **(index_options or {})}
    index = RollingIndex(IndexConfig(local_dim=first.descriptors.shape[1], global_dim=first.global_descriptor.shape[0],
                                     **options))
    index.add(collection.keys, db)
    retriever = Retriever(index, config)
    runs = {}
    for mode in modes:
        rankings, times = [], []
        for q in queries:
            t = time.perf_counter()
            res = retriever.search(q, mode=mode, k=min(k, len(index)))
            times.append(time.perf_counter() - t)
            rankings.append(res.hits)
        values = score_rankings(collection, rankings, gap)
        runs[mode] = ModeRun(values, values.pop("time_error"), np.asarray(times))
    return runs


def subset_runs(runs: dict[str, ModeRun], mask: np.ndarray) -> dict[str, ModeRun]:
    """``runs`` restricted to the queries of ``mask`` ``(Q,)`` bool."""
    return {m: ModeRun({k: v[mask] for k, v in r.values.items()}, r.time_error_s[mask], r.latency_s[mask])
            for m, r in runs.items()}


def summarize(runs: dict[str, ModeRun], reference: str = "l2g") -> dict[str, dict[str, object]]:
    """Per mode: every metric with its interval (percent), the median time error, latency, and the paired
    difference ``reference - mode`` for every metric."""
    out: dict[str, dict[str, object]] = {}
    for mode, run in runs.items():
        row: dict[str, object] = {m: bootstrap_mean(v).scaled(100) for m, v in run.values.items()}
        finite = np.where(np.isfinite(run.time_error_s), run.time_error_s, 1e6)
        if np.isfinite(run.time_error_s).any() or np.isinf(run.time_error_s).any():
            row["median_time_error_s"] = bootstrap_mean(finite, statistic="median").scaled(1)
        row.update(percentiles(run.latency_s.tolist(), (50, 95)))
        if reference in runs and mode != reference:
            row[f"{reference}_minus"] = {
                m: {**(d := paired_difference(runs[reference].values[m], v)).scaled(100), "significant": d.significant}
                for m, v in run.values.items()}
        out[mode] = row
    return out


def _fmt(cell: object) -> str:
    if isinstance(cell, dict) and "value" in cell:
        return f"{cell['value']:.1f} [{cell['low']:.1f}, {cell['high']:.1f}]"
    return "-"


def print_table(title: str, summary: dict[str, dict[str, object]]) -> None:
    """A human table on stderr."""
    progress(f"\n{title}")
    progress(f"{'mode':16s}" + "".join(f"{m:>22s}" for m in (*METRICS, "median_time_error_s")))
    for mode, row in summary.items():
        progress(f"{mode:16s}" + "".join(f"{_fmt(row.get(m)):>22s}" for m in (*METRICS, "median_time_error_s")))


def query_sets(collection: Collection) -> dict[str, np.ndarray]:
    """Masks of the reported query sets: all, per split and per kind (when there is more than one)."""
    splits = np.array([q.split for q in collection.queries])
    kinds = np.array([q.kind for q in collection.queries])
    sets = {"all": np.ones(len(splits), bool)}
    for value in sorted(set(splits)) if len(set(splits)) > 1 else []:
        sets[value] = splits == value
        for kind in sorted(set(kinds)) if len(set(kinds)) > 1 else []:
            sets[f"{value}/{kind}"] = (splits == value) & (kinds == kind)
    return sets


def evaluate(collection: Collection, extractor_name: str, config: RetrievalConfig, k: int, modes: Sequence[str],
             gap: float, cache: Path | None, index_options: Mapping[str, Any] | None = None,
             extra: Callable[[], dict[str, object]] = dict) -> None:
    """Extract (or read from the cache), run every mode, emit one JSON line per (query set, mode)."""
    import plugins

    extractor = plugins.get_extractor(extractor_name)
    db = cached_features(extractor, collection.images, f"{collection.name}-db", cache)
    queries = cached_features(extractor, [q.image for q in collection.queries], f"{collection.name}-q", cache)
    runs = run_modes(collection, db, queries, config, k, modes, gap, index_options)
    for name, mask in query_sets(collection).items():
        summary = summarize(subset_runs(runs, mask))
        print_table(f"{collection.name} / {name} ({int(mask.sum())} queries, {len(db)} frames, {extractor_name})",
                    summary)
        for mode, row in summary.items():
            emit({"bench": "retrieval", "dataset": collection.name, "queries_set": name, "extractor": extractor_name,
                  "mode": mode, "db_frames": len(db), "queries": int(mask.sum()),
                  "index": dict(index_options or {}), **row,
                  "config": {f: getattr(config, f) for f in ("query_features", "shortlist", "rerank_k",
                                                             "global_shortlist", "fusion_weight", "graph_features",
                                                             "graph_pair_features", "graph_neighbors",
                                                             "mds_query_weight", "mds_score", "query_row_stage1",
                                                             "temporal_weight")},
                  **extra(), **machine()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extractor", default=DEFAULT_EXTRACTOR)
    parser.add_argument("--datasets", nargs="+", default=["landmarks", "landmarks+video", "video"],
                        choices=["landmarks", "landmarks+video", "video"])
    add_video_arguments(parser, fps=1.0, per_clip=40, crops_per_clip=24, frames_per_clip=6)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--index-kind", default="flat", choices=["flat", "ivfpq"])
    parser.add_argument("--index-set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="IndexConfig fields, e.g. ivf_lists=4096 nprobe=16 (an IVF-PQ index is built once the "
                             "database holds train_size features)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="RetrievalConfig fields, e.g. mds_query_weight=1000 mds_score=distance")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="feature cache folder")
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"shared data not found at {args.data}; nothing to benchmark")
    torch.set_num_threads(2)
    configure_faiss()  # process-wide FAISS settings, as the worker applies them
    config = RetrievalConfig()
    if args.set:
        config = config.replace(**field_overrides(RetrievalConfig, args.set))
    cache = None if args.no_cache else args.cache
    gap = default_gap(args.fps)
    clips: Collection | None = None
    for name in args.datasets:
        if name != "landmarks" and clips is None:
            clips = video_from_args(args)
        if name == "video":
            assert clips is not None
            coll = clips
        else:
            coll = landmarks(args.data, args.max_side)
            if name == "landmarks+video":
                assert clips is not None
                coll = with_distractors(coll, clips)
        evaluate(coll, args.extractor, config, args.k, args.modes, gap, cache,
                 {"index_kind": args.index_kind, **field_overrides(IndexConfig, args.index_set)})


if __name__ == "__main__":
    main()
