"""What the compressed index loses against exact search, on real features, per retrieval mode, in one run.

Every variant indexes the same extracted frames and answers the same queries, so the differences are the index's
alone. ``exact`` is flat inner-product search with float16 re-rank features; ``default`` is the shipped
``IndexConfig`` forced to IVF-PQ (a collection this small stays flat under ``compress_after``, which would test
nothing); further variants change one or more fields (``nprobe8:nprobe=8``). For a collection with fewer features
than ``train_size``, the IVF-PQ variants train on all of them (``train_size`` lowered, and with it the lists).

Collections (``bench.collections``): ``video`` (every shared clip sampled densely, 4 frames/s by default, with its
crop and whole-frame queries, reported for all queries and per split: ``tune`` and the held-out ``report``
clips) and ``landmarks+video`` (the landmark queries against the landmark photos and every video frame).

Per (collection, query set, variant, mode): mAP, segment AP and P@1 with 95 % bootstrap intervals, latency p50,
and ``variant - exact`` as a paired bootstrap interval of the mAP difference (points). ``within_1pt`` is true when
that difference is above -1 point (the issue's bar: nothing lost to approximation).

Run: ``python -m bench.bench_approximation [--datasets video landmarks+video] [--fps 4]
[--variants exact default nprobe8:nprobe=8]``; JSON lines on stdout, a table on stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.bench_retrieval import ModeRun, query_sets, run_modes, subset_runs
from bench.collections import Collection, add_video_arguments, landmarks, video_from_args, with_distractors
from bench.common import emit, field_overrides, machine, percentiles, progress
from bench.feature_cache import DEFAULT_CACHE, cached_features
from l2g_core import FrameFeatures, IndexConfig, RetrievalConfig
from l2g_core.index.backend import configure_faiss
from l2g_core.segments import default_gap
from l2g_core.statistics import bootstrap_mean, paired_difference
from plugins.presets import DEFAULT_EXTRACTOR

EXACT = "exact"
BUILTIN_VARIANTS: dict[str, dict[str, Any]] = {
    EXACT: {"index_kind": "flat", "rerank_dtype": "float16"},
    "default": {"index_kind": "ivfpq"},
}
REPORTED = ("mAP", "segment_AP", "P@1")
MAX_LOSS_POINTS = 1.0


@dataclass(frozen=True)
class Variant:
    """One index configuration: a name and the ``IndexConfig`` fields it sets."""

    name: str
    options: dict[str, Any]


def parse_variant(text: str) -> Variant:
    """``exact``, ``default``, or ``NAME:FIELD=VALUE[,FIELD=VALUE...]`` (IVF-PQ with those fields changed).

    Raises:
        SystemExit: an unknown name without fields, or a bad field.
    """
    name, sep, fields = text.partition(":")
    if not sep:
        if name not in BUILTIN_VARIANTS:
            raise SystemExit(f"variant {text!r}: expected one of {', '.join(BUILTIN_VARIANTS)} or NAME:FIELD=VALUE")
        return Variant(name, dict(BUILTIN_VARIANTS[name]))
    return Variant(name, {"index_kind": "ivfpq", **field_overrides(IndexConfig, fields.split(","))})


def indexed_features(options: dict[str, Any], features_per_frame: Sequence[int]) -> int:
    """Features a variant's index holds: each frame keeps at most the variant's ``max_features_per_frame``
    (``features_per_frame``: ``(frames,)`` extracted counts)."""
    keep = int(options.get("max_features_per_frame", IndexConfig.max_features_per_frame))
    return sum(min(n, keep) for n in features_per_frame)


def trainable(options: dict[str, Any], features_per_frame: Sequence[int]) -> dict[str, Any]:
    """``options`` with ``train_size`` capped at the features the variant's index will hold
    (:func:`indexed_features`), so that an IVF-PQ variant is compressed at all (``index.backend`` then trains
    ``train_size // 39`` lists when that is fewer)."""
    if options.get("index_kind") != "ivfpq":
        return options
    features = indexed_features(options, features_per_frame)
    train_size = min(int(options.get("train_size", IndexConfig.train_size)), features)
    return {**options, "train_size": train_size}


def compare(runs: dict[str, dict[str, ModeRun]], mask: np.ndarray) -> dict[str, dict[str, dict[str, object]]]:
    """Per variant and mode on the queries of ``mask``: the metrics, latency and the paired mAP difference to
    ``exact`` (points)."""
    exact = subset_runs(runs[EXACT], mask)
    out: dict[str, dict[str, dict[str, object]]] = {}
    for name, variant_runs in runs.items():
        out[name] = {}
        for mode, run in subset_runs(variant_runs, mask).items():
            row: dict[str, object] = {m: bootstrap_mean(run.values[m]).scaled(100) for m in REPORTED}
            row.update(percentiles(run.latency_s.tolist(), (50,)))
            diff = paired_difference(run.values["mAP"], exact[mode].values["mAP"])
            row["minus_exact_mAP"] = {**diff.scaled(100), "significant": diff.significant}
            row["within_1pt"] = bool(diff.value * 100 > -MAX_LOSS_POINTS)
            out[name][mode] = row
    return out


def _cell(cell: object) -> str:
    return f"{cell['value']:.1f}" if isinstance(cell, dict) else "-"  # type: ignore[index]


def evaluate(collection: Collection, extractor_name: str, variants: Sequence[Variant], config: RetrievalConfig,
             k: int, modes: Sequence[str], gap: float, cache: Path | None) -> None:
    """Extract (or read the cache), run every variant's index over the same frames and queries, emit and print."""
    import plugins

    extractor = plugins.get_extractor(extractor_name)
    db: list[FrameFeatures] = cached_features(extractor, collection.images, f"{collection.name}-db", cache)
    queries = cached_features(extractor, [q.image for q in collection.queries], f"{collection.name}-q", cache)
    counts = [len(f.descriptors) for f in db]
    options = {v.name: trainable(v.options, counts) for v in variants}
    features = {name: indexed_features(o, counts) for name, o in options.items()}
    runs: dict[str, dict[str, ModeRun]] = {}
    for name, index_options in options.items():
        progress(f"  {collection.name}: variant {name} {index_options}")
        runs[name] = run_modes(collection, db, queries, config, k, modes, gap, index_options)
    for set_name, mask in query_sets(collection).items():
        table = compare(runs, mask)
        progress(f"\n{collection.name} / {set_name} ({int(mask.sum())} queries, {len(db)} frames, "
                 f"{features[EXACT]} features, {extractor_name}): mAP, variant - exact [95 % interval]")
        for name, per_mode in table.items():
            cells = []
            for mode, row in per_mode.items():
                d: Any = row["minus_exact_mAP"]
                cells.append(f"{mode} {_cell(row['mAP'])} ({d['value']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]) "
                             f"{row['p50_ms']:.0f} ms")
            progress(f"  {name:12s} " + "   ".join(cells))
            for mode, row in per_mode.items():
                emit({"bench": "approximation", "dataset": collection.name, "queries_set": set_name,
                      "extractor": extractor_name, "variant": name,
                      "index": options[name],
                      "mode": mode, "db_frames": len(db), "db_features": features[name], "queries": int(mask.sum()),
                      **row, **machine()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extractor", default=DEFAULT_EXTRACTOR)
    parser.add_argument("--datasets", nargs="+", default=["video", "landmarks+video"],
                        choices=["video", "landmarks+video"])
    parser.add_argument("--variants", nargs="+", default=["exact", "default"],
                        help="exact, default, or NAME:FIELD=VALUE[,...] (IVF-PQ with IndexConfig fields changed)")
    add_video_arguments(parser, fps=4.0, per_clip=200, crops_per_clip=12, frames_per_clip=3)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--modes", nargs="+", default=["local", "l2g"])
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", help="RetrievalConfig fields")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="feature cache folder")
    parser.add_argument("--no-cache", action="store_true")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"shared data not found at {args.data}; nothing to benchmark")
    variants = [parse_variant(text) for text in args.variants]
    names = [v.name for v in variants]
    if EXACT not in names:
        raise SystemExit(f"--variants must include {EXACT!r}: every variant is compared with it")
    if len(set(names)) < len(names):
        raise SystemExit(f"--variants names must differ: {' '.join(names)}")
    torch.set_num_threads(2)
    configure_faiss()
    config = RetrievalConfig().replace(**field_overrides(RetrievalConfig, args.set))
    cache = None if args.no_cache else args.cache
    clips = video_from_args(args)
    for name in args.datasets:
        coll = clips if name == "video" else with_distractors(landmarks(args.data, args.max_side), clips)
        evaluate(coll, args.extractor, variants, config, args.k, args.modes, default_gap(args.fps), cache)


if __name__ == "__main__":
    main()
