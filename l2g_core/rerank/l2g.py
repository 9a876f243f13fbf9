"""Stage 2 of Local-to-Global retrieval.

From the query and its candidates:

1. a similarity graph from local features: dense kernel Chamfer between every pair of feature sets
   (query included), symmetrised; each candidate keeps only its ``graph_neighbors`` strongest links
   (the query row is always kept), every other pair is *unknown* -> sparse;
2. dissimilarities ``delta = (1 - s) ** power`` on known pairs, 1 on unknown pairs, 0 on the diagonal;
3. SMACOF MDS of that matrix -> per-item "similarity embeddings" (classical-MDS start, deterministic);
   The query's row and column weigh ``mds_query_weight`` in the stress, every other pair 1;
4. ``mds_score="cosine"``: fusion with global descriptors ``f = [sqrt(w) e/|e|, sqrt(1-w) g/|g|]`` so that
   ``<f_q, f_i> = w cos(e_q, e_i) + (1-w) cos(g_q, g_i)``, then SuperGlobal re-ranking (MDescAug + RerankwMDA)
   of the fused descriptors; ``mds_score="distance"``: ``w (1 - |e_i - e_q| / max_j |e_j - e_q|)`` plus
   ``(1-w)`` times the SuperGlobal score of the global descriptors alone;
5. temporal evidence (:mod:`l2g_core.rerank.temporal`): each score gains the best score of the same camera's
   candidates within ``temporal_window_s``.

The query's row in step 1 mixes the stage-1 score (all query features, query -> frame) into the symmetrised graph
similarity (``query_row_stage1``): a partial view's frame has many features the crop lacks, which the symmetric term
alone counts against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from l2g_core.candidates import Candidates
from l2g_core.chamfer import pairwise_chamfer
from l2g_core.config import RetrievalConfig
from l2g_core.rerank.smacof import smacof
from l2g_core.rerank.superglobal import superglobal_scores
from l2g_core.rerank.temporal import temporal_support
from l2g_core.timing import stage_clock
from l2g_core.types import FloatArray

__all__ = ["L2GOutput", "dissimilarity_matrix", "l2g_rerank", "query_weights", "resolve_device"]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class L2GOutput:
    """Result of :func:`l2g_rerank`.

    Attributes:
        scores: ``(m,)`` float32 re-ranking scores of the candidates (higher is better).
        timings_ms: ``graph``, ``mds``, ``superglobal`` and ``temporal`` milliseconds.
        stress: final raw SMACOF stress.
        mds_iterations: Guttman iterations run.
    """

    scores: FloatArray
    timings_ms: dict[str, float]
    stress: float
    mds_iterations: int


def dissimilarity_matrix(similarity: torch.Tensor, neighbors: int, power: float) -> torch.Tensor:
    """Sparse dissimilarities from a symmetric similarity matrix.

    Args:
        similarity: ``(n, n)`` symmetric similarities in ``[0, 1]``; row/column 0 is the query.
        neighbors: links kept per item (the strongest, made symmetric); 0 keeps all.
        power: exponent applied to known dissimilarities.

    Returns:
        ``(n, n)`` float32 dissimilarities, 1 for unknown pairs, 0 on the diagonal.
    """
    n = similarity.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=similarity.device)
    known = torch.ones_like(eye)
    if 0 < neighbors < n - 1:
        masked = similarity.masked_fill(eye, -1.0)
        top = masked.topk(neighbors, dim=1).indices
        known = torch.zeros_like(eye)
        known.scatter_(1, top, True)
        known = known | known.T
        known[0, :] = True
        known[:, 0] = True
    delta = (1.0 - similarity).clamp(0.0, 1.0)
    if power != 1.0:
        delta = delta**power
    delta = torch.where(known, delta, torch.ones_like(delta))
    return delta.masked_fill(eye, 0.0)


def query_weights(delta: torch.Tensor, query_weight: float) -> torch.Tensor | None:
    """SMACOF weights for the dissimilarities ``delta`` of ``n`` items whose item 0 is the query: ``query_weight``
    on its row and column, 1 on every other pair, 0 on the diagonal; ``None`` (plain stress) when
    ``query_weight`` is 1.

    Args:
        delta: ``(n, n)`` dissimilarities; the weights take its shape, dtype and device.
        query_weight: weight of the query's pairs.

    Returns:
        ``(n, n)`` symmetric weights, or None.
    """
    if query_weight == 1.0:
        return None
    weights = torch.ones_like(delta)
    weights[0, :] = query_weight
    weights[:, 0] = query_weight
    return weights.fill_diagonal_(0.0)


def _with_stage1_query_row(sim: torch.Tensor, stage1: FloatArray, weight: float) -> torch.Tensor:
    """``sim`` with its query row and column mixed with the stage-1 scores (see ``RetrievalConfig.query_row_stage1``).

    Args:
        sim: ``(n, n)`` symmetric similarities, item 0 the query, items ``1..n-1`` the candidates.
        stage1: ``(>= n-1,)`` stage-1 scores of the candidates, in the same order.
        weight: weight of the stage-1 scores, each divided by the largest.
    """
    head = sim.shape[0] - 1
    s1 = torch.from_numpy(np.ascontiguousarray(stage1[:head], dtype=np.float32)).to(sim.device)
    s1 = s1 / s1.max().clamp_min(1e-12)
    row = weight * s1 + (1.0 - weight) * sim[0, 1:]
    out = sim.clone()
    out[0, 1:] = row
    out[1:, 0] = row
    return out


def graph_similarity(query_descriptors: FloatArray, descriptors: list[np.ndarray], config: RetrievalConfig,
                     device: torch.device) -> torch.Tensor:
    """Symmetrised Chamfer similarities of the query and the candidates: ``(m + 1, m + 1)`` float32, item 0 the query.

    The query's row and column use the strongest ``config.graph_features`` descriptors of each side, every
    candidate-candidate pair the strongest ``config.graph_pair_features`` (they only pick each candidate's
    ``graph_neighbors`` links, and cost the square of the features per set).

    Args:
        query_descriptors: ``(Q, D)`` float32 unit descriptors (the strongest first).
        descriptors: per candidate ``(n_i, D)`` float16 or float32 unit descriptors (the strongest first).
        config: ``graph_features``, ``graph_pair_features``, kernel.
        device: where to compute.
    """
    n = config.graph_features
    pair = min(config.graph_pair_features, n)
    sets = [torch.from_numpy(np.ascontiguousarray(query_descriptors[:n], dtype=np.float32)).to(device)]
    sets += [torch.from_numpy(d[:n].astype(np.float32)).to(device) for d in descriptors]
    sim = pairwise_chamfer([s[:pair] for s in sets], tau=config.kernel_tau, alpha=config.kernel_alpha)
    if pair < n:
        row = pairwise_chamfer(sets, tau=config.kernel_tau, alpha=config.kernel_alpha, head=1)
        sim[0, :] = row[0, :]
        sim[:, 0] = row[:, 0]
    return 0.5 * (sim + sim.T)


def l2g_rerank(
    query_descriptors: FloatArray,
    query_global: FloatArray,
    candidates: Candidates,
    config: RetrievalConfig,
) -> L2GOutput:
    """Re-rank ``candidates`` for a query with MDS similarity embeddings fused with global descriptors.

    Args:
        query_descriptors: ``(Q, D)`` float32 unit descriptors (the strongest first).
        query_global: ``(G,)`` float32 unit global descriptor.
        candidates: ``m`` candidates (their stored local descriptors and global descriptors are used).
        config: stage-2 parameters.

    Returns:
        An :class:`L2GOutput`; ``scores`` is empty when there are no candidates.
    """
    m = len(candidates)
    if m == 0:
        empty = {"graph": 0.0, "mds": 0.0, "superglobal": 0.0, "temporal": 0.0}
        return L2GOutput(np.zeros(0, np.float32), empty, 0.0, 0)
    device = resolve_device(config.device)
    timings: dict[str, float] = {}
    t0 = stage_clock(device)
    sim = graph_similarity(query_descriptors, candidates.descriptors, config, device)
    if config.query_row_stage1 > 0:
        sim = _with_stage1_query_row(sim, candidates.scores, config.query_row_stage1)
    sim.fill_diagonal_(1.0)
    delta = dissimilarity_matrix(sim, config.graph_neighbors, config.dissimilarity_power)
    t1 = stage_clock(device)
    delta = delta.to(torch.float32)  # float32: 3x faster than float64 on CPU, same ranking
    result = smacof(delta, weights=query_weights(delta, config.mds_query_weight),
                    dim=min(config.mds_dim, m), max_iter=config.mds_iterations, eps=config.mds_eps)
    emb = result.embedding[0].to(torch.float32)
    t2 = stage_clock(device)
    w = config.fusion_weight if config.fusion_side == "mds" else 1.0 - config.fusion_weight
    glob = torch.from_numpy(np.concatenate([query_global[None], candidates.global_descriptors])).to(device)
    glob = torch.nn.functional.normalize(glob.to(torch.float32), dim=1)
    if config.mds_score == "distance":
        dist = (emb[1:] - emb[0]).norm(dim=1)
        embedding_scores = 1.0 - dist / dist.max().clamp_min(1e-12)
        global_scores = superglobal_scores(glob[0], glob[1:], k=config.sg_k, beta=config.sg_beta)
        scores = w * embedding_scores + (1.0 - w) * global_scores
    else:
        fused = torch.cat([np.sqrt(w) * torch.nn.functional.normalize(emb, dim=1), np.sqrt(1.0 - w) * glob], dim=1)
        scores = superglobal_scores(fused[0], fused[1:], k=config.sg_k, beta=config.sg_beta)
    t3 = stage_clock(device)
    final = temporal_support(candidates.keys, scores.cpu().numpy(), window_s=config.temporal_window_s,
                             weight=config.temporal_weight, camera_weight=config.camera_weight)
    t4 = stage_clock(device)
    timings = {"graph": (t1 - t0) * 1e3, "mds": (t2 - t1) * 1e3, "superglobal": (t3 - t2) * 1e3,
               "temporal": (t4 - t3) * 1e3}
    return L2GOutput(
        scores=final,
        timings_ms=timings,
        stress=float(result.stress[0]),
        mds_iterations=int(result.n_iter[0]),
    )
