"""The two-stage search over a sequence of rolling indexes, and :class:`Retriever`, its one-index front.

The unit of scale-out is the index (one per video partition in the service). A search is::

    plan = SearchPlan.build(mode, k, config)          # validated once
    prepared = prepare_query(features, config, D, G)
    parts = [stage1(index, prepared, plan, config) for index in indexes]    # anywhere, in parallel
    ranking = stage2(prepared, merge(parts, plan, G), plan, config)        # once

which :func:`search` does in one process; the stream service runs the same three steps on several workers.

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
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from l2g_core.candidates import Candidates, Coverage
from l2g_core.config import RetrievalConfig
from l2g_core.errors import ConfigError
from l2g_core.geometry import ransac_inliers
from l2g_core.index.rolling import RollingIndex
from l2g_core.plan import Mode, SearchPlan
from l2g_core.prepared import PreparedQuery, prepare_query
from l2g_core.rerank.l2g import l2g_rerank
from l2g_core.shortlist import stage1
from l2g_core.types import FrameFeatures, Hit

__all__ = ["Ranking", "Retriever", "SearchResult", "merge_candidates", "search", "stage2"]


@dataclass(frozen=True)
class Ranking:
    """Stage-2 output.

    Attributes:
        hits: best first, at most ``plan.k``.
        timings_ms: ``stage2`` and its parts (``graph``, ``mds``, ``superglobal``, ``temporal`` for ``l2g``).
        coverage: the candidates' coverage, with a note when stage 2 was skipped.
    """

    hits: list[Hit]
    timings_ms: dict[str, float]
    coverage: Coverage


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
    mode: Mode = "l2g"
    extras: dict[str, float] = field(default_factory=dict)


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


def merge_candidates(parts: Sequence[Candidates], plan: SearchPlan, query: PreparedQuery) -> Candidates:
    """The stage-1 lists of disjoint indexes (for ``query``) merged into the plan's shortlist and joined tail
    (deterministic order)."""
    glob = query.global_descriptor
    return Candidates.merge(parts, plan.shortlist, glob.shape[0], plan.stage1, plan.joined, glob)


def _l2g_head(cands: Candidates, rerank_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``cands`` of the L2G re-ranked head and of the rest of the ranking below it.

    Returns:
        ``(head, rest)``: ``head`` the first ``rerank_k`` of the ranking, then every joined-tail entry not among
        them; ``rest`` the ranking below the first ``rerank_k`` without the frames the tail brought into the head.
    """
    first = min(rerank_k, cands.ranked)
    seen = {cands.keys[i].dedup_key for i in range(first)}
    extra = []
    for i in range(cands.ranked, len(cands)):
        if cands.keys[i].dedup_key not in seen:
            seen.add(cands.keys[i].dedup_key)
            extra.append(i)
    # (the ranking holds each frame once, so what ``seen`` holds below ``first`` is what the tail brought in)
    rest = [i for i in range(first, cands.ranked) if cands.keys[i].dedup_key not in seen]
    head = np.array([*range(first), *extra], dtype=np.int64)
    return head, np.array(rest, dtype=np.int64)


def stage2(query: PreparedQuery, cands: Candidates, plan: SearchPlan, config: RetrievalConfig,
           deadline: float | None = None) -> Ranking:
    """Second stage of ``plan`` over the merged stage-1 candidates.

    Args:
        query: the prepared query.
        cands: the merged shortlist, best first.
        plan: the plan that produced it.
        config: stage-2 parameters.
        deadline: ``time.monotonic()`` value; past it, stage 2 is skipped and the stage-1 order returned.
    """
    t0 = time.perf_counter()
    coverage = cands.coverage
    timings: dict[str, float] = {}
    n = cands.ranked  # (the joined tail only enters the L2G head)
    k = plan.k
    if plan.rerank is None or len(cands) == 0:
        order = np.arange(min(k, n))
        hits = _hits(cands, order, cands.scores, plan.mode, query)
    elif deadline is not None and time.monotonic() > deadline:
        coverage = coverage.with_note("deadline: stage 2 skipped, stage-1 order returned")
        order = np.arange(min(k, n))
        hits = _hits(cands, order, cands.scores, cands.stage, query)
    elif plan.rerank == "ransac":
        ranked = query.for_ranking(config)
        inliers = np.array([
            ransac_inliers(ranked.descriptors, ranked.keypoints, d, kp,
                           min_similarity=config.match_threshold, threshold=config.ransac_threshold)
            for d, kp in zip(cands.descriptors, cands.keypoints, strict=True)
        ], dtype=np.float32)
        # more inliers first; the global score breaks ties (it is < 1, inliers are integers)
        final = inliers + cands.scores.clip(-1, 0.999)
        order = np.argsort(-final, kind="stable")[:k]
        hits = _hits(cands, order, final, plan.mode, query, {"inliers": inliers})
    else:
        head, rest = _l2g_head(cands, config.rerank_k)
        out = l2g_rerank(query.for_ranking(config).descriptors, query.global_descriptor, cands.take(head), config)
        timings.update(out.timings_ms)
        # re-ranked head first; the rest keeps its stage-1 order (and its stage-1 score) below it
        order = np.concatenate([np.argsort(-out.scores, kind="stable"), head.size + np.arange(rest.size)])[:k]
        listed = cands.take(np.concatenate([head, rest]))
        display = np.concatenate([out.scores, listed.scores[head.size:]]).astype(np.float32)
        hits = [
            h if i < head.size else Hit(h.key, h.score, {s: v for s, v in h.stage_scores.items() if s != "l2g"})
            for i, h in zip(order, _hits(listed, order, display, "l2g", query), strict=True)
        ]
    timings["stage2"] = (time.perf_counter() - t0) * 1e3
    return Ranking(hits, timings, coverage)


def search(
    indexes: Sequence[RollingIndex],
    query: FrameFeatures,
    plan: SearchPlan,
    config: RetrievalConfig,
    *,
    cameras: Collection[str] | None = None,
    time_range: tuple[float, float] | None = None,
    deadline: float | None = None,
) -> SearchResult:
    """Both stages over disjoint indexes of one extractor (stage 1 per index, merge, stage 2 once).

    Args:
        indexes: at least one index; dimensions are taken from the first.
        query: features of the query image (same extractor as the indexes).
        plan: mode, k and what each stage keeps.
        config: retrieval parameters.
        cameras: only these cameras (None = all).
        time_range: ``(start, end)`` event-time seconds, inclusive (None = all).
        deadline: ``time.monotonic()`` value; past it the search stops early and says so in the coverage.

    Raises:
        ConfigError: no index, or an inverted time range.
        ShapeError: query dimensions differ from the indexes'.
    """
    if not indexes:
        raise ConfigError("search needs at least one index")
    if time_range is not None and time_range[0] > time_range[1]:
        raise ConfigError(f"time_range start {time_range[0]} is after its end {time_range[1]}")
    t0 = time.perf_counter()
    dims = indexes[0].config
    prepared = prepare_query(query, config, dims.local_dim, dims.global_dim)
    parts = [stage1(index, prepared, plan, config, cameras=cameras, time_range=time_range, deadline=deadline)
             for index in indexes]
    merged = parts[0] if len(parts) == 1 else merge_candidates(parts, plan, prepared)
    t1 = time.perf_counter()
    ranking = stage2(prepared, merged, plan, config, deadline)
    timings = dict(ranking.timings_ms)
    timings["stage1"] = (t1 - t0) * 1e3
    timings["total"] = (time.perf_counter() - t0) * 1e3
    return SearchResult(hits=ranking.hits, timings_ms=timings, coverage=ranking.coverage, mode=plan.mode)


class Retriever:
    """Searches one :class:`RollingIndex` in any of :data:`~l2g_core.plan.MODES`.

    Args:
        index: the index (shared with the ingest path; searches are thread-safe).
        config: retrieval parameters.
    """

    def __init__(self, index: RollingIndex, config: RetrievalConfig | None = None) -> None:
        self.index = index
        self.config = config or RetrievalConfig()

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
        """Rank indexed frames for ``query`` (see :func:`search`).

        Args:
            query: features of the query image (same extractor as the index).
            mode: one of ``global``, ``global_to_local``, ``local``, ``l2g``.
            k: hits returned (1..10000).
            cameras, time_range, deadline: as in :func:`search`.

        Raises:
            ConfigError: unknown mode, bad k or an inverted time range.
            ShapeError: query dimensions differ from the index's.
        """
        plan = SearchPlan.build(mode, k, self.config)
        return search([self.index], query, plan, self.config, cameras=cameras, time_range=time_range,
                      deadline=deadline)
