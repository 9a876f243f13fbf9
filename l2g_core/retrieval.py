"""Retriever: one entry point for the four retrieval modes over a :class:`RollingIndex`.

=================  =====================================================================================
mode               what it does
=================  =====================================================================================
``global``         cosine similarity of global descriptors over every frame
``global_to_local`` global top-``g2l_shortlist`` re-ranked by RANSAC-verified local matches (DELG/ViTGaL)
``local``          stage 1 alone: kernel Chamfer similarity of local features (CANN-style)
``l2g``            stage 1, then stage 2 (MDS similarity embeddings + global fusion + SuperGlobal)
=================  =====================================================================================
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from l2g_core.candidates import Candidates, Coverage
from l2g_core.config import MODES, RetrievalConfig
from l2g_core.errors import ConfigError, ShapeError
from l2g_core.geometry import ransac_inliers
from l2g_core.index.rolling import RollingIndex
from l2g_core.rerank.l2g import l2g_rerank
from l2g_core.search import global_candidates, local_candidates
from l2g_core.types import FloatArray, FrameFeatures, Hit, l2_normalize

__all__ = ["PreparedQuery", "Retriever", "SearchResult", "prepare_query", "rerank"]


@dataclass(frozen=True)
class SearchResult:
    """Answer to one query.

    Attributes:
        hits: best first.
        timings_ms: ``stage1``, ``stage2``, ``total`` and finer entries (``graph``, ``mds``, ...).
        coverage: how much of the index was searched and whether anything was cut short.
        mode: the mode that produced the ranking.
    """

    hits: list[Hit]
    timings_ms: dict[str, float]
    coverage: Coverage
    mode: str = "l2g"
    extras: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedQuery:
    """Query features ready for search: unit descriptors, strongest first.

    Attributes:
        descriptors: ``(Q, D)`` float32.
        keypoints: ``(Q, 2)`` float32.
        global_descriptor: ``(G,)`` float32.
    """

    descriptors: FloatArray
    keypoints: FloatArray
    global_descriptor: FloatArray


def prepare_query(query: FrameFeatures, config: RetrievalConfig, local_dim: int, global_dim: int) -> PreparedQuery:
    """Check dimensions, keep the strongest ``config.query_features`` features and L2-normalise.

    Raises:
        ShapeError: dimensions differ from the index's.
    """
    if query.descriptors.shape[1] != local_dim:
        raise ShapeError(f"query descriptors have dimension {query.descriptors.shape[1]}, index has {local_dim}")
    if query.global_descriptor.shape[0] != global_dim:
        raise ShapeError(f"query global descriptor has dimension {query.global_descriptor.shape[0]}, "
                         f"index has {global_dim}")
    top = query.top(config.query_features)
    return PreparedQuery(
        descriptors=l2_normalize(top.descriptors) if top.num_features else top.descriptors,
        keypoints=top.keypoints,
        global_descriptor=l2_normalize(query.global_descriptor),
    )


def _hits(cands: Candidates, order: np.ndarray, final: np.ndarray, name: str, query: PreparedQuery,
          extra: dict[str, np.ndarray] | None = None) -> list[Hit]:
    glob = cands.global_descriptors @ query.global_descriptor if len(cands) else np.zeros(0)
    hits = []
    for i in order:
        stage = {cands.stage: float(cands.scores[i]), "global": float(glob[i]), name: float(final[i])}
        for key, values in (extra or {}).items():
            stage[key] = float(values[i])
        hits.append(Hit(cands.keys[i], float(final[i]), stage))
    return hits


def rerank(query: PreparedQuery, cands: Candidates, mode: str, k: int, config: RetrievalConfig,
           deadline: float | None = None) -> tuple[list[Hit], dict[str, float], Coverage]:
    """Second stage of ``mode`` over first-stage candidates (also used to merge shards from several workers).

    Returns:
        ``(hits, timings_ms, coverage)``; timings hold ``stage2`` and its parts.
    """
    t0 = time.perf_counter()
    coverage = cands.coverage
    timings: dict[str, float] = {}
    n = len(cands)
    if mode in ("global", "local") or n == 0:
        order = np.arange(min(k, n))
        hits = _hits(cands, order, cands.scores, mode, query)
    elif deadline is not None and time.monotonic() > deadline:
        coverage = coverage.with_note("deadline: stage 2 skipped, stage-1 order returned")
        order = np.arange(min(k, n))
        hits = _hits(cands, order, cands.scores, cands.stage, query)
    elif mode == "global_to_local":
        inliers = np.array([
            ransac_inliers(query.descriptors, query.keypoints, d, kp,
                           min_similarity=config.match_threshold, threshold=config.ransac_threshold)
            for d, kp in zip(cands.descriptors, cands.keypoints, strict=True)
        ], dtype=np.float32)
        # more inliers first; the global score breaks ties (it is < 1, inliers are integers)
        final = inliers + cands.scores.clip(-1, 0.999)
        order = np.argsort(-final, kind="stable")[:k]
        hits = _hits(cands, order, final, "global_to_local", query, {"inliers": inliers})
    else:
        head = min(config.rerank_k, n)
        out = l2g_rerank(query.descriptors, query.global_descriptor, cands.take(np.arange(head)), config)
        timings.update(out.timings_ms)
        # re-ranked head first; the rest keeps its stage-1 order (and its stage-1 score) below it
        order = np.concatenate([np.argsort(-out.scores, kind="stable"), np.arange(head, n)])[:k]
        display = np.concatenate([out.scores, cands.scores[head:]]).astype(np.float32)
        hits = [
            h if i < head else Hit(h.key, h.score, {s: v for s, v in h.stage_scores.items() if s != "l2g"})
            for i, h in zip(order, _hits(cands, order, display, "l2g", query), strict=True)
        ]
    timings["stage2"] = (time.perf_counter() - t0) * 1e3
    return hits, timings, coverage


class Retriever:
    """Searches a :class:`RollingIndex` in any of :data:`~l2g_core.config.MODES`.

    Args:
        index: the index (shared with the ingest path; searches are thread-safe).
        config: retrieval parameters.
    """

    def __init__(self, index: RollingIndex, config: RetrievalConfig | None = None) -> None:
        self.index = index
        self.config = config or RetrievalConfig()

    def candidates(
        self,
        query: PreparedQuery,
        mode: str,
        *,
        k: int,
        cameras: Collection[str] | None = None,
        time_range: tuple[float, float] | None = None,
        deadline: float | None = None,
    ) -> Candidates:
        """First stage of ``mode``: the shortlist that :func:`rerank` orders."""
        cfg = self.config
        if mode in ("global", "global_to_local"):
            limit = k if mode == "global" else max(k, cfg.g2l_shortlist)
            return global_candidates(self.index, query.global_descriptor, limit=limit, cameras=cameras,
                                     time_range=time_range, deadline=deadline)
        limit = k if mode == "local" else max(k, cfg.shortlist)
        return local_candidates(self.index, query.descriptors, cfg, limit=limit, cameras=cameras,
                                time_range=time_range, deadline=deadline)

    def search(
        self,
        query: FrameFeatures,
        *,
        mode: str = "l2g",
        k: int = 10,
        cameras: Collection[str] | None = None,
        time_range: tuple[float, float] | None = None,
        deadline: float | None = None,
    ) -> SearchResult:
        """Rank indexed frames for ``query``.

        Args:
            query: features of the query image (same extractor as the index).
            mode: one of ``global``, ``global_to_local``, ``local``, ``l2g``.
            k: hits returned (1..10000).
            cameras: only these cameras (None = all).
            time_range: ``(start, end)`` event-time seconds, inclusive (None = all).
            deadline: ``time.monotonic()`` value; past it the search stops early and says so in
                ``coverage``.

        Returns:
            A :class:`SearchResult`.

        Raises:
            ConfigError: unknown mode, bad k or an inverted time range.
            ShapeError: query dimensions differ from the index's.
        """
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if not 1 <= k <= 10_000:
            raise ConfigError(f"k must be in [1, 10000], got {k}")
        if time_range is not None and time_range[0] > time_range[1]:
            raise ConfigError(f"time_range start {time_range[0]} is after its end {time_range[1]}")
        t0 = time.perf_counter()
        prepared = prepare_query(query, self.config, self.index.config.local_dim, self.index.config.global_dim)
        cands = self.candidates(prepared, mode, k=k, cameras=cameras, time_range=time_range, deadline=deadline)
        t1 = time.perf_counter()
        hits, timings, coverage = rerank(prepared, cands, mode, k, self.config, deadline)
        timings["stage1"] = (t1 - t0) * 1e3
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return SearchResult(hits=hits, timings_ms=timings, coverage=coverage, mode=mode)
