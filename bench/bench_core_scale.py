"""Query latency of stage 1 + stage 2 at 10k and 100k indexed frames, and SMACOF time at k=700.

Synthetic frames (seeded scene model) stand in for extracted video frames, so the figures measure the index and
the re-ranker, not an extractor. By default they have the shape of the default extractor's frames as the index
keeps them: 64-D local descriptors, ``IndexConfig.max_features_per_frame`` of them, and a 1280-D global descriptor
(``--features`` and ``--global-dim`` change it; the curves of docs/scaling.md before its sixth session used 256
features and a 256-D global, with ``--index-set rerank_features=128``).

Run: ``python -m bench.bench_core_scale [--sizes 10000 100000] [--queries 20]``; one JSON object per line.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from bench.common import emit, field_overrides, machine, peak_rss_mb, percentiles, progress
from l2g_core import FrameFeatures, IndexConfig, RetrievalConfig, Retriever, RollingIndex
from l2g_core.datasets import SceneModel
from l2g_core.index.backend import configure_faiss
from l2g_core.rerank.l2g import query_weights
from l2g_core.rerank.smacof import smacof

DEFAULT_GLOBAL_DIM = 1280
"""The default extractor's global descriptor (EfficientNet-Lite0 GeM, ``plugins.presets.DEFAULT_EXTRACTOR``)."""


def bench_index(num_frames: int, num_queries: int, features: int, kind: str, seed: int = 0,
                index_options: dict[str, Any] | None = None, config: RetrievalConfig | None = None,
                global_dim: int = DEFAULT_GLOBAL_DIM) -> None:
    model = SceneModel(num_scenes=max(50, num_frames // 50), features_per_frame=features, local_dim=64,
                       global_dim=global_dim, noise=0.5, global_noise=1.0, seed=seed)
    options: dict[str, Any] = {"bucket_seconds": 600.0, "retention_seconds": None, **(index_options or {}),
                               "index_kind": kind}
    index = RollingIndex(IndexConfig(local_dim=64, global_dim=global_dim, **options))
    t0 = time.perf_counter()
    sample: list[FrameFeatures] = []
    for keys, feats, _ in model.stream(num_frames, batch=2000, num_cameras=8, fps=5.0, start_time=1.7e9):
        index.add(keys, feats)
        per_batch = max(1, num_queries * 2000 // num_frames)
        sample += feats[:per_batch][: num_queries - len(sample)]
        progress(f"  indexed {len(index)}/{num_frames} frames ({time.perf_counter() - t0:.0f} s)")
    build_s = time.perf_counter() - t0
    stats = index.stats()
    queries = [model.partial_view(f) for f in sample]
    for mode in ("local", "l2g"):
        cfg = config or RetrievalConfig()
        retriever = Retriever(index, cfg)
        retriever.search(queries[0], mode=mode, k=10)  # warm-up
        stage1, stage2, total = [], [], []
        for q in queries:
            res = retriever.search(q, mode=mode, k=10)
            stage1.append(res.timings_ms["stage1"] / 1e3)
            stage2.append(res.timings_ms["stage2"] / 1e3)
            total.append(res.timings_ms["total"] / 1e3)
        emit({
            "bench": "core_scale", "frames": num_frames, "features_per_frame": features, "global_dim": global_dim,
            "mode": mode, "rerank_features": index.config.rerank_features,
            "max_features_per_frame": index.config.max_features_per_frame,
            "index_kind": stats.kind, "index_features": stats.features, "index_mb": round(stats.nbytes / 2**20, 1),
            "index_bytes_per_frame": round(stats.nbytes / max(stats.frames, 1)), "shards": stats.shards,
            "search_units": getattr(stats, "segments", 0) or stats.shards,
            "codec": type(index.template).__name__ if index.template is not None else "IndexFlatIP",
            "build_s": round(build_s, 1), "queries": len(queries), "shortlist": cfg.shortlist,
            "rerank_k": cfg.rerank_k, "global_shortlist": cfg.global_shortlist,
            **{f"stage1_{k}": v for k, v in percentiles(stage1, (50, 95)).items()},
            **{f"stage2_{k}": v for k, v in percentiles(stage2, (50, 95)).items()},
            **{f"total_{k}": v for k, v in percentiles(total, (50, 95)).items()},
            "peak_rss_mb": round(peak_rss_mb()), **machine(),
        })


def bench_smacof(n: int = 701, dims: tuple[int, ...] = (32, 128), iterations: int = 100) -> None:
    # an L2G-shaped problem: each item keeps ~20 known links with dissimilarity in [0.2, 1), the rest are 1
    rng = np.random.default_rng(0)
    delta = np.ones((n, n))
    for i in range(n):
        j = rng.choice(n, size=20, replace=False)
        delta[i, j] = delta[j, i] = rng.uniform(0.2, 1.0, size=20)
    delta[0, :] = delta[:, 0] = rng.uniform(0.3, 1.0, size=n)
    np.fill_diagonal(delta, 0.0)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float64, torch.float32):
            d = torch.from_numpy(delta).to(device=device, dtype=dtype)
            # plain stress, and the default stage-2 weighting (query row and column weigh 1000)
            for query_weight in (1.0, 1000.0):
                w = query_weights(d, query_weight)
                for dim in dims:
                    smacof(d, dim=dim, weights=w, max_iter=2, eps=0.0)  # warm-up
                    times = []
                    for _ in range(3):
                        if device == "cuda":
                            torch.cuda.synchronize()
                        t0 = time.perf_counter()
                        res = smacof(d, dim=dim, weights=w, max_iter=iterations, eps=0.0)
                        if device == "cuda":
                            torch.cuda.synchronize()
                        times.append(time.perf_counter() - t0)
                    emit({"bench": "smacof", "n": n, "dim": dim, "iterations": int(res.n_iter[0]),
                          "device": device, "dtype": str(dtype).replace("torch.", ""), "query_weight": query_weight,
                          "best_s": round(min(times), 4), "per_iter_ms": round(min(times) / iterations * 1e3, 3)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--features", type=int, default=IndexConfig.max_features_per_frame,
                        help="local features per synthetic frame (default: as many as the index keeps)")
    parser.add_argument("--global-dim", type=int, default=DEFAULT_GLOBAL_DIM,
                        help="global descriptor dimension (default: the default extractor's)")
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivfpq"])
    parser.add_argument("--skip-smacof", action="store_true")
    parser.add_argument("--index-set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="IndexConfig fields, e.g. segment_seconds=3600 ivf_lists=4096 (default: the defaults)")
    parser.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="RetrievalConfig fields, e.g. shortlist=700 (default: the defaults)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    configure_faiss()  # process-wide FAISS settings, as the worker applies them
    if not args.skip_smacof:
        bench_smacof()
    for size in args.sizes:
        for kind in args.kinds:
            if kind == "flat" and size * args.features > 8_000_000:
                continue  # exact search at this size needs more memory than the machine has to spare
            bench_index(size, args.queries, args.features, kind,
                        index_options=field_overrides(IndexConfig, args.index_set),
                        config=RetrievalConfig().replace(**field_overrides(RetrievalConfig, args.set)),
                        global_dim=args.global_dim)


if __name__ == "__main__":
    main()
