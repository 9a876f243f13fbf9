"""Frozen, validated configuration of the index and of the retrieval modes.

Nothing here reads the environment: ``stream.settings`` builds these from its own settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

from l2g_core.errors import ConfigError

__all__ = ["IndexConfig", "RetrievalConfig"]

IndexKind = Literal["auto", "flat", "ivfpq"]
Device = Literal["auto", "cpu", "cuda"]
RerankDtype = Literal["float16", "int8"]
GlobalDtype = Literal["float16", "float32"]


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(
            isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
            f"{type(obj).__name__}.{name} must be a positive number, got {value!r}",
        )


@dataclass(frozen=True)
class IndexConfig:
    """How frames are stored in the rolling index.

    Attributes:
        local_dim: dimension D of local descriptors.
        global_dim: dimension G of global descriptors.
        bucket_seconds: width of a time bucket; retention drops whole buckets.
        segment_seconds: once compressed, the local descriptors of one camera over this span (a whole number of
            buckets, at least one) share one IVF-PQ index, a *segment*, which stage 1 searches as one unit: the
            cost of a search is mostly fixed per (query descriptor, index), so longer segments are faster to
            search; a snapshot rewrites a segment whenever it changes (new frames, or a bucket retention drops).
        retention_seconds: frames older than their camera's ``newest event time - retention_seconds`` are
            evicted (each camera keeps its own window: no camera's clock evicts another's frames); ``None`` keeps
            everything.
        max_features_per_frame: the strongest N local features of a frame are indexed (stage 1). 384 of XFeat's
            1024 score as 512 did on the video bench (l2g mAP 61.6 vs 61.7, local 49.3 vs 49.7) for 5 kB less per
            frame and a quarter fewer codes to scan; 256 lost 1.5 l2g mAP (docs/scaling.md, sixth session).
        rerank_features: the strongest features kept per frame for re-ranking and geometry (stage 2 reads the
            first ``RetrievalConfig.graph_features``; the geometric proof of an answer reads all of them: 64 instead
            of 128 verified 69 % of correct top-10 matches instead of 81 %).
        rerank_dtype: how they are stored: ``int8`` (a float16 scale per descriptor, 66 bytes per 64-D
            descriptor; dequantised to float16 when a frame becomes a candidate) or ``float16`` (128 bytes).
        global_dtype: how each frame's global descriptor is stored: ``float16`` (normalised to unit length first;
            2 bytes per dimension, and the query's pass over every frame's global reads half the memory, see
            :mod:`l2g_core.cosine`) or ``float32`` (as given).
        index_kind: ``flat`` (exact inner product), ``ivfpq`` (compressed), or ``auto`` (flat until
            ``compress_after`` features, then every shard is converted to IVF-PQ).
        compress_after: number of indexed features at which ``auto`` switches to IVF-PQ.
        ivf_lists: IVF coarse centroids; ``pq_bytes``: PQ code size per feature (4-bit fast-scan codes with
            ``2 * pq_bytes`` sub-quantizers when ``local_dim`` allows, see ``index.backend.train_ivfpq``; 32 bytes
            keep stage 1 within 1 mAP point of exact search, 16 lost 4 points on the video set, docs/scaling.md);
            ``nprobe``: lists probed. 4096 lists scan a 1.6M-feature segment 4.7x faster than 1024 at the same
            ``nprobe`` and, on real video features (881 frames at 4 fps, 110 queries), scored no lower: local mAP
            45.8 vs 41.4, l2g 56.9 vs 55.3, exact flat search 35.5 / 49.0 (docs/scaling.md).
        exact_segment_features: a segment stays *young*, its descriptors exact and searched by brute force, until
            it holds this many features (~1 per list at the default lists; ~11 frames), then they move into IVF-PQ
            codes (``0``: codes from the first feature). IVF-PQ is poorest on a sparse segment: landmark queries
            among one-photo cameras scored 1.2 mAP below exact search in local mode with codes, 0.0 below with
            young segments (docs/scaling.md, ninth session). A larger threshold hurt: with 16 384, the video
            bench's four shortest clips became exact units beside compressed ones, and local mAP fell 4.9 points
            (a small exact unit gives its frames a full Chamfer score against truncated ones elsewhere).
        train_size: vectors sampled to train IVF-PQ (40 per list at the defaults: same mAP as 64 per list on
            the set above, training 24 s instead of 39 s on 2 cores; a smaller sample trains ``sample // 39``
            lists).
        device: FAISS device; ``auto`` uses a GPU when faiss was built with one and a GPU is present.
        gpu_id: which GPU holds the GPU shards (``device`` ``cuda`` or ``auto`` with a GPU).
    """

    local_dim: int
    global_dim: int
    bucket_seconds: float = 60.0
    segment_seconds: float = 21600.0
    retention_seconds: float | None = 3600.0
    max_features_per_frame: int = 384
    rerank_features: int = 128
    rerank_dtype: RerankDtype = "int8"
    global_dtype: GlobalDtype = "float16"
    index_kind: IndexKind = "auto"
    compress_after: int = 1_000_000
    ivf_lists: int = 4096
    pq_bytes: int = 32
    nprobe: int = 16
    exact_segment_features: int = 4096
    train_size: int = 163_840
    device: Device = "auto"
    gpu_id: int = 0

    def __post_init__(self) -> None:
        _require(self.gpu_id >= 0, f"gpu_id must be >= 0, got {self.gpu_id}")
        _positive(self, "local_dim", "global_dim", "bucket_seconds", "segment_seconds", "max_features_per_frame",
                  "rerank_features", "compress_after", "ivf_lists", "pq_bytes", "nprobe", "train_size")
        if self.retention_seconds is not None:
            _positive(self, "retention_seconds")
        _require(self.exact_segment_features >= 0,
                 f"exact_segment_features must be >= 0, got {self.exact_segment_features}")
        _require(self.index_kind in ("auto", "flat", "ivfpq"), f"unknown index_kind {self.index_kind!r}")
        _require(self.device in ("auto", "cpu", "cuda"), f"unknown device {self.device!r}")
        _require(self.rerank_dtype in ("float16", "int8"), f"unknown rerank_dtype {self.rerank_dtype!r}")
        _require(self.global_dtype in ("float16", "float32"), f"unknown global_dtype {self.global_dtype!r}")
        _require(self.local_dim % self.pq_bytes == 0 or self.index_kind != "ivfpq",
                 f"local_dim {self.local_dim} must be a multiple of pq_bytes {self.pq_bytes}")
        _require(self.segment_seconds >= self.bucket_seconds,
                 f"segment_seconds {self.segment_seconds} is shorter than bucket_seconds {self.bucket_seconds}")

    @property
    def buckets_per_segment(self) -> int:
        """Time buckets per segment: ``floor(segment_seconds / bucket_seconds)``, at least 1."""
        return max(1, math.floor(self.segment_seconds / self.bucket_seconds + 1e-9))


@dataclass(frozen=True)
class RetrievalConfig:
    """Parameters of the four retrieval modes.

    Stage 1 (local search, CANN-style Chamfer):
        neighbors: nearest indexed features retrieved per query feature and search unit (a segment of a
            compressed index, see ``IndexConfig.segment_seconds``, or a flat shard).
        query_features: strongest query features that rank (stage 1, and the RANSAC and L2G re-rankers; the
            geometric proof of an answer uses up to ``plan.VERIFY_QUERY_FEATURES``). 128 measured best on the video
            bench's tune split (1024 / 512 / 256 / 128 / 64: l2g mAP 58.5 / 59.6 / 59.8 / 60.1 / 59.8), and
            stage 1's cost is linear in it (docs/benchmarks.md).
        kernel_tau, kernel_alpha: per-match similarity kernel
            ``k(s) = max(0, (s - tau) / (1 - tau)) ** alpha``; tau=0, alpha=1 is plain Chamfer.
        shortlist: stage-1 candidates of ``l2g`` kept per index and after the merge (at least ``k`` and
            ``rerank_k``). Only the first ``rerank_k`` are re-ranked; the rest follow them in stage-1 order when
            ``k`` asks for more, so a longer list changes no answer and costs stage-1 time (700 before, the L2G
            paper's re-ranked depth: 100k frames, l2g stage 1 p50 277 ms with 700, docs/scaling.md).

    Stage 2 (L2G):
        rerank_k: candidates re-ranked (the first ``rerank_k`` of the shortlist).
        global_shortlist: the best ``global_shortlist`` frames by global cosine join the re-ranked head (each index
            keeps its own best as a tail of its stage-1 list; the merge keeps the best over all). Local search
            misses a query whose view is textureless in local-feature terms: its camera never enters the local
            shortlist, while the global descriptor finds it (video, EfficientNet global: same-clip mAP 75.5 ->
            90.0, segment AP 89.1 -> 97.3; docs/benchmarks.md, issue 12). ``0``: the local shortlist alone.
        graph_features: strongest local features per item for the query's row and column of the similarity graph.
        graph_pair_features: strongest local features per candidate for the candidate-candidate pairs of the
            graph (at most ``graph_features``; stage 2's cost grows with its square). With the query's row weighted
            by ``mds_query_weight`` those pairs barely move the ranking: 64 / 32 / 16 gave l2g mAP 60.1 / 60.2 /
            60.2 on the video bench's tune split at p50 354 / 271 / 194 ms (docs/benchmarks.md).
        graph_neighbors: per candidate, how many strongest similarities are kept in the sparse
            dissimilarity matrix; the rest are unknown (dissimilarity 1). ``0`` keeps the dense matrix.
        dissimilarity_power: optional power on dissimilarities before MDS (1 = none).
        mds_dim, mds_iterations, mds_eps: SMACOF output dimension, iteration cap, relative stress tolerance.
        mds_query_weight: SMACOF weight of the query's row and column (every other pair weighs 1). Plain
            stress (1) lets the ``m^2`` candidate pairs outweigh the ``m`` query pairs, so the embedding keeps the
            candidates' clusters and loses the query's fine differences (see docs/benchmarks.md). The defaults
            (1000, ``distance``) beat (1, ``cosine``) on both benchmarks: landmarks 91.6 -> 95.0 mAP, video crops
            31.6 -> 41.9 (xfeat).
        mds_score: how the embedding scores a candidate. ``cosine``: the fused descriptor
            ``[sqrt(w) e/|e|, sqrt(1-w) g/|g|]`` re-ranked by SuperGlobal (the paper's reconstruction);
            ``distance``: ``w (1 - |e_i - e_q| / max_j |e_j - e_q|) + (1-w) s_i`` with ``s_i`` the SuperGlobal
            score of the global descriptors alone.
        fusion_weight: weight w of the MDS embedding (as above); ``fusion_side="global"`` gives w to the global
            part instead.
        sg_k, sg_beta: SuperGlobal MDescAug/RerankwMDA neighbourhood size K and weight beta.
        query_row_stage1: weight ``a`` of the stage-1 score in the query's row of the similarity graph:
            ``a * s1_i / max_j s1_j + (1 - a) * sym_i`` with ``sym_i`` the symmetrised Chamfer of the
            ``graph_features`` strongest features. The symmetric term alone penalises partial views (a frame's
            features outside the crop find no match in the query) and sees only 64 features; the stage-1 score
            alone loses the symmetric evidence that whole photos share (docs/benchmarks.md, issue 12).
        temporal_window_s, temporal_weight: temporal evidence after the fusion: a candidate's score (min-max
            normalised over the re-ranked head) gains ``temporal_weight`` times the best normalised score of another
            candidate of the same camera within ``temporal_window_s`` seconds. What a camera shows for a moment is
            visible in the frames around it; a lone frame is weaker evidence. ``temporal_weight=0`` turns it off.
        camera_weight: camera evidence after the fusion: a candidate also gains ``camera_weight`` times the best
            normalised score of another candidate of its camera at any time, so the frames of the camera the
            evidence points to are ranked together (``0`` turns it off; with xfeat on video 0.25 raises same-clip
            mAP 71.5 -> 74.8 and costs P@1 59.3 -> 58.4, docs/benchmarks.md: not a default).

    Baselines:
        g2l_shortlist: global top-N re-ranked by RANSAC inliers in ``global_to_local`` mode.
        ransac_threshold: reprojection threshold in pixels; ``match_threshold``: minimum cosine of a
            mutual nearest-neighbour match.

    device: torch device for stage 2 (``auto``: CUDA when available).
    """

    neighbors: int = 64
    query_features: int = 128
    kernel_tau: float = 0.0
    kernel_alpha: float = 3.0
    shortlist: int = 100
    rerank_k: int = 100
    global_shortlist: int = 50
    graph_features: int = 64
    graph_pair_features: int = 16
    graph_neighbors: int = 20
    dissimilarity_power: float = 1.0
    mds_dim: int = 32
    mds_iterations: int = 100
    mds_eps: float = 1e-4
    mds_query_weight: float = 1000.0
    mds_score: Literal["cosine", "distance"] = "distance"
    fusion_weight: float = 0.5
    fusion_side: Literal["mds", "global"] = "mds"
    sg_k: int = 9
    sg_beta: float = 0.15
    query_row_stage1: float = 0.5
    temporal_window_s: float = 2.0
    temporal_weight: float = 0.5
    camera_weight: float = 0.0
    g2l_shortlist: int = 100
    ransac_threshold: float = 8.0
    match_threshold: float = 0.8
    device: Device = "auto"

    def __post_init__(self) -> None:
        _positive(self, "neighbors", "query_features", "kernel_alpha", "shortlist", "rerank_k", "graph_features",
                  "graph_pair_features", "dissimilarity_power", "mds_dim", "mds_iterations", "mds_eps",
                  "mds_query_weight", "sg_k", "g2l_shortlist", "ransac_threshold")
        _require(0.0 <= self.kernel_tau < 1.0, f"kernel_tau must be in [0, 1), got {self.kernel_tau}")
        _require(0.0 <= self.fusion_weight <= 1.0, f"fusion_weight must be in [0, 1], got {self.fusion_weight}")
        _require(self.fusion_side in ("mds", "global"), f"unknown fusion_side {self.fusion_side!r}")
        _require(self.mds_score in ("cosine", "distance"), f"unknown mds_score {self.mds_score!r}")
        _require(self.graph_neighbors >= 0, f"graph_neighbors must be >= 0, got {self.graph_neighbors}")
        _require(self.global_shortlist >= 0, f"global_shortlist must be >= 0, got {self.global_shortlist}")
        _require(self.sg_beta >= 0.0, f"sg_beta must be >= 0, got {self.sg_beta}")
        _require(0.0 <= self.query_row_stage1 <= 1.0,
                 f"query_row_stage1 must be in [0, 1], got {self.query_row_stage1}")
        _require(math.isfinite(self.temporal_window_s) and self.temporal_window_s >= 0.0,
                 f"temporal_window_s must be >= 0, got {self.temporal_window_s}")
        _require(math.isfinite(self.temporal_weight) and self.temporal_weight >= 0.0,
                 f"temporal_weight must be >= 0, got {self.temporal_weight}")
        _require(math.isfinite(self.camera_weight) and self.camera_weight >= 0.0,
                 f"camera_weight must be >= 0, got {self.camera_weight}")
        _require(-1.0 <= self.match_threshold <= 1.0, "match_threshold must be a cosine in [-1, 1]")
        _require(self.device in ("auto", "cpu", "cuda"), f"unknown device {self.device!r}")

    def replace(self, **changes: object) -> RetrievalConfig:
        """A copy with some fields changed (validated again)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        _require(not unknown, f"unknown RetrievalConfig fields: {sorted(unknown)}")
        values = {name: getattr(self, name) for name in known}
        values.update(changes)
        return RetrievalConfig(**values)  # type: ignore[arg-type]
